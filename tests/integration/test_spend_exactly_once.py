"""Money counted exactly once on a real broker and real chDB: duplicate sends, a worker killed
between its ClickHouse insert and its offset commit, a restarted worker with empty memory,
late events. The spend the API reports must equal an independent Decimal computation over
the distinct events sent, to the last digit."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson

from flyball.control_plane.app import Deps, create_app
from flyball.control_plane.auth import KeyRing, Principal, Role
from flyball.control_plane.policy_file import DEFAULT_POLICIES
from flyball.control_plane.runtime import load_prices
from flyball.producers.transports.kafka import start_producer
from flyball.schemas import EVENTS
from flyball.stream_processors.ingest import IngestService
from flyball.stream_processors.pipeline import EVENT_COLUMNS, Pipeline
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore
from flyball.stream_processors.topics import ensure_topics
from flyball.control_plane.migrations import ALL_MIGRATIONS
from tests.integration._helpers import eventually

NOW = datetime.now(UTC).replace(microsecond=0)
TENANT_COL = EVENT_COLUMNS.index("tenant_id")
CATALOG = Path(__file__).parents[2] / "stream_processors" / "data" / "prices.json"


def rates() -> dict[str, dict[str, Decimal]]:
    """The built-in catalog's rates, read straight from the JSON (not through the pricing code)."""
    data = json.loads(CATALOG.read_text())
    return {e["model"]: {k: Decimal(v) for k, v in e.items() if k in ("input", "output", "cache_read", "cache_write",
                                                                       "cache_write_1h")}
            for e in data["prices"]}


def expected_cost(e: dict[str, Any], r: dict[str, dict[str, Decimal]]) -> Decimal:
    """Independent arithmetic: input includes cache reads and writes; 1-hour writes are a subset
    of the writes; batch halves every token rate (the built-in catalog's batch multiplier)."""
    m = r[e["model"]]
    read, write = e.get("cache_read_tokens", 0), e.get("cache_write_tokens", 0)
    one_hour = e.get("attributes", {}).get("cache_write_1h_tokens", 0)
    fresh = e["input_tokens"] - read - write
    cost = (fresh * m["input"] + read * m.get("cache_read", m["input"]) + (write - one_hour) * m.get("cache_write", m["input"])
            + one_hour * m.get("cache_write_1h", m.get("cache_write", m["input"])) + e["output_tokens"] * m["output"])
    if e.get("attributes", {}).get("service_tier") == "batch":
        cost = cost / 2
    return cost


