"""The shim with its in-memory transport: never raises, validates, keeps bad events, and
enforces directives it follows."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import orjson
import pytest

from flyball.producers import AsyncTelemetry, ShimSettings, Staleness, Telemetry
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


# ------------------------------------------------------------------ outage: spill, replay, restart

def tool_names(transport: MemoryTransport) -> list[str]:
    return [orjson.loads(v)["tool_name"] for _, v in transport.topics.get(EVENTS, [])]


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_an_outage_spills_to_disk_and_replays_in_order(tmp_path: Path) -> None:
    transport = MemoryTransport()
    transport.down = True
    with Telemetry("svc", transport=transport, follow_directives=False, spill_dir=tmp_path, batch_size=7) as tel:
        for i in range(50):
            tel.emit_tool_call(tenant_id=f"t{i % 3}", tool_name=f"n{i}")
        assert wait_for(lambda: tel.stats()["spilled"] == 50)
        assert tel.stats()["buffered"] == 50 and list(tmp_path.glob("lane-0/*.seg"))
        transport.down = False
        assert tel.flush(10)
        stats = tel.stats()
    assert tool_names(transport) == [f"n{i}" for i in range(50)]
    assert (stats["sent"], stats["replayed"], stats["dropped"], stats["buffered"]) == (50, 50, 0, 0)


def test_a_partly_delivered_batch_spills_only_what_was_not_delivered(tmp_path: Path) -> None:
    transport = MemoryTransport()
    transport.down, transport.deliver_first = True, 4
    with Telemetry("svc", transport=transport, follow_directives=False, spill_dir=tmp_path, batch_size=10) as tel:
        for i in range(10):
            tel.emit_tool_call(tenant_id="acme", tool_name=f"n{i}")
        assert wait_for(lambda: tel.stats()["spilled"] == 6)
        transport.down = False
        assert tel.flush(10)
    assert tool_names(transport) == [f"n{i}" for i in range(10)]


def test_a_restarted_shim_replays_what_the_old_one_left_before_its_own_events(tmp_path: Path) -> None:
    down = MemoryTransport()
    down.down = True
    old = Telemetry("svc", transport=down, follow_directives=False, spill_dir=tmp_path)
    for i in range(20):
        old.emit_tool_call(tenant_id="acme", tool_name=f"old{i}")
    old.close(timeout=0.5)  # the broker is still down: everything stays on disk
    assert old.stats()["buffered"] == 20
    up = MemoryTransport()
    with Telemetry("svc", transport=up, follow_directives=False, spill_dir=tmp_path) as new:
        new.emit_tool_call(tenant_id="acme", tool_name="new0")
        assert new.flush(10)
        assert new.stats()["replayed"] >= 20
    assert tool_names(up) == [f"old{i}" for i in range(20)] + ["new0"]
    assert not list(tmp_path.glob("lane-0/*.seg"))


def test_beyond_the_spill_cap_events_are_dropped_and_counted(tmp_path: Path) -> None:
    transport = MemoryTransport()
    transport.down = True
    tel = Telemetry("svc", transport=transport, follow_directives=False, spill_dir=tmp_path, batch_size=10,
                    spill_max_bytes=4096)
    for i in range(200):
        tel.emit_tool_call(tenant_id="acme", tool_name=f"n{i}")
    assert wait_for(lambda: tel.stats()["spilled"] + tel.stats()["dropped"] == 200)
    stats = tel.stats()
    assert 0 < stats["spilled"] < 200 and stats["dropped"] == 200 - stats["spilled"]
    transport.down = False
    assert tel.flush(10)
    tel.close()
    assert tool_names(transport) == [f"n{i}" for i in range(stats["spilled"])]


def test_a_full_queue_drops_counts_and_never_blocks() -> None:
    transport = MemoryTransport()
    transport.down = True
    tel = Telemetry("svc", transport=transport, follow_directives=False, queue_size=5, spill_max_bytes=1)
    ids = [tel.emit_tool_call(tenant_id="acme", tool_name="x") for _ in range(10_000)]
    assert "" in ids and tel.stats()["dropped"] > 0
    tel.close(timeout=0.5)


def test_a_private_spill_directory_is_removed_when_it_is_empty_at_close() -> None:
    tel = Telemetry("svc", transport=MemoryTransport(), follow_directives=False)
    private = tel._private_spill
    assert private is not None and private.exists()
    tel.emit_tool_call(tenant_id="acme", tool_name="x")
    tel.close()
    assert not private.exists()


# ------------------------------------------------------------------ what goes on the wire


def test_emit_returns_the_event_id_and_hashes_user_and_prompt(shim: tuple[Telemetry, MemoryTransport]) -> None:
    tel, transport = shim
    event_id = tel.emit_llm_call(tenant_id="acme", provider="openai", model="m", user_id="alice@example.com",
                                 prompt_text="what is my balance?", completion_text="42", route="eu")
    assert tel.flush(5)
    [(_, value)] = transport.topics[EVENTS]
    assert b"alice" not in value and b"balance" not in value
    body = orjson.loads(value)
    assert body["event_id"] == event_id and len(event_id) == 36
    assert len(body["user_id_hash"]) == 64 and body["prompt_chars"] == 19 and body["completion_chars"] == 2
    assert body["route"] == "eu" and body["shim_version"] and body["environment"] == "production"


def test_event_ids_are_unique_lowercase_uuids() -> None:
    from flyball.producers.client import new_event_id

    ids = {new_event_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(str(uuid.UUID(i)) == i and uuid.UUID(i).version == 4 for i in list(ids)[:100])


def test_every_kind_can_be_emitted(shim: tuple[Telemetry, MemoryTransport]) -> None:
    tel, transport = shim
    target = tel.emit_llm_call(tenant_id="acme", provider="openai", model="m")
    tel.emit_tool_call(tenant_id="acme", tool_name="sql")
    tel.emit_safety_trigger(tenant_id="acme", filter_name="pii", category="pii", action="redacted")
    tel.emit_retrieval(tenant_id="acme", index_name="kb", results_count=0)
    tel.emit_feedback(tenant_id="acme", score=1, target_event_id=target, label="thumbs_up")
    assert tel.flush(5)
    kinds = [orjson.loads(v)["event_type"] for _, v in transport.topics[EVENTS]]
    assert kinds == ["llm_call", "tool_call", "safety_trigger", "retrieval", "feedback"]
    assert tel.stats()["invalid"] == 0


# ------------------------------------------------------------------ timing a call


class RateLimitError(Exception):
    pass


def test_track_llm_call_times_the_call_and_takes_anthropic_usage(shim: tuple[Telemetry, MemoryTransport]) -> None:
    tel, transport = shim
    response = NS(model="claude-sonnet-4-20250514", stop_reason="end_turn", usage=NS(
        input_tokens=20, output_tokens=150, cache_read_input_tokens=1000, cache_creation_input_tokens=300))
    with tel.track_llm_call(tenant_id="acme", provider="anthropic", model="claude-sonnet-4", feature="bot") as call:
        time.sleep(0.02)
        call.record(response)
    assert tel.flush(5)
    body = orjson.loads(transport.topics[EVENTS][0][1])
    assert (body["input_tokens"], body["cache_read_tokens"], body["cache_write_tokens"]) == (1320, 1000, 300)
    assert body["response_model"] == "claude-sonnet-4-20250514" and body["finish_reason"] == "end_turn"
    assert body["latency_ms"] >= 20 and body["status"] == "ok" and body["event_id"] == call.event_id


def test_track_llm_call_records_an_exception_as_its_status_and_reraises(
        shim: tuple[Telemetry, MemoryTransport]) -> None:
    tel, transport = shim
    with pytest.raises(RateLimitError), tel.track_llm_call(tenant_id="acme", provider="openai", model="m"):
        raise RateLimitError("slow down")
    assert tel.flush(5)
    body = orjson.loads(transport.topics[EVENTS][0][1])
    assert (body["status"], body["error_type"]) == ("rate_limited", "RateLimitError")


def test_track_as_a_decorator_records_openai_usage_of_sync_and_async_functions(
        shim: tuple[Telemetry, MemoryTransport]) -> None:
    tel, transport = shim
    usage = NS(prompt_tokens=100, completion_tokens=20, prompt_tokens_details=NS(cached_tokens=60),
               completion_tokens_details=NS(reasoning_tokens=5))

    @tel.track_llm_call(tenant_id="acme", provider="openai", model="gpt-4o")
    def call() -> NS:
        return NS(model="gpt-4o-2024-08-06", usage=usage, choices=[NS(finish_reason="stop")])

    @tel.track_llm_call(tenant_id="acme", provider="openai", model="gpt-4o")
    async def acall() -> NS:
        raise TimeoutError

    assert call().model == "gpt-4o-2024-08-06"
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(acall())
    assert tel.flush(5)
    first, second = (orjson.loads(v) for _, v in transport.topics[EVENTS])
    assert (first["input_tokens"], first["cache_read_tokens"], first["reasoning_tokens"]) == (100, 60, 5)
    assert (second["status"], second["error_type"]) == ("timeout", "TimeoutError")


async def test_async_telemetry_has_the_same_methods() -> None:
    transport = MemoryTransport()
    tel = await AsyncTelemetry.create("svc", transport=transport, follow_directives=False)
    async with tel:
        tel.emit_llm_call(tenant_id="acme", provider="openai", model="m", input_tokens=3)
        tel.emit_retrieval(tenant_id="acme", index_name="kb")
        async with tel.track_tool_call(tenant_id="acme", tool_name="sql"):
            await asyncio.sleep(0)
        assert tel.guard(tenant_id="acme").allowed
        assert await tel.flush(5)
        assert tel.stats()["sent"] == 3
    for name in ("emit_llm_call", "emit_tool_call", "emit_safety_trigger", "emit_retrieval", "emit_feedback",
                 "guard", "flush", "close", "track_llm_call", "stats"):
        assert hasattr(tel, name) and hasattr(Telemetry, name)


# ------------------------------------------------------------------ staleness and HTTP polling


def test_guard_fails_closed_for_a_high_risk_tenant_when_the_view_goes_stale() -> None:
    transport = MemoryTransport()
    tel = Telemetry("svc", transport=transport,
                    staleness=Staleness(max_age_s=0.3, high_risk=({"tenant_id": "bank"},)))
    try:
        assert wait_for(lambda: transport.synced_at is not None)
        assert tel.guard(tenant_id="bank").allowed
        transport.down = True  # the follower stops hearing from the broker
        assert wait_for(lambda: not tel.guard(tenant_id="bank").allowed, timeout=3)
        assert tel.guard(tenant_id="acme").allowed  # fail-open elsewhere
        transport.down = False
        assert wait_for(lambda: tel.guard(tenant_id="bank").allowed, timeout=3)
    finally:
        tel.close(timeout=2)


class _DirectivesAPI(BaseHTTPRequestHandler):
    directives: list[dict[str, Any]] = []
    seen_auth: list[str] = []

    def do_GET(self) -> None:  # http.server's naming
        self.seen_auth.append(self.headers.get("Authorization", ""))
        body = orjson.dumps(self.directives) if self.path == "/v1/directives" else b"{}"
        self.send_response(200 if self.path == "/v1/directives" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


def test_http_polling_takes_over_when_the_directive_topic_is_unreachable() -> None:
    now = datetime.now(UTC)
    d = Directive(directive_id="block-1", action=ActionKind.BLOCK, scope=Scope(tenant_id="acme"),
                  created_at=now, expires_at=now + timedelta(minutes=5))
    _DirectivesAPI.directives = [d.model_dump(mode="json")]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DirectivesAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    transport = MemoryTransport()
    transport.down = True  # Kafka unreachable: the follower never syncs
    settings = ShimSettings(shim_poll_interval_s=0.1)
    tel = Telemetry("svc", transport=transport, directives_url=f"http://127.0.0.1:{server.server_port}",
                    api_key="svc-key", settings=settings)
    try:
        assert wait_for(lambda: not tel.guard(tenant_id="acme").allowed, timeout=5)
        assert tel.guard(tenant_id="globex").allowed
        assert "Bearer svc-key" in _DirectivesAPI.seen_auth
    finally:
        tel.close(timeout=2)
        server.shutdown()
        server.server_close()


def test_raw_user_id_and_prompt_text_never_reach_the_dlq_or_the_logs(shim: tuple[Telemetry, MemoryTransport],
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    tel, transport = shim
    with caplog.at_level("DEBUG", logger="flyball"):
        tel.emit_llm_call(tenant_id="acme", provider="openai", model="m", input_tokens=-1,
                          user_id="alice@example.com", prompt_text="my card number is 4242")
        tel.emit_llm_call(tenant_id="acme", provider="openai", model="m", ts=1e300,
                          user_id="bob@example.com", prompt_text="my pin is 1234")
        assert tel.flush(5)
    dead = b"".join(v for _, v in transport.topics[DLQ])
    assert len(transport.topics[DLQ]) == 2
    for secret in (b"alice", b"4242", b"bob", b"1234"):
        assert secret not in dead
        assert secret.decode() not in caplog.text


def test_a_forked_worker_draws_new_event_ids() -> None:
    import os

    from flyball.producers.client import new_event_id

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: e.g. a pre-forking web server's worker
        os.write(write, new_event_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    parent = new_event_id()
    assert uuid.UUID(child) and child[:24] != parent[:24]


class _SlowAck(MemoryTransport):
    """A broker whose first acknowledgement waits until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.sizes: list[int] = []

    async def send_batch(self, topic: str, records: Any) -> None:
        self.sizes.append(len(records))
        while not self.release.is_set():
            await asyncio.sleep(0.005)
        await super().send_batch(topic, records)


