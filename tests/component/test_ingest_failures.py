"""The worker's failure paths at its ports: a batch ClickHouse refuses goes to the DLQ with the
reason and the partition moves on; a temporary failure is retried, a bounded number of times;
the ClickHouse adapter classifies real chDB errors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError
from flyball.control_plane.runtime import load_prices
from flyball.schemas import DLQ, EVENTS
from flyball.stream_processors.errors import PermanentError, TemporaryError
from flyball.stream_processors.ingest import IngestService
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore

from tests.fakes import FakeClients, FakeConsumer, FlakyStore


def _calls(n: int, *, tenant: str = "acme") -> list[bytes]:
    start = datetime.now(UTC) - timedelta(minutes=1)
    return [orjson.dumps({"schema_version": 1, "event_type": "llm_call", "event_id": str(uuid.uuid4()),
                          "ts": (start + timedelta(seconds=i)).isoformat(), "tenant_id": tenant,
                          "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1000,
                          "output_tokens": 200}) for i in range(n)]


async def _service(store: object, clients: FakeClients, *, attempts: int = 3) -> IngestService:
    book = load_prices(None)
    ingest = IngestService(bootstrap="unused:9", store=store, pipeline=Pipeline(lambda: book),  # type: ignore[arg-type]  # a fake at the store port
                           clients=clients, checkpoint_interval_s=None, write_attempts=attempts)  # type: ignore[arg-type]
    ingest.retry_base_s = 0.001
    ingest._producer = await clients.producer()  # type: ignore[assignment]  # the fake producer
    return ingest


async def test_a_batch_clickhouse_refuses_goes_to_the_dlq_with_the_reason_and_the_next_is_stored(
        tmp_path: Path) -> None:
    real = ClickHouseStore(f"chdb://{tmp_path}/ch")
    real.migrate()
    try:
        store = FlakyStore(real, fail_with=[PermanentError("clickhouse refused (code 53): type mismatch")])
        clients = FakeClients()
        ingest = await _service(store, clients)
        refused, good = _calls(5), _calls(3, tenant="globex")
        result = await ingest.handle(refused)  # returns: the partition is not wedged
        assert result.rows == []
        dead = [orjson.loads(s.value or b"") for s in clients.producer_.on(DLQ)]
        assert [d["original"].encode() for d in dead] == refused
        assert all("events insert" in d["reason"] and "code 53" in d["reason"] for d in dead)

        await ingest.handle(good)
        stored = await real.run(real.query, "SELECT tenant_id, count() FROM events GROUP BY tenant_id", {})
        assert stored == [("globex", 3)]
        assert ingest.stats.dead_lettered == 5
    finally:
        real.close()


async def test_temporary_write_failures_are_retried_and_the_batch_is_stored(tmp_path: Path) -> None:
    real = ClickHouseStore(f"chdb://{tmp_path}/ch")
    real.migrate()
    try:
        store = FlakyStore(real, fail_with=[TemporaryError("clickhouse unavailable"), TemporaryError("again")])
        clients = FakeClients()
        ingest = await _service(store, clients, attempts=3)
        await ingest.handle(_calls(4))
        assert (await real.run(real.query, "SELECT count() FROM events", {})) == [(4,)]
        assert clients.producer_.on(DLQ) == []
    finally:
        real.close()


async def test_temporary_failures_beyond_the_bound_end_the_batch_with_nothing_dead_lettered() -> None:
    store = FlakyStore(fail_with=[TemporaryError("clickhouse unavailable")] * 3)
    clients = FakeClients()
    ingest = await _service(store, clients, attempts=3)
    with pytest.raises(TemporaryError):
        await ingest.handle(_calls(2))
    assert len(store.calls) == 3  # three attempts in all, then the error ends the batch
    assert clients.producer_.sent == []  # the batch is not committed and not dead-lettered: it is replayed


def test_the_clickhouse_adapter_classifies_a_refused_row_as_permanent(tmp_path: Path) -> None:
    store = ClickHouseStore(f"chdb://{tmp_path}/ch")
    store.migrate()
    try:
        with pytest.raises(PermanentError, match="not insertable|refused"):
            store.call(store.insert, "events", [("not-a-uuid", "not-a-time")], ("event_id", "ts"))
    finally:
        store.close()


async def test_the_clickhouse_adapter_classifies_an_unknown_table_as_permanent(tmp_path: Path) -> None:
    store = ClickHouseStore(f"chdb://{tmp_path}/ch")
    try:
        with pytest.raises(PermanentError, match="code 60"):
            await store.run(store.query, "SELECT * FROM no_such_table", {})
    finally:
        store.close()


async def test_a_failed_commit_leaves_the_batch_uncommitted_and_saves_no_checkpoint_for_it(tmp_path: Path) -> None:
    store = ClickHouseStore(f"chdb://{tmp_path}/ch")
    store.migrate()
    tp = TopicPartition(EVENTS, 0)
    consumer = FakeConsumer(tp, _calls(3), fail_commits=[CommitFailedError("rebalanced")])
    book = load_prices(None)
    ingest = IngestService(bootstrap="unused:9", store=store, pipeline=Pipeline(lambda: book),
                           clients=FakeClients(consumer_=consumer), checkpoint_interval_s=0.0)  # type: ignore[arg-type]
    try:
        await ingest.start()
        task = asyncio.create_task(ingest.run())
        for _ in range(500):
            if ingest.stats.batches == 1:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # the commit of the first batch has failed by now
        assert consumer.commits == [] and ingest._uncommitted
        assert (await store.run(store.query, "SELECT count() FROM detector_state", {})) == [(0,)]
        for raw in _calls(2, tenant="globex"):
            consumer.add(raw)
        for _ in range(500):
            if consumer.commits:
                break
            await asyncio.sleep(0.01)
        assert consumer.commits == [{tp: 5}]  # the next commit covers both batches
        await ingest.stop()
        await asyncio.wait_for(task, 5)
        assert (await store.run(store.query, "SELECT count() FROM detector_state", {}))[0][0] >= 1
    finally:
        store.close()


class _Trickle(FakeConsumer):
    """A consumer whose fetches bring a few records each, as a broker does at a modest rate."""

    def __init__(self, tp: TopicPartition, values: list[bytes], per_fetch: int) -> None:
        super().__init__(tp, values)
        self.per_fetch = per_fetch

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        await asyncio.sleep(0.005)
        n = min(self.per_fetch, max_records or self.per_fetch)
        batch = self.records[self.position:self.position + n]
        self.position += len(batch)
        return {self.tp: batch} if batch else {}


@pytest.mark.parametrize(("linger_ms", "inserts"), [(2_000, 1), (0, 10)])
async def test_records_arriving_within_the_linger_go_into_one_insert_and_one_commit(
        tmp_path: Path, linger_ms: int, inserts: int) -> None:
    """Every ClickHouse insert makes a part that chDB must merge: at 1,000 events/s, inserting what
    each fetch brought (about 40 events) cost the worker most of a core (docs/RELIABILITY.md)."""
    real = ClickHouseStore(f"chdb://{tmp_path}/ch")
    real.migrate()
    tp = TopicPartition(EVENTS, 0)
    consumer = _Trickle(tp, _calls(30), per_fetch=3)
    store = FlakyStore(real)
    book = load_prices(None)
    ingest = IngestService(bootstrap="unused:9", store=store, pipeline=Pipeline(lambda: book),  # type: ignore[arg-type]
                           clients=FakeClients(consumer_=consumer), checkpoint_interval_s=None,  # type: ignore[arg-type]
                           linger_ms=linger_ms, min_batch=30)
    try:
        await ingest.start()
        task = asyncio.create_task(ingest.run())
        for _ in range(1000):
            if consumer.commits and consumer.commits[-1] == {tp: 30}:
                break
            await asyncio.sleep(0.01)
        await ingest.stop()
        await asyncio.wait_for(task, 5)
        assert consumer.commits[-1] == {tp: 30}
        assert [name for name, _ in store.calls].count("write_events") == inserts
        assert (await real.run(real.query, "SELECT count(), uniqExact(event_id) FROM events", {})) == [(30, 30)]
    finally:
        real.close()
