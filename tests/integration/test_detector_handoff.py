"""Detector baselines follow a tenant through a rebalance (real broker, real chDB): when a second
replica joins the group and takes over some partitions, the first saves its state as they are
revoked and the second adopts the per-tenant history of the tenants those partitions carry, so a
spike of a moved tenant right after the move is caught, where a replica starting cold is silent."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flyball.control_plane.runtime import load_prices
from flyball.schemas import AlertKind
from flyball.stream_processors.ingest import IngestService, partition_of
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore
from flyball.stream_processors.topics import ensure_topics
from flyball.control_plane.migrations import ALL_MIGRATIONS

from tests.integration._helpers import eventually
from tests.integration.test_detector_restart import call, produce

PARTITIONS = 4  # ensure_topics' default for the events topic


async def test_a_joining_replica_adopts_the_moved_tenants_baselines(bootstrap: str, tmp_path: Path) -> None:
    await ensure_topics(bootstrap)
    book = load_prices(None)
    run = uuid.uuid4().hex[:8]
    group = f"handoff-{run}"
    tenants: dict[int, str] = {}  # one tenant per partition
    i = 0
    while len(tenants) < PARTITIONS:
        name = f"ho-{run}-{i}"
        tenants.setdefault(partition_of(name, PARTITIONS), name)
        i += 1
    now = datetime.now(UTC)
    calm = {t: [call(t, now - timedelta(minutes=80) + timedelta(seconds=5 * k)) for k in range(959)]
            for t in tenants.values()}

    def spike(tenant: str) -> list[bytes]:
        return [call(tenant, now + timedelta(seconds=k / 2), model="gpt-4o", inp=40_000, out=3_000) for k in range(30)]
    # the control: without the old owner's history a replica is in cold start on this spike
    assert [a for a in Pipeline(lambda: book).process(spike(tenants[0]), now=None).alerts
            if a.kind == AlertKind.COST_SPIKE] == []

    store = ClickHouseStore(f"chdb://{tmp_path}/ch")
    store.migrate(ALL_MIGRATIONS)

    async def stored(n: int) -> bool:
        rows = await store.run(store.query, "SELECT count() FROM events WHERE startsWith(tenant_id, {p:String})",
                               {"p": f"ho-{run}-"})
        return rows[0][0] >= n

    async def replica(worker_id: str) -> tuple[IngestService, asyncio.Task[None]]:
        service = IngestService(bootstrap=bootstrap, store=store, pipeline=Pipeline(lambda: book), group_id=group,
                                worker_id=worker_id, checkpoint_interval_s=0.5, session_timeout_ms=6_000)
        await service.start()
        return service, asyncio.create_task(service.run())

    first, first_task = await replica("a")
    second: IngestService | None = None
    second_task: asyncio.Task[None] | None = None
    try:
        for tenant, raws in calm.items():
            await produce(bootstrap, tenant, raws)
        await eventually(lambda: stored(sum(map(len, calm.values()))))

        second, second_task = await replica("b")

        async def split() -> bool:
            assert second is not None and first._consumer is not None and second._consumer is not None
            a = {tp.partition for tp in first._consumer.assignment()}
            b = {tp.partition for tp in second._consumer.assignment()}
            return bool(a) and bool(b) and not a & b and len(a | b) == PARTITIONS
        await eventually(split, timeout=60)

        moved = tenants[min(tp.partition for tp in second._consumer.assignment())]  # type: ignore[union-attr]
        await produce(bootstrap, moved, spike(moved))

        async def alerted() -> bool:
            rows = await store.run(store.query, "SELECT kind FROM alerts WHERE scope_key = {k:String}",
                                   {"k": f"tenant_id={moved}"})
            return "cost_spike" in {r[0] for r in rows}
        await eventually(alerted, timeout=60)
        # raised by the new owner, which holds the tenant's series (adopted, now with the open alert)
        assert moved in second.pipeline.detectors.cost.state and second.pipeline.detectors.cost.is_open(moved)
    finally:
        for service, task in ((second, second_task), (first, first_task)):
            if service is not None and task is not None:
                await service.stop()
                await asyncio.wait_for(task, 30)
        store.close()
