"""The shim with its in-memory transport: never raises, validates, keeps bad events, and
enforces directives it follows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from flyball.producers import Telemetry
from flyball.producers.transports import MemoryTransport
from flyball.schemas import DIRECTIVES, DLQ, EVENTS, ActionKind, Directive, Scope


@pytest.fixture
def shim() -> Iterator[tuple[Telemetry, MemoryTransport]]:
    transport = MemoryTransport()
    tel = Telemetry("checkout", transport=transport)
    yield tel, transport
    tel.close(timeout=5)


def test_emit_publishes_a_valid_event_keyed_by_tenant(shim: tuple[Telemetry, MemoryTransport]) -> None:
    tel, transport = shim
    tel.emit_llm_call(tenant_id="acme", feature="bot", provider="openai", model="gpt-4o-mini", input_tokens=12,
                      output_tokens=3, event_id="6f1c2a52-8a57-4a1e-b0b5-3f0a7f6f2a90")
    assert tel.flush(5)
    [(key, value)] = transport.topics[EVENTS]
    body = orjson.loads(value)
    assert key == b"acme" and body["event_id"] == "6f1c2a52-8a57-4a1e-b0b5-3f0a7f6f2a90"
    assert body["service"] == "checkout" and body["input_tokens"] == 12 and body["ts"].endswith("+00:00")


def test_invalid_event_goes_to_the_dlq_with_its_reason_and_never_raises(shim: tuple[Telemetry, MemoryTransport]) -> None:
    tel, transport = shim
    tel.emit_llm_call(tenant_id="acme", provider="openai", model="m", input_tokens=-1)  # type: ignore[arg-type]
    tel.emit_llm_call(tenant_id="acme", provider="openai", model="m", input_tokens="many")  # type: ignore[arg-type]
    assert tel.flush(5)
    assert EVENTS not in transport.topics
    reasons = [orjson.loads(v)["reason"] for _, v in transport.topics[DLQ]]
    assert len(reasons) == 2 and all("input_tokens" in r for r in reasons)
    assert tel.stats()["invalid"] == 2


def test_events_wait_while_the_transport_is_down_and_go_out_in_order(shim: tuple[Telemetry, MemoryTransport]) -> None:
    tel, transport = shim
    transport.down = True
    for i in range(5):
        tel.emit_tool_call(tenant_id="acme", tool_name=f"t{i}")
    assert not tel.flush(0.5)
    transport.down = False
    assert tel.flush(10)
    assert [orjson.loads(v)["tool_name"] for _, v in transport.topics[EVENTS]] == [f"t{i}" for i in range(5)]


def test_guard_enforces_a_followed_throttle_only_for_its_tenant(shim: tuple[Telemetry, MemoryTransport]) -> None:
    tel, transport = shim
    now = datetime.now(UTC)
    d = Directive(directive_id="d1", action=ActionKind.THROTTLE, scope=Scope(tenant_id="acme"), rate_per_s=0.1,
                  burst=1, created_at=now, expires_at=now + timedelta(minutes=5))
    transport.topics[DIRECTIVES] = [(b"tenant_id=acme", d.model_dump_json().encode())]
    deadline = time.monotonic() + 5
    while tel.stats()["directives_seen"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tel.guard(tenant_id="acme").allowed  # the burst of one
    refused = tel.guard(tenant_id="acme")
    assert not refused.allowed and refused.directive_ids == ("d1",) and 0 < (refused.retry_after_s or 0) <= 10
    assert tel.guard(tenant_id="globex").allowed
