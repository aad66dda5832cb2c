"""Processes, probes and invariants shared by the chaos scenarios and the soak.

Every process here is a real one: the shim in ``chaos.emitter``, ``flyball worker`` (or
``chaos.worker``, the same worker with a fault-injecting store), ``flyball api``; the broker is
the Apache Kafka that ``scripts/testbrokers.py`` started. The checker reads Kafka and the
workers' chDB directories itself, after the workers stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from flyball.schemas import ALERTS, EVENTS, Scope
from flyball.schemas.alerts import AlertKind
from flyball.stream_processors.detectors.base import alert_id_for
from flyball.stream_processors.topics import ensure_topics

from . import traffic

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ADMIN_KEY = "chaos-admin-key"
POLICIES = """\
version: 1
max_active: 100
max_traffic_share: 1.0
policies:
  - policy_id: chaos-unpriced-hold
    description: an unpriced model waits for an SRE (a pending approval in every scenario)
    alert_kind: unpriced_model
    min_severity: info
    match: {model: "*"}
    target: [model]
    action: throttle
    rate_per_s: 1000
    burst: 1000
    ttl_s: 3600
    approval: true
"""


def say(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process in its own session, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path,
                 stdout: int | None = None) -> None:
        self.name = name
        self.log = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen([PY, *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=stdout if stdout is not None else self._log, stderr=self._log,
                                     start_new_session=True)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.close()

    def stop(self, timeout: float = 40.0) -> int:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"{self.name} did not stop within {timeout}s of SIGTERM: SIGKILL")
                self.kill9()
        self.close()
        return self.proc.returncode

    def close(self) -> None:
        """The log file and any pipe to the (ended) child: left open, they leak a descriptor each."""
        for f in (self.proc.stdout, self._log):
            if f is not None:
                f.close()

    def rss_mb(self, field: str = "VmRSS") -> float:
        """Resident memory in MB: all of it (``VmRSS``), or its anonymous part (``RssAnon``: the
        heaps) or file-backed part (``RssFile``: mapped code, chDB's 555 MB library among it)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def base_env(bootstrap: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYBALL_") or k.startswith("FLYBALL_TEST_")}
    return env | {"FLYBALL_KAFKA_BOOTSTRAP": bootstrap, "FLYBALL_LOG_LEVEL": "warning",
                  "PYTHONPATH": str(ROOT)}


class Worker:
    """`flyball worker` (or the fault-injecting ``chaos.worker``) on its own chDB directory."""

    def __init__(self, run: Run, name: str, *, faulty: bool = False, env: dict[str, str] | None = None) -> None:
        self.run, self.name, self.faulty = run, name, faulty
        self.data_dir = run.dir / name
        self.extra_env = env or {}
        self.proc: Proc | None = None
        self.starts = 0

    def start(self, timeout: float = 90.0) -> None:
        env = base_env(self.run.bootstrap) | {"FLYBALL_WORKER_GROUP": self.run.group,
                                               "FLYBALL_WORKER_ID": self.name} | self.extra_env
        module = "chaos.worker" if self.faulty else "flyball.control_plane.cli"
        args = ["-m", module] + ([] if self.faulty else ["worker"]) + ["--data-dir", str(self.data_dir)]
        self.starts += 1
        out = self.run.dir / f"{self.name}.{self.starts}.out"
        with out.open("wb") as fh:
            self.proc = Proc(self.name, args, env, self.run.dir / f"{self.name}.log", stdout=fh.fileno())
        deadline = time.monotonic() + timeout
        while "flyball is up" not in out.read_text(errors="replace"):
            if not self.proc.alive():
                raise RuntimeError(f"{self.name} exited during start:\n{self.proc.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not up within {timeout}s:\n{self.proc.tail()}")
            time.sleep(0.2)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill9()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class ControlPlane:
    """`flyball api` on its own chDB directory, with a policy that makes every unpriced-model
    alert a pending approval."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = run.dir / "control"
        self.policies = run.dir / "policies.yaml"
        self.policies.write_text(POLICIES)
        self.proc: Proc | None = None
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)

    def start(self, timeout: float = 90.0) -> float:
        env = base_env(self.run.bootstrap) | {"FLYBALL_ADMIN_API_KEY": ADMIN_KEY,
                                               "FLYBALL_POLICIES_FILE": str(self.policies),
                                               "FLYBALL_CONTROL_GROUP": f"{self.run.group}-control"}
        t0 = time.monotonic()
        self.proc = Proc("api", ["-m", "flyball.control_plane.cli", "api", "--data-dir", str(self.data_dir),
                                 "--api-port", str(self.port)], env, self.run.dir / "api.log")
        while time.monotonic() - t0 < timeout:
            if not self.proc.alive():
                raise RuntimeError(f"flyball api exited during start:\n{self.proc.tail()}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if self.http.get("/healthz", timeout=2).json().get("control_ready"):
                    return time.monotonic() - t0
            time.sleep(0.2)
        raise RuntimeError(f"flyball api not ready within {timeout}s:\n{self.proc.tail()}")

    def directives(self) -> list[dict[str, Any]]:
        r = self.http.get("/v1/directives", params={"state": "all"})
        r.raise_for_status()
        body = r.json()
        return list(body["directives"] if isinstance(body, dict) else body)

    def actions(self) -> list[dict[str, Any]]:
        r = self.http.get("/v1/actions", params={"decision": "applied", "limit": 5000})
        r.raise_for_status()
        body = r.json()
        return list(body["actions"] if isinstance(body, dict) else body)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        self.http.close()


@dataclass
class Run:
    """One scenario: its tag (tenant/model prefix), consumer group, directory and broker."""

    name: str
    bootstrap: str
    dir: Path
    tag: str = field(default_factory=lambda: "c" + uuid.uuid4().hex[:8])
    group: str = ""
    faults: list[str] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.group = self.group or f"chaos-{self.tag}"
        self.dir.mkdir(parents=True, exist_ok=True)

    def emitter(self, n: int, rate: float, start: int = 0) -> Proc:
        return Proc("emitter", ["-m", "chaos.emitter", self.bootstrap, str(self.dir / "spill"), self.tag,
                                str(start), str(start + n), str(rate)],
                    base_env(self.bootstrap), self.dir / "emitter.log", stdout=subprocess.PIPE)


def emitter_result(p: Proc, timeout: float = 600.0) -> dict[str, Any]:
    out, _ = p.proc.communicate(timeout=timeout)
    p.close()
    assert p.proc.returncode == 0, f"emitter failed (exit {p.proc.returncode}):\n{p.tail()}"
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


# ---------------------------------------------------------------- Kafka probes
class Lag:
    """The worker group's lag on the events topic: end offsets minus committed offsets."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.bootstrap, self.group = bootstrap, group
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self.tps: list[TopicPartition] = []

    async def __aenter__(self) -> Lag:
        await ensure_topics(self.bootstrap)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                          enable_auto_commit=False, request_timeout_ms=10_000)
        await self._consumer.start()
        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
        await self._admin.start()
        deadline = time.monotonic() + 30
        while not self.tps:  # a topic just created may not list its partitions yet
            topics = await self._admin.describe_topics([EVENTS])
            self.tps = [TopicPartition(EVENTS, p["partition"]) for p in topics[0]["partitions"]]
            if not self.tps:
                assert time.monotonic() < deadline, f"{EVENTS} lists no partitions"
                await asyncio.sleep(0.5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()

    async def prime(self) -> None:
        """Commit the group at the topic's end: the scenario's worker reads only its own run."""
        assert self._consumer is not None
        ends = await self._consumer.end_offsets(self.tps)
        primer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False)
        await primer.start()
        try:
            primer.assign(self.tps)
            await primer.commit({tp: off for tp, off in ends.items()})
        finally:
            await primer.stop()

    async def committed(self) -> int | None:
        assert self._admin is not None
        try:
            offsets = await self._admin.list_consumer_group_offsets(self.group)
        except (KafkaError, OSError, TimeoutError):
            return None
        return int(sum(max(o.offset, 0) for tp, o in offsets.items() if tp.topic == EVENTS))

    async def lag(self) -> int | None:
        assert self._consumer is not None
        try:
            ends = await self._consumer.end_offsets(self.tps)
        except (KafkaError, OSError, TimeoutError):
            return None
        committed = await self.committed()
        return None if committed is None else sum(ends.values()) - committed

    async def drained(self, timeout: float) -> float:
        """Wait until the lag is 0 (seconds waited); fail after ``timeout``."""
        t0 = time.monotonic()
        last: int | None = None
        while time.monotonic() - t0 < timeout:
            last = await self.lag()
            if last == 0:
                return time.monotonic() - t0
            await asyncio.sleep(0.5)
        raise AssertionError(f"lag still {last} after {timeout}s")

    async def per_partition(self) -> dict[int, int] | None:
        assert self._admin is not None
        try:
            offsets = await self._admin.list_consumer_group_offsets(self.group)
        except (KafkaError, OSError, TimeoutError):
            return None
        return {tp.partition: o.offset for tp, o in offsets.items() if tp.topic == EVENTS}

    async def recovered(self, injected_at: float, timeout: float = 240.0) -> float:
        """Call when a fault ends. Seconds from ``injected_at`` (monotonic) until every event
        published up to 1 s after now is committed by the worker group: the pipeline has caught
        up. (The second makes every partition receive events no dead worker can commit: the shim
        sends in bursts, so right after a commit a partition may have nothing waiting.)"""
        assert self._consumer is not None
        await asyncio.sleep(1.0)
        deadline = time.monotonic() + timeout
        target: dict[int, int] | None = None
        while target is None and time.monotonic() < deadline:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                target = {tp.partition: off for tp, off in (await self._consumer.end_offsets(self.tps)).items()}
            if target is None:
                await asyncio.sleep(0.2)
        behind: dict[int, int] = {}
        while target is not None and time.monotonic() < deadline:
            now = await self.per_partition()
            if now is not None:
                behind = {p: end - now.get(p, 0) for p, end in target.items() if now.get(p, 0) < end}
                if not behind:
                    return time.monotonic() - injected_at
            await asyncio.sleep(0.2)
        raise AssertionError(f"not caught up {timeout}s after the fault ended (behind per partition: {behind})")


