"""A budget set below the spend already made in its period alerts at once (real chDB, real API
app): nobody had watched that spend against it, so waiting for the next crossing would never
alert for this period."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson

from flyball.control_plane.app import Deps, create_app
from flyball.control_plane.auth import KeyRing, Principal, Role
from flyball.control_plane.migrations import ALL_MIGRATIONS
from flyball.control_plane.policy_file import DEFAULT_POLICIES
from flyball.control_plane.runtime import load_prices
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore


async def test_a_budget_created_below_current_spend_raises_its_threshold_alerts(tmp_path: Path) -> None:
    store = ClickHouseStore(f"chdb://{tmp_path / 'ch'}")
    store.migrate(ALL_MIGRATIONS)  # the budgets and audit tables are the control plane's
    book = load_prices(None)
    now = datetime.now(UTC)
    tenant = f"over-{uuid.uuid4().hex[:8]}"
    raws = [orjson.dumps({"schema_version": 1, "event_type": "llm_call", "event_id": str(uuid.uuid4()),
                          "ts": (now - timedelta(minutes=i)).isoformat(), "tenant_id": tenant, "provider": "openai",
                          "model": "gpt-4o", "input_tokens": 100_000, "output_tokens": 10_000}) for i in range(5)]
    result = Pipeline(lambda: book).process(raws, now=now)
    store.write_events(result.rows)  # about $3.75 of spend this month
    keys = KeyRing()
    keys.add("k", Principal("admin", Role.ADMIN))
    app = create_app(Deps(store=store, control=None, keys=keys, policies=lambda: DEFAULT_POLICIES,
                          prices=lambda: book))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                     headers={"Authorization": "Bearer k"}) as api:
            created = await api.post("/v1/budgets", json={"tenant_id": tenant, "limit_usd": "1",
                                                          "thresholds": [50, 100]})
            assert created.status_code == 201, created.text
            alerts = (await api.get("/v1/alerts", params={"kind": "budget_threshold", "tenant_id": tenant})).json()
        assert sorted(a["metric"] for a in alerts) == ["budget_monthly_pct_100", "budget_monthly_pct_50"]
    finally:
        store.close()
