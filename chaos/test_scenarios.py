"""Fault scenarios over real processes on Apache Kafka (``make chaos``).

Each scenario: a control plane (`flyball api`) with two hand-made directives (one pinned) and
a policy that turns every unpriced-model alert into a pending approval; one or two workers;
the shim in its own process sending the deterministic traffic of chaos/traffic.py; a fault.
Then ``harness.verdict`` checks the invariants on what the run left behind: distinct
``event_id``s stored == events the broker acknowledged to the shim, stored spend == an
independent Decimal sum, every expected alert stored, published and turned into its pending
approval, the hand-made directives still in force, and no directive applied twice.

Recovery time: from the end of a fault (worker restarted, broker back, ClickHouse writable
again, control plane restarted) until every events partition with waiting events has
committed progress again (for the control plane: until it answers ready again).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from flyball.producers import Telemetry

from .harness import (
    ROOT,
    ControlPlane,
    Lag,
    Proc,
    Run,
    Verdict,
    Worker,
    emitter_result,
    save,
    say,
    seed_directives,
    verdict,
)

pytestmark = pytest.mark.timeout(900)  # one scenario takes 1-2 minutes; a loaded machine more
SCALE = float(os.environ.get("FLYBALL_CHAOS_SCALE", "1"))  # event counts x SCALE (kill -9: never below 100k)


def events(n: int) -> int:
    return max(1000, int(n * SCALE))


class Scenario:
    """The common frame: control plane + seeded directives + workers + emitter + verdict."""

    def __init__(self, name: str, kafka: str, tmp: Path, results: Path) -> None:
        self.run = Run(name, kafka, tmp)
        self.results = results
        self.cp = ControlPlane(self.run)
        self.workers: list[Worker] = []
        self.lag = Lag(kafka, self.run.group)
        self.manual: dict[str, str] = {}
        self.emitters: list[Proc] = []
        self.t0 = time.monotonic()

    async def begin(self, *workers: Worker) -> None:
        await self.lag.__aenter__()
        await self.lag.prime()
        await asyncio.to_thread(self.cp.start)
        self.manual = await asyncio.to_thread(seed_directives, self.cp, self.run.tag)
        self.workers = list(workers)
        await asyncio.gather(*(asyncio.to_thread(w.start) for w in workers))
        say(f"{self.run.name}: {len(workers)} worker(s) and the control plane up (tag {self.run.tag})")

    def emit(self, n: int, rate: float) -> Proc:
        self.n = n
        self.emitters.append(self.run.emitter(n, rate))
        return self.emitters[-1]

    async def fault_over(self, injected_at: float) -> None:
        """The fault just ended: record the time from its injection until the pipeline caught up."""
        self.run.recovery_s.append(await self.lag.recovered(injected_at))

    async def finish(self, emitter: Proc, extra: dict[str, Any] | None = None) -> Verdict:
        ack = await asyncio.to_thread(emitter_result, emitter)
        drain_from = time.monotonic()
        await self.lag.drained(timeout=300)
        drain_s = time.monotonic() - drain_from
        say(f"{self.run.name}: shim acknowledged {ack['stats'].get('sent')}, drained in {drain_s:.1f}s")
        for w in self.workers:
            await asyncio.to_thread(w.stop)
        v = await asyncio.to_thread(verdict, self.run, self.n, ack, self.workers, self.cp, self.manual,
                                    drain_s=drain_s, t0=self.t0, extra=extra)
        save(v, self.results)
        say(f"{v.scenario}: {v.events} events, stored {v.stored}, lost {v.lost}, recovery {v.recovery_s}, "
            f"problems {v.problems}")
        return v

    async def close(self) -> None:
        things: list[Proc | Worker | ControlPlane] = [*self.emitters, *self.workers, self.cp]
        for thing in things:
            await asyncio.to_thread(thing.stop)
        await self.lag.__aexit__()


async def test_worker_killed_with_sigkill_three_times_during_100k_events(kafka: str, tmp_path: Path,
                                                                         results: Path) -> None:
    s = Scenario("worker kill -9 x3", kafka, tmp_path, results)
    worker = Worker(s.run, "w1")
    try:
        await s.begin(worker)
        emitter = s.emit(max(100_000, events(100_000)), rate=5000)
        for _ in range(3):
            await asyncio.sleep(5)
            killed = time.monotonic()
            await asyncio.to_thread(worker.kill9)
            s.run.faults.append("kill -9 worker, restarted at once")
            await asyncio.to_thread(worker.start)
            await s.fault_over(killed)
        v = await s.finish(emitter)
    finally:
        await s.close()
    assert not v.problems, v.problems


async def test_two_workers_in_one_group_one_killed(kafka: str, tmp_path: Path, results: Path) -> None:
    """chDB allows one process per data dir, so each worker has its own; the checker reads both
    and counts an event stored by both once (a ClickHouse server's ReplacingMergeTree would)."""
    s = Scenario("two workers, one kill -9", kafka, tmp_path, results)
    w1, w2 = Worker(s.run, "w1"), Worker(s.run, "w2")
    try:
        await s.begin(w1, w2)
        emitter = s.emit(events(40_000), rate=4000)
        await asyncio.sleep(4)
        killed = time.monotonic()
        await asyncio.to_thread(w2.kill9)
        s.run.faults.append("kill -9 one of two workers (not restarted)")
        await s.fault_over(killed)
        v = await s.finish(emitter)
    finally:
        await s.close()
    assert not v.problems, v.problems
    assert all(v.extra["stored_per_worker"].values()), f"one worker consumed nothing: {v.extra}"


def restart_kafka() -> None:
    state = os.environ.get("FLYBALL_TEST_BROKERS_STATE", "")
    assert state, "FLYBALL_TEST_BROKERS_STATE is not set (start the brokers with scripts/testbrokers.py)"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "testbrokers.py"), "restart-kafka", "--state", state],
                   check=True, timeout=180, capture_output=True)