def make_events(tenant: str, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """Varied token counts, but within a narrow band and in time order over the last ten
    minutes: the detectors see ordinary traffic (the topic is shared with other tests)."""
    out = []
    for i in range(n):
        kind = i % 3
        e: dict[str, Any] = {"schema_version": 1, "event_type": "llm_call", "event_id": str(uuid.uuid4()), "tenant_id": tenant,
                             "feature": rng.choice(["chat", "search"]), "provider": "openai",
                             "ts": (NOW - timedelta(seconds=600) + timedelta(seconds=600 * i / n)).isoformat(),
                             "output_tokens": rng.randint(180, 220)}
        if kind == 0:
            e |= {"model": "gpt-4o-mini", "input_tokens": (inp := rng.randint(9_000, 11_000)),
                  "cache_read_tokens": rng.randint(0, inp)}
        elif kind == 1:
            e |= {"provider": "anthropic", "model": "claude-sonnet-4-5", "input_tokens": (inp := rng.randint(9_000, 11_000))}
            e["cache_read_tokens"] = rng.randint(0, inp // 2)
            e["cache_write_tokens"] = rng.randint(0, inp // 4)
            e["attributes"] = {"cache_write_1h_tokens": rng.randint(0, e["cache_write_tokens"])}
        else:
            e |= {"model": "gpt-4o", "input_tokens": rng.randint(9_000, 11_000), "attributes": {"service_tier": "batch"}}
        out.append(e)
    return out


class KilledBetweenInsertAndCommit(ClickHouseStore):
    """A real chDB store that, after its ``kill_after``-th successful insert holding rows of
    ``tenant``, cancels the worker's task: the rows are in ClickHouse, the offsets are never
    committed. (The topic is shared with other tests, so earlier batches may hold only theirs.)"""

    def __init__(self, url: str, kill_after: int, tenant: str) -> None:
        super().__init__(url)
        self.kill_after = kill_after
        self.tenant = tenant
        self.inserts = 0
        self.tenant_rows = 0  # rows of the tenant handed to ClickHouse, duplicates included
        self.victim: asyncio.Task[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def write_events(self, rows: Any) -> None:
        super().write_events(rows)
        mine = sum(1 for r in rows if r[TENANT_COL] == self.tenant)
        self.tenant_rows += mine
        if not mine:
            return
        self.inserts += 1
        if self.inserts == self.kill_after and self.victim is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.victim.cancel)



async def test_spend_is_exact_after_duplicates_a_kill_mid_batch_and_a_restart(bootstrap: str, tmp_path: Path) -> None:
    rng = random.Random(4)
    tenant = f"eo-{uuid.uuid4().hex[:8]}"
    group = f"eo-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap)
    events = make_events(tenant, 1200, rng)
    # late events: one within the allowed lateness (2 h), two far beyond it (3 days): all kept
    for hours, e in ((2, events[0]), (72, events[1]), (73, events[2])):
        e["ts"] = (NOW - timedelta(hours=hours)).isoformat()
    resent = rng.sample(events, 120)  # duplicate sends, as a producer retry or a buggy client would
    store = KilledBetweenInsertAndCommit(f"chdb://{tmp_path / 'ch'}", kill_after=3, tenant=tenant)
    store.migrate(ALL_MIGRATIONS)
    book = load_prices(None)
    producer = await start_producer(bootstrap, linger_ms=5)
    try:
        for e in events[:600] + resent[:60] + events[600:] + resent[60:]:
            await producer.send(EVENTS, key=tenant.encode(), value=orjson.dumps(e))
        await producer.flush()
    finally:
        await producer.stop()

    def service() -> IngestService:
        return IngestService(bootstrap=bootstrap, store=store, group_id=group, max_batch=150, poll_ms=100,
                             pipeline=Pipeline(lambda: book, lateness=timedelta(days=1)))

    async def stored(final: bool = True) -> int:
        rows = await store.run(store.query, f"SELECT count() FROM events {'FINAL' if final else ''} "
                                            "WHERE tenant_id = {t:String}", {"t": tenant})
        return int(rows[0][0])

    try:
        first = service()
        await first.start()
        store.loop = asyncio.get_running_loop()
        task = asyncio.create_task(first.run())
        store.victim = task
        await asyncio.wait({task}, timeout=90)
        assert task.cancelled(), "the first worker was not killed mid-stream"
        await first.stop()  # leaves the group; auto-commit is off, so nothing is committed
        killed_with = await stored(final=False)
        assert 0 < killed_with < len(events)

        second = service()  # a restart: empty memory, resumes from the last committed offset
        await second.start()
        task2 = asyncio.create_task(second.run())
        try:
            await eventually(lambda: _eq(stored(), len(events)), timeout=120)
            await asyncio.sleep(1.0)  # anything still in flight would show as a surplus below
        finally:
            await second.stop()
            await asyncio.wait({task2}, timeout=10)
        assert second.stats.duplicates > 0  # the producer's resends reached the worker
        # the killed batch was inserted again (background merges may already have folded the
        # physical duplicates, so count what was handed to ClickHouse, not what it keeps)
        assert store.tenant_rows > len(events)

        keys = KeyRing()
        keys.add("k", Principal("admin", Role.ADMIN))
        app = create_app(Deps(store=store, control=None, keys=keys, policies=lambda: DEFAULT_POLICIES,
                              prices=lambda: book))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                     headers={"Authorization": "Bearer k"}) as api:
            body = (await api.get("/v1/spend", params={"tenant_id": tenant, "group_by": "model"})).json()
            by_day = (await api.get("/v1/spend", params={"tenant_id": tenant, "group_by": "day"})).json()
        r = rates()
        expected = sum((expected_cost(e, r) for e in events), Decimal(0))
        assert Decimal(body["total_usd"]) == expected
        assert body["events"] == len(events)
        per_model: dict[str, Decimal] = {}
        for e in events:
            per_model[e["model"]] = per_model.get(e["model"], Decimal(0)) + expected_cost(e, r)
        assert {row["model"]: Decimal(row["cost_usd"]) for row in body["rows"]} == per_model
        late_day = (NOW - timedelta(hours=72)).date().isoformat()
        day_rows = {row["day"]: row for row in by_day["rows"]}
        assert day_rows[late_day]["late_events"] >= 1  # kept, in its own day, flagged
        assert sum(row["late_events"] for row in by_day["rows"]) == 2  # the 2-hour-late one is not flagged
    finally:
        store.close()


async def _eq(value: Any, expected: int) -> bool:
    return bool(await value == expected)
