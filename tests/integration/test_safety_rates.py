"""Safety-trigger rates per minute in ClickHouse (real chDB): a view over the deduplicated
events, queryable per tenant, feature and category, counting each event once even when a
batch is inserted again (a worker that crashed before its commit replays it)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from flyball.control_plane.runtime import load_prices
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore
from flyball.control_plane.migrations import ALL_MIGRATIONS

T0 = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)


def trigger(category: str, ts: datetime, tenant: str = "acme", feature: str = "chat", action: str = "blocked") -> bytes:
    return orjson.dumps({"schema_version": 1, "event_type": "safety_trigger", "event_id": str(uuid.uuid4()), "ts": ts.isoformat(),
                         "tenant_id": tenant, "feature": feature, "filter_name": f"{category}-filter",
                         "category": category, "action": action})


def test_safety_trigger_rates_are_stored_per_minute_and_count_each_event_once(tmp_path: Path) -> None:
    book = load_prices(None)
    raws = [trigger("jailbreak", T0 + timedelta(seconds=s)) for s in (1, 20, 59)]
    raws += [trigger("jailbreak", T0 + timedelta(seconds=61)), trigger("pii", T0 + timedelta(seconds=5), action="redacted"),
             trigger("jailbreak", T0 + timedelta(seconds=7), tenant="globex")]
    store = ClickHouseStore(f"chdb://{tmp_path}/ch")
    try:
        store.migrate(ALL_MIGRATIONS)
        pipe = Pipeline(lambda: book)
        first, second = pipe.process(raws[:4], now=None), pipe.process(raws[4:], now=None)
        store.write_events(first.rows)
        store.write_events(second.rows)
        store.write_events(first.rows)  # the replay of an uncommitted batch
        rows = store.query(
            "SELECT minute, tenant_id, feature, category, action, sum(triggers) FROM safety_rates_minute "
            "GROUP BY minute, tenant_id, feature, category, action ORDER BY tenant_id, minute, category")
    finally:
        store.close()
    got = [(m.replace(tzinfo=UTC) if m.tzinfo is None else m, t, f, c, a, int(n)) for m, t, f, c, a, n in rows]
    assert got == [
        (T0, "acme", "chat", "jailbreak", "blocked", 3),
        (T0, "acme", "chat", "pii", "redacted", 1),
        (T0 + timedelta(minutes=1), "acme", "chat", "jailbreak", "blocked", 1),
        (T0, "globex", "chat", "jailbreak", "blocked", 1),
    ]