def test_events_queued_while_a_send_waits_for_its_ack_go_out_in_one_send() -> None:
    """One send per small batch (each waiting for the producer's linger and the broker's ack)
    delivered about 250 events/s on a loaded machine: the chaos soak's shim fell behind its
    1,000 events/s and dropped what overflowed its queue (docs/RELIABILITY.md, "The soak")."""
    transport = _SlowAck()
    tel = Telemetry("checkout", transport=transport, follow_directives=False, batch_size=2_000)
    try:
        tel.emit_tool_call(tenant_id="acme", tool_name="first")
        deadline = time.monotonic() + 5
        while not transport.sizes and time.monotonic() < deadline:
            time.sleep(0.005)
        for burst in range(10):  # arrive in several small batches while the first send waits
            for i in range(50):
                tel.emit_tool_call(tenant_id="acme", tool_name=f"t{burst}-{i}")
            time.sleep(0.02)
        while tel._queue and time.monotonic() < deadline:  # intake has encoded every event
            time.sleep(0.005)
        transport.release.set()
        assert tel.flush(5)
        assert transport.sizes == [1, 500]
        assert [orjson.loads(v)["tool_name"] for _, v in transport.topics[EVENTS]] == (
            ["first"] + [f"t{b}-{i}" for b in range(10) for i in range(50)])
    finally:
        tel.close(timeout=5)
