"""An upgraded database: the console's rollups are complete (a mark exists) but a rollup table
added by the upgrade (``console_request_day``, migration 90) is empty. The API's rollup task
builds that table over the stored events at its start, in steps, and then goes on as usual."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from flyball.control_plane.ui import queries
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore

from tests.integration._helpers import migrated_store

DAY = datetime(2026, 5, 4, tzinfo=UTC)
COLS = ["event_id", "ts", "event_type", "tenant_id", "request_id", "provider", "model", "status", "cost_usd"]


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[ClickHouseStore]:
    with migrated_store(tmp_path / "ch") as s:
        yield s


def test_request_rollup_is_built_at_start_after_an_upgrade(store: ClickHouseStore) -> None:
    rows = [[str(uuid.uuid4()), DAY + timedelta(days=d, minutes=r), "llm_call", t, f"r-{t}-{d}-{r}", "openai", "gpt-4o",
             "ok", Decimal(f"0.{r + 1:02d}")] for t in ("acme", "globex") for d in range(3) for r in range(10)]
    store.call(store.insert, "events", rows, COLS)
    store.call(queries.mark_complete, store, datetime.now(UTC))  # the rollups were complete before the upgrade

    def request_rows() -> Any:
        return store.call(store.query, "SELECT count(), sum(requests) FROM console_request_day FINAL", {})[0]

    assert request_rows()[0] == 0

    async def scenario() -> tuple[int, int]:
        task = asyncio.ensure_future(queries.rollup_loop(store, 0.05))
        try:
            for _ in range(600):
                got = await store.run(store.query, "SELECT count(), sum(requests) FROM console_request_day FINAL", {})
                if got[0][0] == 6:
                    return int(got[0][0]), int(got[0][1])
                await asyncio.sleep(0.05)
            return 0, 0
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    assert asyncio.run(scenario()) == (6, 60)  # 2 tenants x 3 days, 10 requests each
    f = queries.Filters(tenant_id="acme", begin=DAY, end=DAY + timedelta(days=3))
    got = queries.request_costs(lambda sql, p: store.call(store.query, sql, p), f)
    # acme's 30 requests cost 0.01 .. 0.10 three times: the element at floor(0.95 * 30) = 28 is 0.10
    assert got["requests"] == 30 and got["request_p95_usd"] == "0.1"
