"""Directives and alerts are authenticated on a real broker: a shim holding the signing keys
obeys what the control plane publishes and ignores forged or replayed messages on the directive
topic; a forged alert makes automation do nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from flyball.control_plane.policy import Policies, Policy
from flyball.control_plane.runtime import System
from flyball.control_plane.settings import Settings
from flyball.producers import Telemetry
from flyball.producers.client import ShimSettings
from flyball.producers.transports.kafka import start_producer
from flyball.schemas import ALERTS, DIRECTIVES, ActionKind, Alert, AlertKind, Directive, DirectiveState, Scope
from tests.conftest import free_port
from tests.integration._helpers import eventually

ADMIN = "test-admin-key"


@pytest.fixture
async def system(bootstrap: str, tmp_path: Path) -> AsyncIterator[System]:
    run = uuid.uuid4().hex[:8]
    settings = Settings(kafka_bootstrap=bootstrap, data_dir=tmp_path, api_port=free_port(), admin_api_key=ADMIN,
                        worker_group=f"worker-{run}", control_group=f"control-{run}",
                        signing_keys=SecretStr(f"k{run}:{uuid.uuid4().hex}"))
    policies = Policies(policies=(Policy(policy_id="throttle", alert_kind=AlertKind.COST_SPIKE,
                                         action=ActionKind.THROTTLE, ttl_s=60, rate_per_s=0.2, burst=1),))
    sys_ = System(settings, policies=policies, worker=False)
    await sys_.start(ready_timeout=60)
    try:
        yield sys_
    finally:
        await sys_.stop()


async def test_forged_and_replayed_control_messages_are_ignored(system: System, bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    victim, other, alerted = f"victim-{run}", f"other-{run}", f"alerted-{run}"
    keys = system.settings.signing_keys
    tel = await asyncio.to_thread(Telemetry, "forged", bootstrap=bootstrap, settings=ShimSettings(signing_keys=keys))
    headers = {"Authorization": f"Bearer {ADMIN}"}
    producer = await start_producer(bootstrap, linger_ms=5)
    try:
        async with httpx.AsyncClient(base_url=system.api_url, headers=headers, timeout=10) as api:
            created = (await api.post("/v1/directives", json={"action": "block", "scope": {"tenant_id": victim},
                                                              "ttl_s": 600})).json()["directive"]
            await eventually(lambda: not tel.guard(tenant_id=victim).allowed)

            now = datetime.now(UTC)
            # a forged "expired" of the real block, with a higher version: must not lift it
            lifted = Directive.model_validate(created).model_copy(
                update={"state": DirectiveState.EXPIRED, "version": created["version"] + 10})
            # a forged block of another tenant
            forged = Directive(directive_id=str(uuid.uuid4()), action=ActionKind.BLOCK, scope=Scope(tenant_id=other),
                               created_at=now, expires_at=now + timedelta(days=365), version=2**62)
            # a forged alert that a policy would act on
            alert = Alert(alert_id=str(uuid.uuid4()), kind=AlertKind.COST_SPIKE, scope=Scope(tenant_id=alerted),
                          severity="critical", metric="cost_usd", observed="100", baseline="1", threshold="2",
                          window_s=60, first_seen=now, last_seen=now)
            for d in (lifted, forged):
                await producer.send_and_wait(DIRECTIVES, key=d.key().encode(), value=d.model_dump_json().encode())
            await producer.send_and_wait(ALERTS, key=alert.key().encode(), value=alert.model_dump_json().encode())

            await eventually(lambda: tel.stats()["directives_refused"] >= 2, timeout=30)
            await asyncio.sleep(2.0)  # time for the control loop to (not) act on the forged alert
            assert not tel.guard(tenant_id=victim).allowed
            assert tel.guard(tenant_id=other).allowed
            active = (await api.get("/v1/directives")).json()
            assert {d["scope"].get("tenant_id") for d in active} & {victim, other, alerted} == {victim}

            # a real revert is obeyed
            await api.post(f"/v1/directives/{created['directive_id']}/revert")
            await eventually(lambda: tel.guard(tenant_id=victim).allowed)
    finally:
        await producer.stop()
        await asyncio.to_thread(tel.close, 10)
