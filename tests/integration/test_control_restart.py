"""The control plane's alert consumer: a new group starts at the end of the alert topic (no
replay of history), and a restarted control plane acts on alerts published while it was down."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from flyball.control_plane.directives import ControlLoop
from flyball.producers.transports.kafka import start_producer
from flyball.schemas import ALERTS, Alert, AlertKind, Scope
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore
from flyball.stream_processors.topics import ensure_topics
from flyball.control_plane.migrations import ALL_MIGRATIONS


def cost_spike(tenant: str) -> Alert:
    now = datetime.now(UTC)
    return Alert(alert_id=str(uuid.uuid4()), kind=AlertKind.COST_SPIKE, scope=Scope(tenant_id=tenant),
                 severity="critical", metric="cost_usd_per_window", observed="9", baseline="0.1", threshold="1",
                 window_s=60, first_seen=now, last_seen=now, summary=f"spike on {tenant}")


async def publish(bootstrap: str, alert: Alert) -> None:
    producer = await start_producer(bootstrap)
    try:
        await producer.send_and_wait(ALERTS, key=alert.key().encode(), value=alert.model_dump_json().encode())
    finally:
        await producer.stop()


async def throttled(loop: ControlLoop, tenant: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(d.scope.tenant_id == tenant for d in loop.active()):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_restarted_control_plane_acts_on_alerts_published_while_it_was_down(bootstrap: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    before, during = f"before-{run}", f"during-{run}"
    await ensure_topics(bootstrap)
    await publish(bootstrap, cost_spike(before))  # history: a new group does not replay it
    store = ClickHouseStore(f"chdb://{tmp_path / 'ch'}")
    store.migrate(ALL_MIGRATIONS)
    try:
        for attempt in ("first", "restart"):
            loop = ControlLoop(bootstrap=bootstrap, audit=store, group_id=f"control-{run}")
            await loop.start()
            task = asyncio.create_task(loop.run())
            try:
                await asyncio.wait_for(loop.ready.wait(), 30)
                if attempt == "first":
                    assert not await throttled(loop, before, timeout=3)
                else:
                    assert await throttled(loop, during), "the alert published while down was missed"
            finally:
                await loop.stop()
                await asyncio.wait_for(task, 30)
            if attempt == "first":
                await publish(bootstrap, cost_spike(during))  # while no control plane runs
    finally:
        store.close()
