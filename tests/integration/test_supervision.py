"""A part that dies takes its process down: `flyball up` exits non-zero when its broker dies,
and a System whose ingest task died answers 503 on /healthz and /readyz (real HTTP)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from flyball.control_plane.runtime import System
from flyball.control_plane.settings import Settings
from flyball.producers.transports.kafka import start_producer
from flyball.schemas import EVENTS

from tests.conftest import free_port


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    raise AssertionError(f"not ready after {timeout}s: {log.read_text()}")


def test_up_exits_non_zero_when_its_embedded_broker_dies(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "FLYBALL_API_PORT": str(port), "FLYBALL_ADMIN_API_KEY": "k-up"}
    env.pop("FLYBALL_KAFKA_BOOTSTRAP", None)
    env.pop("FLYBALL_CLICKHOUSE_URL", None)
    log = tmp_path / "up.log"
    with log.open("w+") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flyball.control_plane.cli", "up", "--data-dir",
                                 str(tmp_path / "d")], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            _wait_ready(port, proc, log)
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            assert len(children) == 1, children
            os.kill(int(children[0]), signal.SIGKILL)  # the broker dies under the running process
            code = proc.wait(timeout=60)
            text = log.read_text()
            assert code != 0, text
            assert "broker died" in text and '"task_died"' in text
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


class _BrokenPipeline:
    """Stands in for the pipeline at IngestService's port: a bug that raises on every batch."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def process(self, raws: list[bytes], *, now: datetime | None, **options: Any) -> Any:
        raise RuntimeError("a bug in the pipeline")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_a_dead_ingest_task_turns_healthz_and_readyz_to_503(bootstrap: str, tmp_path: Path) -> None:
    settings = Settings(kafka_bootstrap=bootstrap, data_dir=tmp_path, api_port=free_port(), admin_api_key="k",
                        worker_group=f"w-{uuid.uuid4().hex[:8]}", control_group=f"c-{uuid.uuid4().hex[:8]}")
    system = System(settings)
    await system.start(ready_timeout=60)
    try:
        async with httpx.AsyncClient(base_url=system.api_url) as http:
            assert (await http.get("/readyz")).status_code == 200
            assert (await http.get("/healthz")).status_code == 200
            assert system.ingest is not None
            system.ingest.pipeline = _BrokenPipeline(system.ingest.pipeline)  # type: ignore[assignment]
            producer = await start_producer(bootstrap)
            try:
                event = {"schema_version": 1, "event_type": "llm_call", "event_id": str(uuid.uuid4()), "ts": datetime.now(UTC).isoformat(),
                         "tenant_id": "acme", "provider": "openai", "model": "gpt-4o-mini",
                         "input_tokens": 10, "output_tokens": 1}
                await producer.send_and_wait(EVENTS, key=b"acme", value=orjson.dumps(event))
            finally:
                await producer.stop()
            await asyncio.wait_for(system.supervisor.failed.wait(), 60)
            health = await http.get("/healthz")
            ready = await http.get("/readyz")
            assert health.status_code == 503 and health.json()["dead"] == ["ingest"]
            assert ready.status_code == 503 and ready.json()["dead"] == ["ingest"]
            assert system.supervisor.deaths[0].error == "RuntimeError: a bug in the pipeline"
    finally:
        await system.stop()
