"""Time from `flyball up` to ready (API answering, worker and control loop consuming).

    .venv/bin/python bench/up.py [--runs 3]

Baseline measured in the same run: the time `python -c "import flyball.control_plane.cli"`
takes (interpreter + imports), which is part of every start and moves with machine load.
Target: ready <= 15 s (median).
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def time_up(data_dir: Path) -> float:
    port = _free_port()
    env = {**os.environ, "FLYBALL_API_PORT": str(port), "FLYBALL_ADMIN_API_KEY": "k-bench"}
    env.pop("FLYBALL_KAFKA_BOOTSTRAP", None)
    env.pop("FLYBALL_CLICKHOUSE_URL", None)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "flyball.control_plane.cli", "up", "--data-dir", str(data_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        while time.monotonic() - started < 120:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()
                if health.get("worker_ready") and health.get("control_ready"):
                    return time.monotonic() - started
            except (httpx.HTTPError, ValueError):
                pass
            if proc.poll() is not None:
                raise SystemExit(f"flyball up exited with {proc.returncode}")
            time.sleep(0.1)
        raise SystemExit("flyball up not ready after 120 s")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def time_imports() -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import flyball.control_plane.cli"], check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ready, imports = [], []
    for i in range(args.runs):
        imports.append(time_imports())
        with tempfile.TemporaryDirectory() as d:
            ready.append(time_up(Path(d)))
        print(f"run {i + 1}: ready {ready[-1]:.2f} s, imports {imports[-1]:.2f} s")
    med = statistics.median(ready)
    print(f"median ready {med:.2f} s (imports baseline {statistics.median(imports):.2f} s, "
          f"ratio {med / statistics.median(imports):.1f}x); goal <= 15 s: {'MET' if med <= 15 else 'NOT MET'}")


if __name__ == "__main__":
    main()
