"""A throttle holds across replicas: three shim processes serving one tenant against one real
broker admit, together, the throttle's rate, not three times it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from flyball.control_plane.runtime import System
from flyball.control_plane.settings import Settings
from tests.conftest import free_port
from tests.integration._helpers import eventually

ADMIN = "test-admin-key"
DRIVER = Path(__file__).with_name("shim_replica.py")
RATE, BURST, SECONDS, REPLICAS = 5.0, 5, 8.0, 3


@pytest.fixture
async def system(bootstrap: str, tmp_path: Path) -> AsyncIterator[System]:
    run = uuid.uuid4().hex[:8]
    settings = Settings(kafka_bootstrap=bootstrap, data_dir=tmp_path, api_port=free_port(), admin_api_key=ADMIN,
                        worker_group=f"worker-{run}", control_group=f"control-{run}", shim_instances_every_s=1.0,
                        signing_keys=SecretStr(f"k{run}:{uuid.uuid4().hex}"))
    sys_ = System(settings)
    await sys_.start(ready_timeout=60)
    try:
        yield sys_
    finally:
        await sys_.stop()


def ask(proc: subprocess.Popen[str], line: str | None = None) -> dict[str, object]:
    assert proc.stdin is not None and proc.stdout is not None
    if line is not None:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    return json.loads(proc.stdout.readline())  # type: ignore[no-any-return]


async def test_three_shim_processes_together_admit_the_throttle_rate(system: System, bootstrap: str) -> None:
    tenant = f"replicas-{uuid.uuid4().hex[:8]}"
    keys = system.settings.signing_keys
    assert keys is not None
    procs = [subprocess.Popen([sys.executable, str(DRIVER), bootstrap, tenant, keys.get_secret_value()],  # noqa: ASYNC220 - long-lived drivers, spawned once
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(REPLICAS)]
    try:
        for p in procs:
            assert (await asyncio.to_thread(ask, p))["ready"]
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=system.api_url, headers=headers, timeout=10) as api:
            async def counted() -> bool:
                body = (await api.get("/v1/spend", params={"tenant_id": tenant})).json()
                return bool(body["events"] == 20 * REPLICAS)
            await eventually(counted, timeout=90)
            await asyncio.sleep(2.0)  # the next instance count sees all three
            created = await api.post("/v1/directives", json={"action": "throttle", "scope": {"tenant_id": tenant},
                                                             "rate_per_s": RATE, "burst": BURST, "ttl_s": 600})
            assert created.status_code == 201, created.text
            assert created.json()["directive"]["replicas"] == REPLICAS

        async def everyone_has_it() -> bool:
            answers = [await asyncio.to_thread(ask, p, "replicas") for p in procs]
            return all(a["replicas"] == [REPLICAS] for a in answers)
        await eventually(everyone_has_it, timeout=30, interval=0.5)

        for p in procs:  # all three hammer guard() at once
            assert p.stdin is not None
            p.stdin.write(f"guard {SECONDS}\n")
            p.stdin.flush()
        results = [await asyncio.to_thread(ask, p) for p in procs]
        allowed = sum(int(r["allowed"]) for r in results)  # type: ignore[call-overload]
        calls = sum(int(r["calls"]) for r in results)  # type: ignore[call-overload]
        assert calls > 10 * RATE * SECONDS  # demand far above the rate
        assert RATE * SECONDS * 0.8 <= allowed <= RATE * SECONDS + BURST + REPLICAS, (allowed, results)
    finally:
        for p in procs:
            if p.poll() is None and p.stdin is not None:
                try:
                    p.stdin.write("close\n")
                    p.stdin.flush()
                except BrokenPipeError:
                    pass
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(20)
            for pipe in (p.stdin, p.stdout):
                if pipe is not None:
                    pipe.close()
