"""Detector checkpoints per worker replica (real chDB, no broker: checkpoint and restore only
touch ClickHouse). Two replicas of one consumer group must each get their own state back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from flyball.control_plane.runtime import load_prices
from flyball.stream_processors.ingest import IngestService
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore


def _calls(tenant: str, start: datetime, n: int) -> list[bytes]:
    return [orjson.dumps({"schema_version": 1, "event_type": "llm_call", "event_id": str(uuid.uuid4()),
                          "ts": (start + timedelta(seconds=5 * i)).isoformat(), "tenant_id": tenant,
                          "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1000,
                          "output_tokens": 200}) for i in range(n)]


async def test_two_replicas_of_one_group_restore_their_own_detector_state(tmp_path: Path) -> None:
    book = load_prices(None)
    store = ClickHouseStore(f"chdb://{tmp_path}/ch")
    store.migrate()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)  # checkpoints keep ms
    try:
        def replica(worker_id: str) -> IngestService:
            return IngestService(bootstrap="127.0.0.1:9", store=store, pipeline=Pipeline(lambda: book),
                                 group_id="workers", worker_id=worker_id, checkpoint_interval_s=1.0)

        a, b = replica("0"), replica("1")
        a.pipeline.process(_calls("tenant-a", start, 60), now=None)
        b.pipeline.process(_calls("tenant-b", start + timedelta(minutes=1), 60), now=None)
        await a._checkpoint(force=True)
        await b._checkpoint(force=True)  # saved last: with one row per group, replica 0 would get this

        a2, b2 = replica("0"), replica("1")
        await a2._restore_detectors()
        await b2._restore_detectors()
        assert set(a2.pipeline.detectors.cost.state) == {"tenant-a"}
        assert set(b2.pipeline.detectors.cost.state) == {"tenant-b"}
        assert a2.pipeline.watermark == a.pipeline.watermark
        assert b2.pipeline.watermark == b.pipeline.watermark
        assert a2.pipeline.detectors.snapshot() == a.pipeline.detectors.snapshot()
    finally:
        store.close()