async def alerts_on_topic(bootstrap: str, wanted: set[str], timeout: float = 60.0) -> Counter[str]:
    """How many times each wanted alert id was published on the alerts topic."""
    consumer = AIOKafkaConsumer(ALERTS, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    seen: Counter[str] = Counter()
    try:
        tps = [TopicPartition(ALERTS, p) for p in consumer.partitions_for_topic(ALERTS) or ()]
        ends = await consumer.end_offsets(tps) if tps else {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                for rec in recs:
                    with contextlib.suppress(ValueError, TypeError):
                        alert_id = json.loads(rec.value)["alert_id"]
                        if alert_id in wanted:
                            seen[alert_id] += 1
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(positions[tp] >= end for tp, end in ends.items()):
                break
    finally:
        await consumer.stop()
    return seen


def unpriced_alert_ids(models: set[str]) -> dict[str, str]:
    return {alert_id_for(AlertKind.UNPRICED_MODEL, Scope(provider="openai", model=m).key(), 0): m for m in models}


def inspect(data_dir: Path, tag: str) -> dict[str, Any]:
    r = subprocess.run([PY, "-m", "chaos.inspect_store", str(data_dir / "clickhouse"), tag], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=base_env(""))
    assert r.returncode == 0, f"inspect {data_dir} failed:\n{r.stderr[-3000:]}"
    return dict(json.loads(r.stdout))


# ---------------------------------------------------------------- directives
def seed_directives(cp: ControlPlane, tag: str) -> dict[str, str]:
    """A block and a throttle made by hand, the throttle pinned: directive id -> tenant."""
    out: dict[str, str] = {}
    for tenant, body in ((f"{tag}-blocked", {"action": "block"}),
                         (f"{tag}-throttled", {"action": "throttle", "rate_per_s": 0.001, "burst": 1})):
        r = cp.http.post("/v1/directives", json={"scope": {"tenant_id": tenant}, "ttl_s": 3600,
                                                 "reason": "chaos", **body})
        assert r.status_code == 201, r.text
        out[r.json()["directive"]["directive_id"]] = tenant
    pinned = next(d for d, t in out.items() if t.endswith("-throttled"))
    r = cp.http.post(f"/v1/directives/{pinned}/pin")
    assert r.status_code == 200, r.text
    return out


@dataclass
class Verdict:
    """What one scenario measured; ``problems`` empty means every invariant held."""

    scenario: str
    events: int
    acknowledged: int
    stored: int
    lost: int
    duplicated: int
    spend_expected: str
    spend_stored: str
    alerts_expected: int
    alerts_lost: int
    directives: int
    directives_lost: int
    directives_applied_twice: int
    faults: list[str]
    recovery_s: list[float]
    drain_s: float
    seconds: float
    problems: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


def verdict(run: Run, n: int, ack: dict[str, Any], workers: list[Worker], cp: ControlPlane | None,
            manual: dict[str, str], *, drain_s: float, t0: float, extra: dict[str, Any] | None = None) -> Verdict:
    """Check every invariant on what the run left in ClickHouse, Kafka and the control plane."""
    problems: list[str] = []
    want, unpriced = traffic.expected(run.tag, n)
    acknowledged = int(ack["stats"]["sent"])
    dropped = int(ack["stats"].get("dropped", 0))
    if acknowledged + dropped != n:
        problems.append(f"the shim acknowledged {acknowledged} and dropped {dropped} of {n} events")
    stored_costs: dict[str, str] = {}
    final_rows = 0
    alerts_stored: set[str] = set()
    per_store_counts: list[int] = []
    for w in workers:
        facts = inspect(w.data_dir, run.tag)
        per_store_counts.append(len(facts["costs"]))
        final_rows += len(facts["costs"])
        stored_costs.update(facts["costs"])  # an event stored by two workers (own chDB each) counts once
        alerts_stored.update(facts["alerts"])
    strangers = set(stored_costs) - set(want)
    if strangers:
        problems.append(f"{len(strangers)} stored events were never sent")
    lost = acknowledged - len(stored_costs)  # acknowledged but not stored
    if len(stored_costs) != acknowledged:
        problems.append(f"distinct event_ids stored {len(stored_costs)} != acknowledged {acknowledged}")
    # within one store FINAL must leave one row per event_id; across stores the checker dedupes
    duplicated = final_rows - len(stored_costs) if len(workers) == 1 else 0
    if duplicated:
        problems.append(f"{duplicated} events counted twice in one store")
    # everything sent was acknowledged: the total of what was sent; else (the shim dropped some
    # before sending, counted in its stats) the total of the acknowledged ones, known by their ids
    expected_spend = sum((want[e] for e in stored_costs if e in want) if acknowledged != n else want.values(),
                         Decimal(0))
    stored_spend = sum((Decimal(c) for c in stored_costs.values() if c), Decimal(0))
    if stored_spend != expected_spend:
        problems.append(f"spend stored {stored_spend} != expected {expected_spend}")
    per_store = {w.name: n_ for w, n_ in zip(workers, per_store_counts, strict=True)}
    expected_alerts = unpriced_alert_ids(unpriced)
    on_topic = asyncio.run(alerts_on_topic(run.bootstrap, set(expected_alerts)))
    alerts_lost = len(set(expected_alerts) - (set(on_topic) & alerts_stored))
    if alerts_lost:
        problems.append(f"{alerts_lost} of {len(expected_alerts)} unpriced-model alerts missing "
                        f"(stored {len(set(expected_alerts) & alerts_stored)}, on the topic {len(on_topic)})")
    directives_lost = twice = 0
    if cp is not None:
        dl, tw, more = check_directives(cp, manual, expected_alerts)
        directives_lost, twice = dl, tw
        problems.extend(more)
    extra = {**(extra or {}), **({"dropped_by_shim": dropped} if dropped else {}),
             **({"stored_per_worker": per_store} if len(workers) > 1 else {})}
    return Verdict(scenario=run.name, events=n, acknowledged=acknowledged, stored=len(stored_costs), lost=lost,
                   duplicated=duplicated, spend_expected=str(expected_spend),
                   spend_stored=str(stored_spend), alerts_expected=len(expected_alerts), alerts_lost=alerts_lost,
                   directives=(len(manual) + len(expected_alerts)) if cp is not None else 0,
                   directives_lost=directives_lost,
                   directives_applied_twice=twice, faults=run.faults, recovery_s=[round(r, 1) for r in run.recovery_s],
                   drain_s=round(drain_s, 1), seconds=round(time.monotonic() - t0, 1), problems=problems,
                   extra=extra)


def check_directives(cp: ControlPlane, manual: dict[str, str],
                     alerts: dict[str, str], timeout: float = 60.0) -> tuple[int, int, list[str]]:
    """Manual directives active (the pinned one still pinned); one pending approval per
    unpriced-model alert (the alert reached the control plane); no directive applied twice."""
    problems: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        listed = {d["directive_id"]: d for d in cp.directives()}
        pending_for = {d.get("alert_id") for d in listed.values() if d.get("state") == "pending"}
        missing_manual = [d for d in manual if listed.get(d, {}).get("state") != "active"]
        missing_pending = set(alerts) - pending_for
        if not (missing_manual or missing_pending) or time.monotonic() > deadline:
            break
        time.sleep(1)
    if missing_manual:
        problems.append(f"manual directives not active: {missing_manual}")
    if missing_pending:
        problems.append(f"{len(missing_pending)} unpriced alerts have no pending approval at the control plane")
    pinned = [d for d, body in listed.items() if d in manual and body.get("pinned")]
    if len(pinned) != 1:
        problems.append(f"expected one pinned directive, found {len(pinned)}")
    applied = Counter(a["directive_id"] for a in cp.actions() if a.get("decision") == "applied")
    twice = sum(1 for c in applied.values() if c > 1)
    if twice:
        problems.append(f"{twice} directives applied more than once: {[d for d, c in applied.items() if c > 1]}")
    return len(missing_manual) + len(missing_pending), twice, problems


def save(verdict_: Verdict, results: Path) -> None:
    """Append to the run's results file (JSON lines), the source of docs/RELIABILITY.md."""
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as fh:
        fh.write(json.dumps(verdict_.__dict__) + "\n")
