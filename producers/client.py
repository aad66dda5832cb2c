"""The shim: ``Telemetry`` (threaded, for sync code) and ``AsyncTelemetry`` (asyncio).

On the caller's thread an ``emit_*`` only builds a dict and appends it to a bounded deque;
it never blocks and never raises. A background thread runs an asyncio loop that validates
events, publishes them in batches through a ``Transport`` (idempotent Kafka producer,
``acks=all``), and follows ``flyball.directives.v1`` into a local ``DirectiveView``.
``guard()`` answers from that view with no network I/O.

An event that fails validation is not dropped: it goes to ``flyball.events.dlq.v1`` with its
reason, and is counted as ``invalid``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from pydantic_settings import BaseSettings, SettingsConfigDict

from flyball import __version__
from flyball.schemas import DIRECTIVES, DLQ, EVENTS, Directive, InvalidEvent, parse_event

from .enforcement import Decision, DirectiveView, enforce
from .transports import KafkaTransport, Transport, TransportError

log = structlog.get_logger(__name__)


class ShimSettings(BaseSettings):
    """Shim configuration from ``FLYBALL_*`` environment; arguments override."""

    model_config = SettingsConfigDict(env_prefix="FLYBALL_", extra="ignore", frozen=True)

    kafka_bootstrap: str = "127.0.0.1:9092"
    environment: str = "production"
    shim_queue_size: int = 100_000
    shim_batch_size: int = 2_000


@dataclass(slots=True)
class Counters:
    enqueued: int = 0
    sent: int = 0
    invalid: int = 0
    dropped: int = 0
    send_failures: int = 0
    directives_seen: int = 0


class Telemetry:
    """Emit events and enforce directives from a product service. Thread-safe."""

    def __init__(self, service: str = "", *, bootstrap: str | None = None, environment: str | None = None,
                 transport: Transport | None = None, follow_directives: bool = True,
                 queue_size: int | None = None, settings: ShimSettings | None = None) -> None:
        cfg = settings or ShimSettings()
        self.service = service
        self.environment = environment or cfg.environment
        self._transport: Transport = transport or KafkaTransport(bootstrap or cfg.kafka_bootstrap)
        self._queue: deque[dict[str, Any]] = deque()
        self._queue_size = queue_size or cfg.shim_queue_size
        self._batch_size = cfg.shim_batch_size
        self._enqueued = itertools.count(1)
        self._last_enqueued = 0
        self._done = 0  # sent + invalid + dropped, written by the sender thread only
        self.counters = Counters()
        self.view = DirectiveView()
        self._follow = follow_directives
        self._closing = threading.Event()
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="flyball-shim", daemon=True)
        self._thread.start()
        self._started.wait(timeout=5)

    # ------------------------------------------------------------------ emit (caller thread)
    def emit_llm_call(self, *, tenant_id: str, provider: str, model: str, feature: str = "",
                      input_tokens: int = 0, output_tokens: int = 0, cache_read_tokens: int = 0,
                      cache_write_tokens: int = 0, reasoning_tokens: int = 0, latency_ms: float = 0.0,
                      status: str = "ok", **fields: Any) -> None:
        self._emit("llm_call", tenant_id, feature, fields, provider=provider, model=model,
                   input_tokens=input_tokens, output_tokens=output_tokens,
                   cache_read_tokens=cache_read_tokens, cache_write_tokens=cache_write_tokens,
                   reasoning_tokens=reasoning_tokens, latency_ms=latency_ms, status=status)

    def emit_tool_call(self, *, tenant_id: str, tool_name: str, feature: str = "", status: str = "ok",
                       latency_ms: float = 0.0, **fields: Any) -> None:
        self._emit("tool_call", tenant_id, feature, fields, tool_name=tool_name, status=status, latency_ms=latency_ms)

    def emit_safety_trigger(self, *, tenant_id: str, filter_name: str, category: str, feature: str = "",
                            action: str = "flagged", severity: str = "medium", **fields: Any) -> None:
        self._emit("safety_trigger", tenant_id, feature, fields, filter_name=filter_name, category=category,
                   action=action, severity=severity)

    def emit_retrieval(self, *, tenant_id: str, index_name: str, feature: str = "", status: str = "ok",
                       results_count: int = 0, latency_ms: float = 0.0, **fields: Any) -> None:
        self._emit("retrieval", tenant_id, feature, fields, index_name=index_name, status=status,
                   results_count=results_count, latency_ms=latency_ms)

    def emit_feedback(self, *, tenant_id: str, score: float, target_event_id: str = "", feature: str = "",
                      **fields: Any) -> None:
        self._emit("feedback", tenant_id, feature, fields, score=score, target_event_id=target_event_id)

    def _emit(self, event_type: str, tenant_id: str, feature: str, fields: dict[str, Any], **body: Any) -> None:
        try:
            if len(self._queue) >= self._queue_size:
                self.counters.dropped += 1
                self._last_enqueued = next(self._enqueued)
                self._done += 1
                return
            ts = fields.pop("ts", None)
            event_id = fields.pop("event_id", None)
            body.update(fields)
            body["event_type"] = event_type
            body["event_id"] = str(event_id) if event_id is not None else str(uuid.uuid4())
            body["ts"] = ts if ts is not None else datetime.now(UTC)
            body["tenant_id"] = tenant_id
            body["feature"] = feature
            body["service"] = self.service
            body["environment"] = self.environment
            body["shim_version"] = __version__
            self._queue.append(body)
            self._last_enqueued = next(self._enqueued)
        except Exception:  # noqa: BLE001 - the shim never raises into product code
            self.counters.invalid += 1

    # ------------------------------------------------------------------ guard (caller thread)
    def guard(self, *, tenant_id: str, feature: str | None = None, model: str | None = None,
              tool: str | None = None) -> Decision:
        try:
            return enforce(self.view, tenant_id=tenant_id, feature=feature, model=model, tool=tool, now=time.time())
        except Exception:  # noqa: BLE001 - fail open, never raise into product code
            return Decision(allowed=True, model=model, reason="guard error")

    # ------------------------------------------------------------------ lifecycle
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything emitted so far is delivered (or counted invalid/dropped)."""
        target = self._last_enqueued
        deadline = time.monotonic() + timeout
        while self._done < target:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._closing.set()
        self._thread.join(timeout=timeout)

    def stats(self) -> dict[str, int]:
        return {**asdict(self.counters), "buffered": len(self._queue)}

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ background thread
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._started.set()
        tasks = [asyncio.create_task(self._sender())]
        if self._follow:
            tasks.append(asyncio.create_task(self._follower()))
        while not self._closing.is_set():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0)
        for task in tasks[1:]:
            task.cancel()
        self._stop_sender = True
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self._transport.stop()
        except Exception:  # noqa: BLE001
            pass

    _stop_sender = False

    async def _sender(self) -> None:
        backoff = 0.1
        pending: list[tuple[bytes | None, bytes]] = []
        dead: list[tuple[bytes | None, bytes]] = []
        while True:
            if not pending and not dead:
                if not self._queue:
                    if self._stop_sender:
                        return
                    await asyncio.sleep(0.005)
                    continue
                now = datetime.now(UTC)
                while self._queue and len(pending) + len(dead) < self._batch_size:
                    body = self._queue.popleft()
                    try:
                        event = parse_event(body, now=now)
                    except Exception as exc:  # noqa: BLE001 - InvalidEvent, or a validator bug: keep it, never crash
                        reason = exc.reason if isinstance(exc, InvalidEvent) else f"event: could not be validated ({type(exc).__name__})"
                        dead.append((None, orjson.dumps({"reason": reason, "original": _safe(body),
                                                         "dead_lettered_at": now.isoformat(), "source": "shim"})))
                        log.warning("event_invalid", reason=reason, event_type=body.get("event_type"))
                        continue
                    pending.append((event.tenant_id.encode(), orjson.dumps(body, default=str)))
            try:
                if pending:
                    await self._transport.send_batch(EVENTS, pending)
                if dead:
                    await self._transport.send_batch(DLQ, dead)
            except (TransportError, OSError) as exc:
                self.counters.send_failures += 1
                log.warning("send_failed", error=str(exc)[:200], retry_in_s=backoff, batch=len(pending))
                if self._stop_sender and self._closing.is_set() and backoff > 2:
                    self.counters.dropped += len(pending) + len(dead)
                    self._done += len(pending) + len(dead)
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            self.counters.sent += len(pending)
            self.counters.invalid += len(dead)
            self._done += len(pending) + len(dead)
            pending, dead = [], []

    async def _follower(self) -> None:
        while not self._closing.is_set():
            try:
                async for values in self._transport.follow(DIRECTIVES):
                    now = time.time()
                    for value in values:
                        try:
                            directive = Directive.model_validate_json(value)
                        except ValueError as exc:
                            log.warning("directive_invalid", error=str(exc)[:200])
                            continue
                        self.view.apply(directive, now=now)
                        self.counters.directives_seen += 1
                    self.view.updated_at = now
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep following; the view keeps its last state
                log.warning("directive_follow_failed", error=str(exc)[:200])
                await asyncio.sleep(1.0)


def _safe(body: dict[str, Any]) -> str:
    try:
        return orjson.dumps(body, default=str).decode()
    except TypeError:
        return repr(body)[:4096]


class AsyncTelemetry:
    """The same API for asyncio code: emits and ``guard`` are synchronous and non-blocking;
    ``flush`` and ``close`` are awaitable."""

    def __init__(self, service: str = "", **kwargs: Any) -> None:
        self._sync = Telemetry(service, **kwargs)
        for name in ("emit_llm_call", "emit_tool_call", "emit_safety_trigger", "emit_retrieval",
                     "emit_feedback", "guard", "stats"):
            setattr(self, name, getattr(self._sync, name))

    @property
    def counters(self) -> Counters:
        return self._sync.counters

    async def flush(self, timeout: float = 10.0) -> bool:
        return await asyncio.to_thread(self._sync.flush, timeout)

    async def close(self, timeout: float = 10.0) -> None:
        await asyncio.to_thread(self._sync.close, timeout)
