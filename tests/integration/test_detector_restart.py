"""Detector baselines survive a worker restart (real broker, real chDB): the ingest service
checkpoints its detector state after a commit and restores it at start, so a spike right
after the restart is still caught, where a worker with fresh baselines would be in cold start."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from flyball.control_plane.runtime import load_prices
from flyball.schemas import AlertKind
from flyball.stream_processors.ingest import IngestService
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore
from flyball.stream_processors.topics import ensure_topics
from flyball.control_plane.migrations import ALL_MIGRATIONS
from tests.integration._helpers import eventually, produce


def call(tenant: str, ts: datetime, model: str = "gpt-4o-mini", inp: int = 1000, out: int = 200) -> bytes:
    return orjson.dumps({"schema_version": 1, "event_type": "llm_call", "event_id": str(uuid.uuid4()), "ts": ts.isoformat(),
                         "tenant_id": tenant, "feature": "chat", "provider": "openai", "model": model,
                         "input_tokens": inp, "output_tokens": out})


async def test_restarted_worker_keeps_its_baselines_and_catches_a_spike_at_once(bootstrap: str, tmp_path: Path) -> None:
    await ensure_topics(bootstrap)
    book = load_prices(None)
    run = uuid.uuid4().hex[:8]
    tenant, group = f"restart-{run}", f"worker-{run}"
    now = datetime.now(UTC)
    calm = [call(tenant, now - timedelta(minutes=80) + timedelta(seconds=5 * i)) for i in range(959)]
    spike = [call(tenant, now + timedelta(seconds=i / 2), model="gpt-4o", inp=40_000, out=3_000) for i in range(30)]
    # the control: a worker without the saved state is in cold start and says nothing about this spike
    assert [a for a in Pipeline(lambda: book).process(spike, now=None).alerts if a.kind == AlertKind.COST_SPIKE] == []

    store = ClickHouseStore(f"chdb://{tmp_path}/ch")
    store.migrate(ALL_MIGRATIONS)

    async def stored(n: int) -> bool:
        rows = await store.run(store.query, "SELECT count() FROM events WHERE tenant_id = {t:String}", {"t": tenant})
        return rows[0][0] >= n

    async def worker() -> tuple[IngestService, asyncio.Task[None]]:
        service = IngestService(bootstrap=bootstrap, store=store, pipeline=Pipeline(lambda: book), group_id=group,
                                checkpoint_interval_s=0.5)
        await service.start()
        return service, asyncio.create_task(service.run())

    try:
        first, task = await worker()
        await produce(bootstrap, tenant, calm)
        await eventually(lambda: stored(len(calm)))
        await first.stop()
        await asyncio.wait_for(task, 30)

        second, task = await worker()  # the restart: same group, a new process's fresh Pipeline
        try:
            await produce(bootstrap, tenant, spike)
            await eventually(lambda: stored(len(calm) + len(spike)))

            async def alerted() -> bool:
                rows = await store.run(store.query, "SELECT kind FROM alerts WHERE scope_key = {k:String}",
                                       {"k": f"tenant_id={tenant}"})
                return "cost_spike" in {r[0] for r in rows}
            await eventually(alerted, timeout=30)
        finally:
            await second.stop()
            await asyncio.wait_for(task, 30)
    finally:
        store.close()
