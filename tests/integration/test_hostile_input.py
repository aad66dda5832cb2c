"""One bad record never stops ingest, on a real broker and real chDB: a 400 KB non-JSON message
(whose dead-letter record once outgrew the producer's size limit and killed the worker) is
dead-lettered, bounded, with its hash and length, and the events after it are stored."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from flyball.control_plane.runtime import load_prices
from flyball.schemas import DLQ
from flyball.stream_processors.detectors import Detectors
from flyball.stream_processors.ingest import IngestService
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.releases import ReleaseComparator, ReleaseParams
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore
from flyball.stream_processors.topics import ensure_topics
from tests.integration._helpers import eventually, migrated_store, produce


async def stored(store: ClickHouseStore, tenant: str, n: int) -> bool:
    rows = await store.run(store.query, "SELECT count() FROM events WHERE tenant_id = {t:String}", {"t": tenant})
    return int(rows[0][0]) == n


async def ingest_until(bootstrap: str, store: ClickHouseStore, pipeline: Pipeline, check: Callable[[], Any],
                       versions_interval_s: float | None = None) -> None:
    """A worker (its own consumer group) runs ``pipeline`` into ``store`` until ``check`` holds;
    it must still be running then."""
    service = IngestService(bootstrap=bootstrap, store=store, group_id=f"hostile-{uuid.uuid4().hex[:8]}",
                            pipeline=pipeline, checkpoint_interval_s=None)
    if versions_interval_s is not None:
        service.versions_interval_s = versions_interval_s
    await service.start()
    task = asyncio.create_task(service.run())
    try:
        await eventually(check, timeout=90)
        assert not task.done(), task.exception() if task.done() else None
    finally:
        await service.stop()
        await asyncio.wait({task}, timeout=10)


async def test_a_400_kb_non_json_message_is_dead_lettered_bounded_and_ingest_goes_on(bootstrap: str,
                                                                                     tmp_path: Path) -> None:
    tenant = f"hostile-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap)
    huge = b"\xff" + uuid.uuid4().hex.encode() * 12_500  # 400 KB, not UTF-8, not JSON
    good = [orjson.dumps({"schema_version": 1, "event_type": "llm_call", "event_id": str(uuid.uuid4()),
                          "ts": datetime.now(UTC).isoformat(), "tenant_id": tenant, "provider": "openai",
                          "model": "gpt-4o-mini", "input_tokens": 10, "output_tokens": 5}) for _ in range(3)]
    await produce(bootstrap, tenant, [good[0], huge, *good[1:]])

    book = load_prices(None)
    with migrated_store(tmp_path / "ch") as store:
        await ingest_until(bootstrap, store, Pipeline(lambda: book), lambda: stored(store, tenant, len(good)))

    digest = hashlib.sha256(huge).hexdigest()
    consumer = AIOKafkaConsumer(DLQ, bootstrap_servers=bootstrap, group_id=f"dlq-{uuid.uuid4().hex[:8]}",
                                auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=6000,
                                heartbeat_interval_ms=1000)
    await consumer.start()
    found = None
    try:
        deadline = time.monotonic() + 30
        while found is None and time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                for rec in recs:
                    body = orjson.loads(rec.value)
                    if body.get("original_sha256") == digest:
                        found = (body, len(rec.value))
    finally:
        await consumer.stop()
    assert found is not None, "the 400 KB message is not in the DLQ"
    body, size = found
    assert body["original_len"] == len(huge) and body["truncated"] is True
    assert size < 512 * 1024 and body["reason"]


async def test_a_feature_and_a_model_per_event_are_all_stored_while_the_worker_stays_bounded(bootstrap: str,
                                                                                           tmp_path: Path) -> None:
    """A request id sent as the feature and a deployment id as the model, on a real broker and
    real chDB: every event is stored, the detectors and the release comparison track no more
    scopes than their bounds, and the worker takes (and logs) each bound once."""
    tenant = f"cardinality-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap)
    n = 300
    await produce(bootstrap, tenant, [orjson.dumps({
        "schema_version": 1, "event_type": "llm_call", "event_id": str(uuid.uuid4()),
        "ts": datetime.now(UTC).isoformat(), "tenant_id": tenant, "feature": f"req-{i}", "provider": "openai",
        "model": f"deploy-{i}", "input_tokens": 10, "output_tokens": 5, "latency_ms": 200.0}) for i in range(n)])

    book = load_prices(None)
    detectors = Detectors(max_scopes=50)
    releases = ReleaseComparator(ReleaseParams(max_groups=50))

    async def done(store: ClickHouseStore) -> bool:
        # the worker has taken the bounds it reached (it logs each once; they are not offered again)
        return await stored(store, tenant, n) and ("cost_feature", "") in detectors._reported and \
            releases._ungrouped_reported

    with migrated_store(tmp_path / "ch") as store:
        await ingest_until(bootstrap, store, Pipeline(lambda: book, detectors=detectors, releases=releases),
                           lambda: done(store), versions_interval_s=0.2)
    assert len(detectors.cost_feature.state) == 50 and len(detectors.errors.state) == 50
    # at least every call of ours past the bound (the events topic is shared with the other tests,
    # whose features count too)
    assert len(releases.groups) == 50 and releases.ungrouped >= n - 50
    assert detectors.take_capped() == [] and releases.take_capped() == []  # each bound was taken once, by the worker
