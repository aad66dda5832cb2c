"""Shared by the loop and control benchmarks: the test brokers, reused when `make test`'s
addresses are in the environment, else started for the run and stopped after it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {"tansu": "FLYBALL_TEST_TANSU_BOOTSTRAP", "kafka": "FLYBALL_TEST_KAFKA_BOOTSTRAP"}


@contextlib.contextmanager
def test_brokers(brokers: Sequence[str]) -> Iterator[dict[str, str]]:
    """Yield broker name -> bootstrap address."""
    script = str(ROOT / "scripts/testbrokers.py")
    state = Path(tempfile.mkdtemp(prefix="flyball-bench-brokers-"))
    started = not all(os.environ.get(ENV[b]) for b in brokers)
    if started:
        subprocess.run([sys.executable, script, "start", *[f"--{b}" for b in brokers], "--state", str(state)],
                       check=True, stdout=subprocess.DEVNULL)
        for line in (state / "env").read_text().splitlines():
            key, _, value = line.partition("=")
            if value:
                os.environ[key] = value
    try:
        yield {b: os.environ[ENV[b]] for b in brokers}
    finally:
        if started:
            subprocess.run([sys.executable, script, "stop", "--state", str(state)], stdout=subprocess.DEVNULL)


def each_broker(names: str) -> Iterator[tuple[str, str, Path]]:
    """For each broker in ``names`` ("tansu,kafka"), in order: (name, bootstrap, a fresh temporary
    directory for that broker's measurement). Consume it whole: the brokers stop at its end."""
    brokers = [b for b in names.split(",") if b]
    with test_brokers(brokers) as addresses:
        for broker in brokers:
            print(f"{broker}:", flush=True)
            with tempfile.TemporaryDirectory() as d:
                yield broker, addresses[broker], Path(d)
