"""The closed loop end to end on a real broker, real chDB and real HTTP, through the public
contract only: shim -> Kafka -> worker -> ClickHouse/alerts -> control plane -> directive ->
shim.guard; spend over HTTP; invalid input in the DLQ; the worker keeps running."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from flyball.control_plane.policy import Policies, Policy
from flyball.control_plane.runtime import System
from flyball.control_plane.settings import Settings
from flyball.producers import Telemetry
from flyball.schemas import DLQ, EVENTS, ActionKind, AlertKind
from tests.conftest import free_port
from tests.integration._helpers import eventually

ADMIN = "test-admin-key"
# Rates written out here from the providers' price pages, independently of the pricing code.
MINI_IN, MINI_CACHED, MINI_OUT = Decimal("0.00000015"), Decimal("0.000000075"), Decimal("0.0000006")
GPT4O_IN, GPT4O_OUT = Decimal("0.0000025"), Decimal("0.00001")


def mini_cost(inp: int, out: int, cached: int) -> Decimal:
    return (inp - cached) * MINI_IN + cached * MINI_CACHED + out * MINI_OUT


@pytest.fixture
async def system(bootstrap: str, tmp_path: Path) -> AsyncIterator[System]:
    run = uuid.uuid4().hex[:8]
    settings = Settings(kafka_bootstrap=bootstrap, data_dir=tmp_path, api_port=free_port(), admin_api_key=ADMIN,
                        worker_group=f"worker-{run}", control_group=f"control-{run}")
    policies = Policies(policies=(Policy(policy_id="throttle", alert_kind=AlertKind.COST_SPIKE,
                                         action=ActionKind.THROTTLE, ttl_s=60, rate_per_s=0.2, burst=1),))
    sys_ = System(settings, policies=policies)
    await sys_.start(ready_timeout=60)
    try:
        yield sys_
    finally:
        await sys_.stop()



async def test_cost_spike_closes_the_loop_only_for_that_tenant(system: System, bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    calm, spiky = f"calm-{run}", f"spiky-{run}"
    tel = await asyncio.to_thread(Telemetry, "e2e", bootstrap=bootstrap)
    expected = {calm: Decimal(0), spiky: Decimal(0)}
    counts = {calm: 0, spiky: 0}
    try:
        # 80 minutes of baseline history in event time (the detectors' cold start is an hour), then
        # a spike over the last 15 seconds
        now = datetime.now(UTC)
        for i, back in enumerate(range(4800, 15, -3)):
            for tenant in (calm, spiky):
                inp, out, cached = 1000 + i, 200 + i % 7, 100
                tel.emit_llm_call(tenant_id=tenant, feature="chat", provider="openai", model="gpt-4o-mini",
                                  input_tokens=inp, output_tokens=out, cache_read_tokens=cached,
                                  ts=now - timedelta(seconds=back))
                expected[tenant] += mini_cost(inp, out, cached)
                counts[tenant] += 1
        for i in range(30):
            tel.emit_llm_call(tenant_id=spiky, feature="batch", provider="openai", model="gpt-4o",
                              input_tokens=40_000, output_tokens=3_000, ts=now - timedelta(seconds=15 - i / 2))
            expected[spiky] += 40_000 * GPT4O_IN + 3_000 * GPT4O_OUT
            counts[spiky] += 1
        assert await asyncio.to_thread(tel.flush, 30)

        # invalid input straight onto the topic: it must land in the DLQ with a reason
        bad_id = str(uuid.uuid4())
        bad = orjson.dumps({"schema_version": 1, "event_type": "llm_call", "event_id": bad_id, "ts": now.isoformat(), "tenant_id": calm,
                            "provider": "openai", "model": "gpt-4o-mini", "input_tokens": -5})
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(EVENTS, bad, key=calm.encode())
            await producer.send_and_wait(EVENTS, b"\xff\xfenot json", key=calm.encode())
        finally:
            await producer.stop()

        async def refused() -> bool:
            first, second = tel.guard(tenant_id=spiky), tel.guard(tenant_id=spiky)
            return not (first.allowed and second.allowed)

        await eventually(refused)
        decision = tel.guard(tenant_id=spiky)
        assert not decision.allowed and decision.retry_after_s and decision.retry_after_s > 0
        assert decision.reason == "throttled"
        assert all(tel.guard(tenant_id=calm).allowed for _ in range(20))

        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=system.api_url, headers=headers, timeout=10) as api:
            directives = (await api.get("/v1/directives")).json()
            mine = [d for d in directives if d["scope"].get("tenant_id") in (calm, spiky)]
            assert [(d["action"], d["scope"]) for d in mine] == [("throttle", {"tenant_id": spiky})]

            async def spend_of(tenant: str) -> dict | None:  # type: ignore[type-arg]
                body = (await api.get("/v1/spend", params={"tenant_id": tenant})).json()
                return body if body["events"] == counts[tenant] else None

            for tenant in (calm, spiky):
                body = await eventually(lambda t=tenant: spend_of(t))
                assert Decimal(body["total_usd"]) == expected[tenant], tenant

            alerts = (await api.get("/v1/alerts", params={"kind": "cost_spike"})).json()
            assert {a["scope"]["tenant_id"] for a in alerts} & {calm, spiky} == {spiky}

            actions = (await api.get("/v1/actions")).json()
            applied = [a for a in actions if a["decision"] == "applied" and a["tenant_id"] == spiky]
            assert len(applied) == 1 and applied[0]["evidence"]["kind"] == "cost_spike"

        dlq = await _read_dlq(bootstrap, lambda rec: bad_id in rec.get("original", "")
                              or "not json" in rec.get("original", ""), 2)
        reasons = sorted(r["reason"] for r in dlq)
        assert any("input_tokens" in r for r in reasons), reasons
        assert any("UTF-8" in r or "JSON" in r for r in reasons), reasons

        # the worker survived the bad input and keeps pricing events
        tel.emit_llm_call(tenant_id=calm, provider="openai", model="gpt-4o-mini", input_tokens=10, output_tokens=10)
        counts[calm] += 1
        expected[calm] += mini_cost(10, 10, 0)
        assert await asyncio.to_thread(tel.flush, 30)
        async with httpx.AsyncClient(base_url=system.api_url, headers=headers, timeout=10) as api:
            assert (await api.get("/healthz")).json()["worker_ready"] is True
            body = await eventually(lambda: spend_of_tenant(api, calm, counts[calm]))
            assert Decimal(body["total_usd"]) == expected[calm]
    finally:
        await asyncio.to_thread(tel.close, 10)


async def spend_of_tenant(api: httpx.AsyncClient, tenant: str, count: int) -> dict | None:  # type: ignore[type-arg]
    body = (await api.get("/v1/spend", params={"tenant_id": tenant})).json()
    return body if body["events"] == count else None


async def _read_dlq(bootstrap: str, match, want: int, timeout: float = 30.0) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    consumer = AIOKafkaConsumer(DLQ, bootstrap_servers=bootstrap, group_id=f"dlq-{uuid.uuid4().hex[:8]}",
                                auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=6000,
                                heartbeat_interval_ms=1000)
    await consumer.start()
    found: list[dict] = []  # type: ignore[type-arg]
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(found) < want:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                for rec in recs:
                    body = orjson.loads(rec.value)
                    if match(body):
                        found.append(body)
    finally:
        await consumer.stop()
    assert len(found) >= want, found
    return found
