"""Signing keys rotate without downtime on a real broker (docs/SECURITY.md, "Rotation without
downtime"): 1. the verifiers (shims) take the new key next to the old one; 2. the control plane
restarts with both and signs with the new one (and signs the directives in force again with
it); 3. the old key goes. A block made before the rotation stays enforced through every step,
including in a shim that never held the old key; a message signed with the old key is then
refused."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from pydantic import SecretStr

from flyball.control_plane.runtime import System
from flyball.control_plane.settings import Settings
from flyball.producers import Telemetry
from flyball.producers.client import ShimSettings
from flyball.producers.transports.kafka import start_producer
from flyball.schemas import DIRECTIVES, ActionKind, Directive, KeySet, Scope, sign
from tests.conftest import free_port
from tests.integration._helpers import eventually

ADMIN = "test-admin-key"


async def test_signing_keys_rotate_across_a_running_control_plane_and_shims(bootstrap: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    old, new = f"old{run}:{uuid.uuid4().hex}", f"new{run}:{uuid.uuid4().hex}"
    kept, late = f"kept-{run}", f"late-{run}"

    def settings(keys: str, current: str = "") -> Settings:
        return Settings(kafka_bootstrap=bootstrap, data_dir=tmp_path, api_port=free_port(), admin_api_key=ADMIN,
                        worker_group=f"worker-{run}", control_group=f"control-{run}", signing_keys=SecretStr(keys),
                        signing_key_id=current)

    def shim(keys: str) -> Telemetry:
        return Telemetry(f"rot-{run}", bootstrap=bootstrap, settings=ShimSettings(signing_keys=SecretStr(keys)))

    def blocked(tel: Telemetry, tenant: str) -> Callable[[], bool]:
        return lambda: not tel.guard(tenant_id=tenant).allowed

    async def block(url: str, tenant: str, ttl_s: int) -> None:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10) as api:
            r = await api.post("/v1/directives", json={"action": "block", "scope": {"tenant_id": tenant},
                                                       "ttl_s": ttl_s})
            assert r.status_code in (200, 201), r.text

    shims: list[Telemetry] = []
    plane = System(settings(old), worker=False)
    await plane.start(ready_timeout=60)
    try:
        first = await asyncio.to_thread(shim, old)
        shims.append(first)
        await block(plane.api_url, kept, 3600)
        await eventually(blocked(first, kept))

        # 1. the shims are redeployed with both keys: the old key's directives still hold
        both = await asyncio.to_thread(shim, f"{old},{new}")
        shims.append(both)
        await eventually(blocked(both, kept))

        # 2. the control plane restarts with both keys and signs with the new one; meanwhile
        #    (while it is down) and after, the running shims keep enforcing
        await plane.stop()
        assert not first.guard(tenant_id=kept).allowed and not both.guard(tenant_id=kept).allowed
        plane = System(settings(f"{old},{new}", current=f"new{run}"), worker=False)
        await plane.start(ready_timeout=60)
        await block(plane.api_url, late, 3600)
        await eventually(blocked(both, late))
        assert not both.guard(tenant_id=kept).allowed

        # 3. the shims drop the old key: the block made before the rotation still holds
        only_new = await asyncio.to_thread(shim, new)
        shims.append(only_new)
        await eventually(blocked(only_new, late))
        await eventually(blocked(only_new, kept))
        # a directive signed with the removed key (a leaked old secret) is refused
        now = datetime.now(UTC)
        forged = Directive(directive_id=str(uuid.uuid4()), action=ActionKind.BLOCK, scope=Scope(tenant_id=f"x-{run}"),
                           created_at=now, expires_at=now + timedelta(hours=1), version=2**62)
        producer = await start_producer(bootstrap, linger_ms=5)
        try:
            refused = only_new.stats()["directives_refused"]
            await producer.send_and_wait(DIRECTIVES, key=forged.key().encode(), value=sign(
                forged.model_dump_json().encode(), topic=DIRECTIVES, keys=KeySet.parse(old)))
            await eventually(lambda: only_new.stats()["directives_refused"] > refused, timeout=30)
            assert only_new.guard(tenant_id=f"x-{run}").allowed
            # a shim still holding the old key obeys it (it consumes the topic on its own: that
            # only_new has refused the message does not mean both has read it yet)
            await eventually(blocked(both, f"x-{run}"))
        finally:
            await producer.stop()
    finally:
        for tel in shims:
            await asyncio.to_thread(tel.close, 10)
        await plane.stop()
