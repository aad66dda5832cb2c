"""Zero loss through a broker outage and a shim restart, on Apache Kafka.

The shim runs in real processes (tests/faults/shim_driver.py). Kafka is stopped (data kept)
while 20,000 events are emitted; the shim process is restarted once during the outage; Kafka
comes back on the same port and data. Every event must then be on ``flyball.events.v1``
exactly once by ``event_id``, and each tenant's events in the order they were emitted."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from flyball.producers import Staleness, Telemetry
from flyball.schemas import EVENTS

from ..conftest import broker_address
from .shim_driver import TENANTS, event_id

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 20_000


class Shim:
    def __init__(self, bootstrap: str, spill_dir: Path, tag: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.shim_driver", bootstrap, str(spill_dir), tag], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "FLYBALL_LOG_LEVEL": "warning"})

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"shim process died answering {command!r} (exit {self.proc.poll()})"
        return json.loads(line)

    def close(self, timeout: float) -> dict[str, Any]:
        answer = self.ask(f"close {timeout}")
        assert self.proc.wait(timeout=timeout + 30) == 0
        self.release()
        return answer

    def release(self) -> None:
        """Kill the driver if it still runs and close its pipes (each would leak a descriptor)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def brokers(*args: str) -> None:
    state = os.environ.get("FLYBALL_TEST_BROKERS_STATE", "")
    assert state, "FLYBALL_TEST_BROKERS_STATE is not set (start the brokers with scripts/testbrokers.py)"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "testbrokers.py"), *args, "--kafka", "--state", state],
                   check=True, timeout=120, capture_output=True)


async def consume(bootstrap: str, tag: str, expected: int, timeout: float) -> list[tuple[int, int, dict[str, Any]]]:
    """(partition, offset, event) of every record of this run, in partition order."""
    consumer = AIOKafkaConsumer(EVENTS, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[int, int, dict[str, Any]]] = []
    ids: set[str] = set()
    try:
        deadline = time.monotonic() + timeout
        idle_since = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, records in batch.items():
                for rec in records:
                    if tag.encode() not in (rec.value or b""):
                        continue  # other tests' records, some deliberately not JSON
                    event = orjson.loads(rec.value)
                    if event.get("feature") == tag:
                        out.append((tp.partition, rec.offset, event))
                        ids.add(event["event_id"])
            if len(ids) >= expected:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 2:  # a little longer, to catch duplicates
                    break
    finally:
        await consumer.stop()
    return out


@pytest.mark.kafka
def test_outage_with_a_shim_restart_loses_nothing_and_keeps_per_tenant_order(tmp_path: Path) -> None:
    bootstrap = broker_address("kafka")
    tag = f"fault-{uuid.uuid4().hex[:8]}"
    spill = tmp_path / "spill"

    shims: list[Shim] = []
    try:
        first = Shim(bootstrap, spill, tag)
        shims.append(first)
        first.ask("emit 0 4000 2")
        assert first.ask("flush 30")["flushed"], "events did not reach Kafka before the outage"
        brokers("stop", "--keep-data")
        outage_started = time.monotonic()
        try:
            first.ask("emit 4000 11000 8")
            left = first.close(1)["stats"]  # restart during the outage: what is unsent stays on disk
            assert left["buffered"] + left["sent"] == 11000 and left["dropped"] == 0, left
            second = Shim(bootstrap, spill, tag)
            shims.append(second)
            second.ask(f"emit 11000 {TOTAL} 10")
            time.sleep(max(0.0, 30 - (time.monotonic() - outage_started)))
        finally:
            brokers("start", "--reuse")
        answer = second.ask("flush 90")
        assert answer["flushed"], answer
        stats = second.close(10)["stats"]
    finally:
        for shim in shims:
            shim.release()
    assert stats["dropped"] == 0 and stats["buffered"] == 0 and stats["replayed"] >= TOTAL - 11000

    records = asyncio.run(consume(bootstrap, tag, TOTAL, timeout=60))
    ids = [event["event_id"] for _, _, event in records]
    assert set(ids) == {event_id(tag, i) for i in range(TOTAL)}
    assert len(ids) == TOTAL, f"{len(ids) - len(set(ids))} duplicates"
    by_tenant: dict[str, list[int]] = {}
    for _, _, event in sorted(records, key=lambda r: (r[0], r[1])):
        by_tenant.setdefault(event["tenant_id"], []).append(event["attributes"]["seq"])
    assert len(by_tenant) == TENANTS
    for tenant, seqs in by_tenant.items():
        assert seqs == sorted(seqs), f"{tenant}: events out of order"


def test_the_directive_view_is_fresh_while_the_broker_answers(bootstrap: str) -> None:
    staleness = Staleness(max_age_s=20, high_risk=({"tenant_id": "bank"},))
    tel = Telemetry("freshness", bootstrap=bootstrap, staleness=staleness)
    try:
        deadline = time.monotonic() + 20
        while tel.view.updated_at is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tel.view.updated_at is not None, "the follower never heard from the broker"
        time.sleep(1)
        assert tel.view.age(time.time()) < 5
        decision = tel.guard(tenant_id="bank")
        assert decision.allowed and not decision.stale
    finally:
        tel.close(timeout=5)