async def test_kafka_restarted_with_its_data_kept(kafka: str, tmp_path: Path, results: Path) -> None:
    s = Scenario("Kafka restart (data kept)", kafka, tmp_path, results)
    try:
        await s.begin(Worker(s.run, "w1"))
        emitter = s.emit(events(40_000), rate=3000)
        await asyncio.sleep(4)
        down = time.monotonic()
        await asyncio.to_thread(restart_kafka)
        s.run.faults.append(f"Kafka stopped (SIGTERM) and restarted on its data ({time.monotonic() - down:.0f} s)")
        await s.fault_over(down)
        v = await s.finish(emitter)
    finally:
        await s.close()
    assert not v.problems, v.problems


async def test_clickhouse_writes_fail_then_recover(kafka: str, tmp_path: Path, results: Path) -> None:
    fail = tmp_path / "clickhouse-down"
    s = Scenario("ClickHouse writes failing 15 s", kafka, tmp_path, results)
    worker = Worker(s.run, "w1", faulty=True, env={"FLYBALL_CHAOS_FAIL_FILE": str(fail)})
    try:
        await s.begin(worker)
        emitter = s.emit(events(40_000), rate=4000)
        await asyncio.sleep(3)
        fail.touch()
        failing = time.monotonic()
        await asyncio.sleep(15)
        fail.unlink()
        s.run.faults.append("every ClickHouse insert raises for 15 s")
        await s.fault_over(failing)
        assert worker.proc is not None and worker.proc.alive(), "the worker died of the store failing"
        refused = worker.proc.log.read_text(errors="replace").count("clickhouse_write_failed")
        assert refused > 0, "no insert failed: the fault was not injected"
        s.run.faults[-1] += f" ({refused} failed inserts retried)"
        v = await s.finish(emitter)
    finally:
        await s.close()
    assert not v.problems, v.problems


async def test_control_plane_restart_keeps_directives_pins_and_approvals(kafka: str, tmp_path: Path,
                                                                         results: Path) -> None:
    s = Scenario("control plane kill -9 + restart", kafka, tmp_path, results)
    shim = Telemetry("chaos-follower", bootstrap=kafka, follow_directives=True)
    try:
        await s.begin(Worker(s.run, "w1"))
        blocked = next(t for t in s.manual.values() if t.endswith("-blocked"))
        throttled = next(t for t in s.manual.values() if t.endswith("-throttled"))

        async def enforced() -> bool:
            return not shim.guard(tenant_id=blocked) and not shim.guard(tenant_id=throttled)

        deadline = time.monotonic() + 60
        while not await enforced():
            assert time.monotonic() < deadline, "the shim never saw the seeded directives"
            await asyncio.sleep(0.2)
        emitter = s.emit(events(30_000), rate=3000)
        pending_before: set[str] = set()
        deadline = time.monotonic() + 60
        while len(pending_before) < 2:  # approvals waiting (from the unpriced-model alerts)
            assert time.monotonic() < deadline, "no pending approval appeared before the kill"
            await asyncio.sleep(0.5)
            pending_before = {d["directive_id"] for d in await asyncio.to_thread(s.cp.directives)
                              if d.get("state") == "pending"}
        await asyncio.to_thread(s.cp.proc.kill9)  # type: ignore[union-attr]  # started in begin()
        s.run.faults.append("kill -9 control plane, restart after 5 s")
        down, leaks = time.monotonic(), 0
        while time.monotonic() - down < 5:
            leaks += not await enforced()
            await asyncio.sleep(0.1)
        await asyncio.to_thread(s.cp.start)
        s.run.recovery_s.append(time.monotonic() - down)  # kill -9 -> ready again
        assert leaks == 0, (f"the shim let blocked/throttled calls through {leaks} times while the control plane "
                            " was down")
        after = {d["directive_id"] for d in await asyncio.to_thread(s.cp.directives) if d.get("state") == "pending"}
        assert pending_before <= after, f"pending approvals lost: {pending_before - after}"
        v = await s.finish(emitter, extra={"pending_before_restart": len(pending_before)})
        assert await enforced(), "the shim stopped enforcing after the restart"
    finally:
        shim.close(5)
        await s.close()
    assert not v.problems, v.problems


async def test_slow_consumer_builds_lag_and_catches_up(kafka: str, tmp_path: Path, results: Path) -> None:
    s = Scenario("slow consumer (500 rows/s)", kafka, tmp_path, results)
    worker = Worker(s.run, "w1", faulty=True, env={"FLYBALL_CHAOS_SLOW_ROWS_PER_S": "500"})
    try:
        await s.begin(worker)
        n = events(40_000)
        emitter = s.emit(n, rate=4000)
        peak = 0
        while emitter.alive():
            peak = max(peak, await s.lag.lag() or 0)
            await asyncio.sleep(0.5)
        s.run.faults.append(f"inserts throttled to 500 rows/s; peak lag {peak} events")
        assert peak >= n // 4, f"the consumer was not slow (peak lag {peak})"
        v = await s.finish(emitter, extra={"peak_lag": peak})
    finally:
        await s.close()
    assert not v.problems, v.problems
