"""The shim: ``Telemetry`` (threaded, for sync code) and ``AsyncTelemetry`` (asyncio).

On the caller's thread an ``emit_*`` only builds a dict and appends it to a bounded deque;
it never blocks and never raises. A background thread runs an asyncio loop with:

- *intake*: validates queued events (an invalid one goes to ``flyball.events.dlq.v1`` with
  its reason and is counted ``invalid``), encodes them, and hands batches to delivery; while
  the broker is unreachable it appends them to the on-disk spill log instead;
- *delivery*: sends batches through the ``Transport`` (idempotent Kafka producer,
  ``acks=all``, zstd). A batch that fails is spilled (fsync'd) and the shim enters spill
  mode: everything new goes behind it on disk, and the log is replayed oldest first until it
  is empty, so per-tenant order holds across an outage and across a process restart (a new
  shim on the same spill directory replays what the old one left);
- *follower*: follows ``flyball.directives.v1`` into a local ``DirectiveView`` (HTTP
  ``GET /v1/directives`` polling is the fallback when the view goes stale).

``guard()`` answers from that view with no network I/O.

Counters (``stats()``): ``sent`` (events delivered), ``buffered`` (waiting in memory or on
disk), ``spilled`` (records written to disk), ``replayed`` (delivered from disk),
``dropped`` (lost: in-memory queue full, or spill log at its size cap), ``invalid``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import hashlib
import hmac
import inspect
import itertools
import os
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
import structlog
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from flyball import __version__
from flyball.schemas import DIRECTIVES, DLQ, EVENTS, Directive, InvalidEvent, parse_event

from .adapters import finish_reason_of, response_model_of, status_of, usage_of
from .buffer import Record, SpillLocked, SpillLog, open_lane
from .enforcement import Decision, DirectiveView, Staleness, decide
from .transports import KafkaTransport, Transport, TransportError

log = structlog.get_logger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


class ShimSettings(BaseSettings):
    """Shim configuration from ``FLYBALL_*`` environment; arguments override."""

    model_config = SettingsConfigDict(env_prefix="FLYBALL_", extra="ignore", frozen=True)

    kafka_bootstrap: str = "127.0.0.1:9092"
    environment: str = "production"
    shim_queue_size: int = 100_000
    shim_batch_size: int = 2_000
    # where batches wait while the broker is down; unset: a private temporary directory
    # (survives an outage, not a restart). Set it in production.
    shim_spill_dir: Path | None = None
    shim_spill_max_bytes: int = 256 * 1024 * 1024
    shim_send_timeout_s: float = 10.0
    shim_stale_after_s: float = 300.0
    shim_high_risk_scopes: list[dict[str, str]] = []
    shim_directives_url: str | None = None  # base URL of the flyball API, for polling
    shim_api_key: SecretStr | None = None
    shim_poll_interval_s: float = 5.0
    shim_user_id_salt: SecretStr = SecretStr("")


@dataclass(slots=True)
class Counters:
    enqueued: int = 0
    sent: int = 0
    spilled: int = 0
    replayed: int = 0
    dropped: int = 0
    invalid: int = 0
    send_failures: int = 0
    directives_seen: int = 0


# Event ids: UUIDv4-shaped and unique per process: 72 random bits drawn at import (and again
# in a forked child) + a 48-bit counter from a random 47-bit start, so it cannot wrap within a
# process's life. About 10x cheaper than ``str(uuid.uuid4())`` on the caller's thread.
_ID_PREFIX = ""
_ID_COUNTER = itertools.count()


def _reset_event_ids() -> None:
    global _ID_PREFIX, _ID_COUNTER
    r = secrets.randbits(72)
    variant = "89ab"[r & 3]
    r >>= 2
    _ID_PREFIX = f"{r >> 40:08x}-{(r >> 24) & 0xFFFF:04x}-4{(r >> 12) & 0xFFF:03x}-{variant}{r & 0xFFF:03x}-"
    _ID_COUNTER = itertools.count(secrets.randbits(47))


def new_event_id() -> str:
    return "%s%012x" % (_ID_PREFIX, next(_ID_COUNTER))  # noqa: UP031 - the fastest formatting here


_reset_event_ids()
os.register_at_fork(after_in_child=_reset_event_ids)


class Telemetry:
    """Emit events and enforce directives from a product service. Thread-safe."""

    def __init__(self, service: str = "", *, bootstrap: str | None = None, environment: str | None = None,
                 transport: Transport | None = None, follow_directives: bool = True,
                 queue_size: int | None = None, batch_size: int | None = None,
                 spill_dir: str | os.PathLike[str] | None = None, spill_max_bytes: int | None = None,
                 staleness: Staleness | None = None, directives_url: str | None = None,
                 api_key: str | None = None, settings: ShimSettings | None = None) -> None:
        cfg = settings or ShimSettings()
        self.service = service
        self.environment = environment or cfg.environment
        self._transport: Transport = transport or KafkaTransport(
            bootstrap or cfg.kafka_bootstrap, request_timeout_ms=int(cfg.shim_send_timeout_s * 1000))
        self._queue: deque[dict[str, Any]] = deque()
        self._queue_size = queue_size or cfg.shim_queue_size
        self._batch_size = batch_size or cfg.shim_batch_size
        self._enqueued = itertools.count(1)
        self._last_enqueued = 0
        self._drop_lock = threading.Lock()
        self._dropped_here = 0  # queue-full drops (caller threads, under the lock)
        self._done = 0  # own records delivered / dropped by the sender thread
        self.counters = Counters()
        # a shim that does not follow directives has no view to go stale
        self.staleness: Staleness | None = (staleness or Staleness(cfg.shim_stale_after_s,
                                                                   tuple(cfg.shim_high_risk_scopes))
                                            if follow_directives else None)
        self.view = DirectiveView(created_at=time.time())
        self._follow = follow_directives
        self._directives_url = directives_url or cfg.shim_directives_url
        self._api_key = api_key or (cfg.shim_api_key.get_secret_value() if cfg.shim_api_key else None)
        self._poll_interval = cfg.shim_poll_interval_s
        self._salt = cfg.shim_user_id_salt.get_secret_value().encode()
        self._spill_root = Path(spill_dir) if spill_dir is not None else cfg.shim_spill_dir
        self._spill_max_bytes = spill_max_bytes or cfg.shim_spill_max_bytes
        self._private_spill: Path | None = None
        self._spill: SpillLog | None = None
        self._inherited = 0  # records a previous process left in the spill log
        self._outbox: deque[list[Record]] = deque()
        self._inflight: list[Record] | None = None
        self._degraded = False
        self._stopping = False
        self._closed = False
        self._closing = threading.Event()
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open_spill()
        self._thread = threading.Thread(target=self._run, name="flyball-shim", daemon=True)
        self._thread.start()
        self._started.wait(timeout=5)
        ref = weakref.ref(self)

        def at_exit() -> None:  # what is still queued at exit goes out, or to disk
            tel = ref()
            if tel is not None:
                tel.close(timeout=2)

        self._atexit = at_exit
        atexit.register(at_exit)

    def _open_spill(self) -> None:
        try:
            if self._spill_root is None:
                self._private_spill = Path(tempfile.mkdtemp(prefix="flyball-spill-"))
                self._spill = SpillLog(self._private_spill, max_bytes=self._spill_max_bytes)
            else:
                self._spill = open_lane(self._spill_root, max_bytes=self._spill_max_bytes)
        except (OSError, SpillLocked) as exc:
            log.warning("spill_unavailable", error=str(exc)[:200])
            self._spill = None
            return
        self._inherited = self._spill.pending_records
        if not self._spill.empty:
            self._degraded = True  # replay what a previous process left before anything new
            log.info("spill_replay_pending", records=self._inherited, directory=str(self._spill.directory))

    # ------------------------------------------------------------------ emit (caller thread)
    def emit_llm_call(self, *, tenant_id: str, provider: str, model: str, feature: str = "",
                      input_tokens: int = 0, output_tokens: int = 0, cache_read_tokens: int = 0,
                      cache_write_tokens: int = 0, reasoning_tokens: int = 0, latency_ms: float = 0.0,
                      status: str = "ok", **fields: Any) -> str:
        """Queue one ``llm_call`` event; returns its ``event_id`` ("" if it was dropped).

        Besides the contract's fields, ``user_id=`` is hashed (HMAC-SHA256 with
        ``FLYBALL_SHIM_USER_ID_SALT``) into ``user_id_hash``, and ``prompt_text=`` /
        ``completion_text=`` become ``prompt_hash`` / ``prompt_chars`` / ``completion_chars``,
        in the background thread: raw values never leave the process."""
        body = {"event_type": "llm_call", "tenant_id": tenant_id, "feature": feature, "provider": provider,
                "model": model, "input_tokens": input_tokens, "output_tokens": output_tokens,
                "cache_read_tokens": cache_read_tokens, "cache_write_tokens": cache_write_tokens,
                "reasoning_tokens": reasoning_tokens, "latency_ms": latency_ms, "status": status}
        if fields:
            body.update(fields)
        return self._put(body)

    def emit_tool_call(self, *, tenant_id: str, tool_name: str, feature: str = "", status: str = "ok",
                       latency_ms: float = 0.0, **fields: Any) -> str:
        body = {"event_type": "tool_call", "tenant_id": tenant_id, "feature": feature, "tool_name": tool_name,
                "status": status, "latency_ms": latency_ms}
        if fields:
            body.update(fields)
        return self._put(body)

    def emit_safety_trigger(self, *, tenant_id: str, filter_name: str, category: str, feature: str = "",
                            action: str = "flagged", severity: str = "medium", **fields: Any) -> str:
        body = {"event_type": "safety_trigger", "tenant_id": tenant_id, "feature": feature,
                "filter_name": filter_name, "category": category, "action": action, "severity": severity}
        if fields:
            body.update(fields)
        return self._put(body)

    def emit_retrieval(self, *, tenant_id: str, index_name: str, feature: str = "", status: str = "ok",
                       results_count: int = 0, latency_ms: float = 0.0, **fields: Any) -> str:
        body = {"event_type": "retrieval", "tenant_id": tenant_id, "feature": feature, "index_name": index_name,
                "status": status, "results_count": results_count, "latency_ms": latency_ms}
        if fields:
            body.update(fields)
        return self._put(body)

    def emit_feedback(self, *, tenant_id: str, score: float, target_event_id: str = "", feature: str = "",
                      **fields: Any) -> str:
        body = {"event_type": "feedback", "tenant_id": tenant_id, "feature": feature, "score": score,
                "target_event_id": target_event_id}
        if fields:
            body.update(fields)
        return self._put(body)

    def _put(self, body: dict[str, Any]) -> str:
        try:
            if len(self._queue) >= self._queue_size:
                with self._drop_lock:
                    self.counters.dropped += 1
                    self._dropped_here += 1
                    self._last_enqueued = next(self._enqueued)
                return ""
            event_id = body.get("event_id")
            if event_id is None:
                event_id = body["event_id"] = new_event_id()
            if "ts" not in body:
                body["ts"] = time.time()  # turned into a datetime by the sender thread
            self._queue.append(body)
            self._last_enqueued = next(self._enqueued)
            return str(event_id)
        except Exception:  # noqa: BLE001 - the shim never raises into product code
            return ""

    # ------------------------------------------------------------------ timing helpers
    def track_llm_call(self, *, tenant_id: str, provider: str, model: str, **fields: Any) -> CallTracker:
        """Time a provider call; a context manager (sync or async) or a decorator.

            with tel.track_llm_call(tenant_id="acme", provider="openai", model="gpt-4o") as call:
                response = client.chat.completions.create(...)
                call.record(response)          # usage, response model, finish reason

        An exception sets ``status`` (timeout, rate_limited, filtered, cancelled, error) and
        ``error_type``, and is re-raised. As a decorator, the return value is recorded."""
        return CallTracker(self, "llm_call", {"tenant_id": tenant_id, "provider": provider, "model": model, **fields})

    def track_tool_call(self, *, tenant_id: str, tool_name: str, **fields: Any) -> CallTracker:
        return CallTracker(self, "tool_call", {"tenant_id": tenant_id, "tool_name": tool_name, **fields})

    def track_retrieval(self, *, tenant_id: str, index_name: str, **fields: Any) -> CallTracker:
        return CallTracker(self, "retrieval", {"tenant_id": tenant_id, "index_name": index_name, **fields})

    # ------------------------------------------------------------------ guard (caller thread)
    def guard(self, *, tenant_id: str, feature: str | None = None, model: str | None = None,
              tool: str | None = None, provider: str | None = None, request_id: str | None = None) -> Decision:
        try:
            return decide(self.view, (tenant_id, feature, provider, model, tool), time.time(), self.staleness,
                          request_id)
        except Exception:  # noqa: BLE001 - fail open, never raise into product code
            return Decision(allowed=True, model=model, reason="guard error")

    # ------------------------------------------------------------------ lifecycle
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything emitted so far is delivered (or counted invalid/dropped).
        False if the timeout passed first (e.g. the broker is down: the rest is on disk)."""
        target = self._last_enqueued
        deadline = time.monotonic() + timeout
        while self._done + self._dropped_here < target:
            if time.monotonic() > deadline or not self._thread.is_alive():
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush for up to ``timeout``, then spill whatever is left to disk and stop."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._atexit)
        self.flush(timeout)
        self._closing.set()
        self._thread.join(timeout=timeout + 15)

    def stats(self) -> dict[str, int]:
        spill = self._spill
        buffered = len(self._queue) + sum(len(b) for b in list(self._outbox)) + len(self._inflight or ())
        if spill is not None:
            buffered += spill.pending_records
        counters = asdict(self.counters)
        counters["enqueued"] = self._last_enqueued - self._dropped_here
        return {**counters, "buffered": buffered}

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
        except Exception as exc:  # noqa: BLE001 - the thread must end quietly
            log.error("shim_crashed", error=repr(exc)[:300])
        finally:
            loop.close()

    async def _main(self) -> None:
        self._started.set()
        core = [asyncio.create_task(self._intake()), asyncio.create_task(self._deliver())]
        side = []
        if self._follow:
            side.append(asyncio.create_task(self._follower()))
            if self._directives_url:
                side.append(asyncio.create_task(self._poller()))
        while not self._closing.is_set():
            await asyncio.sleep(0.02)
        for task in side:
            task.cancel()
        self._stopping = True
        # a send in flight may be waiting on an unreachable broker: give it a moment, then
        # cancel it and keep its batch (a duplicate later is deduplicated; a loss is not)
        _, stuck = await asyncio.wait(core, timeout=3)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*core, *side, return_exceptions=True)
        # single-threaded from here: keep what is left, in order, on disk
        leftover = [self._inflight] if self._inflight else []
        self._inflight = None
        leftover.extend(self._outbox)
        self._outbox.clear()
        while self._queue:
            leftover.append(self._take_batch())
        for batch in leftover:
            self._spill_append(batch)
        self._close_spill()  # durable before the transport gets its (bounded) time to stop
        with contextlib.suppress(Exception):
            await self._transport.stop()

    def _close_spill(self) -> None:
        spill = self._spill
        if spill is None:
            return
        spill.close()
        if spill.pending_records:
            log.warning("spill_left_on_disk", records=spill.pending_records, directory=str(spill.directory),
                        hint="a shim started with FLYBALL_SHIM_SPILL_DIR on this directory replays it")
        elif self._private_spill is not None:
            shutil.rmtree(self._private_spill, ignore_errors=True)

    # intake: queue -> validated records -> outbox (healthy) or spill log (degraded). While a send
    # hangs on a broker that just went away, events keep moving into the outbox (encoded, at
    # most queue_size records) so callers do not see a full queue before the failure is known.
    async def _intake(self) -> None:
        while not self._stopping:
            if not self._queue or (not self._degraded and sum(map(len, self._outbox)) >= self._queue_size):
                await asyncio.sleep(0.005)
                continue
            if self._degraded and len(self._queue) < self._batch_size:
                # spill mode: gather up to 50 ms of events per frame (one fsync each)
                await asyncio.sleep(0.05)
                if self._stopping:
                    return
            batch = self._take_batch()
            if self._degraded:
                self._spill_append(batch)
            else:
                self._outbox.append(batch)
            await asyncio.sleep(0)

    def _take_batch(self) -> list[Record]:
        now = datetime.now(UTC)
        queue = self._queue
        batch: list[Record] = []
        for _ in range(min(len(queue), self._batch_size)):
            batch.append(self._encode(queue.popleft(), now))
        return batch

    def _encode(self, body: dict[str, Any], now: datetime) -> Record:
        try:
            ts = body["ts"]
            if isinstance(ts, float):
                body["ts"] = datetime.fromtimestamp(ts, UTC)
            event_id = body["event_id"]
            if not isinstance(event_id, str):
                body["event_id"] = str(event_id).lower()
            body.setdefault("service", self.service)
            body.setdefault("environment", self.environment)
            body.setdefault("shim_version", __version__)
            if "user_id" in body:
                body["user_id_hash"] = self._hash(str(body.pop("user_id")))
            for text, digest, chars in (("prompt_text", "prompt_hash", "prompt_chars"),
                                        ("completion_text", None, "completion_chars")):
                if text in body:
                    value = str(body.pop(text))
                    body[chars] = len(value)
                    if digest:
                        body[digest] = hashlib.sha256(value.encode()).hexdigest()
            event = parse_event(body, now=now)
            return (EVENTS, event.tenant_id.encode(), orjson.dumps(body, default=str))
        except Exception as exc:  # noqa: BLE001 - InvalidEvent, or a validator bug: keep it, never crash
            reason = (exc.reason if isinstance(exc, InvalidEvent)
                      else f"event: could not be validated ({type(exc).__name__})")
            self.counters.invalid += 1
            log.warning("event_invalid", reason=reason, event_type=str(body.get("event_type"))[:64])
            for private in ("user_id", "prompt_text", "completion_text"):  # never into the DLQ either
                body.pop(private, None)
            return (DLQ, None, orjson.dumps({"reason": reason, "original": _safe(body),
                                             "dead_lettered_at": now.isoformat(), "source": "shim"}))

    def _hash(self, value: str) -> str:
        if self._salt:
            return hmac.new(self._salt, value.encode(), hashlib.sha256).hexdigest()
        return hashlib.sha256(value.encode()).hexdigest()

    def _spill_append(self, batch: list[Record]) -> None:
        if not batch:
            return
        spill = self._spill
        try:
            if spill is not None and spill.append(batch):
                self.counters.spilled += len(batch)
                return
            reason = "spill log full" if spill is not None else "no spill log"
        except OSError as exc:
            reason = f"spill write failed: {exc}"
        self.counters.dropped += len(batch)
        self._done += len(batch)
        log.error("events_dropped", records=len(batch), reason=reason[:200])

    # delivery: outbox -> transport; on failure spill and replay the log until it is empty
    async def _deliver(self) -> None:
        backoff, next_try = 0.1, 0.0
        while not self._stopping:
            spill = self._spill
            if self._degraded:
                if spill is None or spill.empty:
                    self._degraded = False
                    continue
                if time.monotonic() < next_try:
                    await asyncio.sleep(0.02)
                    continue
                frame = spill.peek(self._batch_size)
                if frame is None:
                    await asyncio.sleep(0.02)
                    continue
                failed = await self._send(frame)
                if failed:
                    next_try, backoff = time.monotonic() + backoff, min(backoff * 2, 5.0)
                    continue
                spill.ack()
                backoff = 0.1
                events = sum(1 for topic, _, _ in frame if topic == EVENTS)
                self.counters.sent += events
                self.counters.replayed += events
                inherited = min(self._inherited, len(frame))
                self._inherited -= inherited
                self._done += len(frame) - inherited
                continue
            if not self._outbox:
                await asyncio.sleep(0.002)
                continue
            batch = self._outbox.popleft()
            self._inflight = batch
            failed = await self._send(batch)
            self._inflight = None
            delivered = len(batch) - len(failed)
            self.counters.sent += sum(1 for topic, _, _ in batch if topic == EVENTS) - sum(
                1 for topic, _, _ in failed if topic == EVENTS)
            self._done += delivered
            if failed:
                # spill mode: the failed records, then everything queued behind them, in order
                self._degraded = True
                self._spill_append(failed)
                while self._outbox:
                    self._spill_append(self._outbox.popleft())
                next_try, backoff = time.monotonic() + backoff, min(backoff * 2, 5.0)

    async def _send(self, records: list[Record]) -> list[Record]:
        """Send records grouped by topic; return those not known to be delivered, in order."""
        failed_idx: list[int] = []
        for topic in (EVENTS, DLQ):
            index = [i for i, record in enumerate(records) if record[0] == topic]
            if not index:
                continue
            try:
                await self._transport.send_batch(topic, [(records[i][1], records[i][2]) for i in index])
            except TransportError as exc:
                failed_idx.extend(index[j] for j in (exc.failed if exc.failed is not None else range(len(index))))
                self._send_failed(exc, len(index))
            except Exception as exc:  # noqa: BLE001 - any transport trouble: keep the records
                failed_idx.extend(index)
                self._send_failed(exc, len(index))
        return [records[i] for i in sorted(failed_idx)]

    def _send_failed(self, exc: BaseException, size: int) -> None:
        self.counters.send_failures += 1
        log.warning("send_failed", error=str(exc)[:200], batch=size)

    async def _follower(self) -> None:
        last_prune = 0.0
        while True:
            try:
                async for values in self._transport.follow(DIRECTIVES):
                    now = time.time()
                    for value in values:
                        try:
                            directive = Directive.model_validate_json(value)
                        except ValueError as exc:
                            log.warning("directive_invalid", error=str(exc)[:200])
                            continue
                        self.view.apply(directive)
                        self.counters.directives_seen += 1
                    synced = getattr(self._transport, "synced_at", None)
                    if synced is not None and (self.view.updated_at is None or synced > self.view.updated_at):
                        self.view.mark_synced(synced)
                    if now - last_prune > 10:
                        self.view.prune(now=now)
                        last_prune = now
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep following; the view keeps its last state
                log.warning("directive_follow_failed", error=str(exc)[:200])
                await asyncio.sleep(1.0)

    async def _poller(self) -> None:
        """HTTP fallback: when the followed view is stale, poll ``GET /v1/directives``."""
        try:
            import httpx  # optional: only a shim configured with a directives URL needs it
        except ImportError:
            log.warning("directive_poll_disabled", reason="httpx is not installed")
            return
        url = self._directives_url.rstrip("/") + "/v1/directives"  # type: ignore[union-attr]
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        async with httpx.AsyncClient(timeout=5.0, headers=headers) as client:
            while True:
                await asyncio.sleep(self._poll_interval)
                if self.view.age(time.time()) <= 2 * self._poll_interval:
                    continue  # the follower is fresh
                try:
                    response = await client.get(url)
                    response.raise_for_status()
                    directives = [Directive.model_validate(d) for d in response.json()]
                except Exception as exc:  # noqa: BLE001 - try again next interval
                    log.warning("directive_poll_failed", error=str(exc)[:200])
                    continue
                self.view.replace_all(directives, now=time.time())


def _safe(body: dict[str, Any]) -> str:
    try:
        return orjson.dumps(body, default=str).decode()
    except TypeError:
        return repr(body)[:4096]


class CallTracker:
    """Times one call and emits its event on exit; also usable as a decorator."""

    def __init__(self, tel: Telemetry | AsyncTelemetry, kind: str, fields: dict[str, Any]) -> None:
        self._tel = tel._sync if isinstance(tel, AsyncTelemetry) else tel
        self._kind = kind
        self._fields = fields
        self.fields: dict[str, Any] = {}
        self._t0 = 0.0
        self._ts = 0.0
        self.event_id = ""

    def record(self, response: Any) -> Any:
        """Take usage, response model and finish reason from a provider response; returns it."""
        try:
            usage = usage_of(response)
            if usage is not None:
                self.fields.update(usage.as_fields())
            if self._kind == "llm_call":
                if model := response_model_of(response):
                    self.fields["response_model"] = model
                if reason := finish_reason_of(response):
                    self.fields["finish_reason"] = reason
        except Exception:  # noqa: BLE001 - telemetry never breaks the call
            pass
        return response

    def first_token(self) -> None:
        """Mark the first streamed token (sets ``ttft_ms`` and ``stream``)."""
        if "ttft_ms" not in self.fields:
            self.fields["ttft_ms"] = (time.perf_counter() - self._t0) * 1000
            self.fields["stream"] = True

    def set(self, **fields: Any) -> None:
        self.fields.update(fields)

    def __enter__(self) -> CallTracker:
        self.fields = {}
        self._ts = time.time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._finish(exc)  # the exception, if any, propagates

    async def __aenter__(self) -> CallTracker:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        try:
            latency = (time.perf_counter() - self._t0) * 1000
            body = {"event_type": self._kind, "status": "ok", **self._fields, "ts": self._ts, "latency_ms": latency}
            if exc is not None:
                body["status"] = str(status_of(exc))
                body["error_type"] = type(exc).__name__[:256]
            body.update(self.fields)
            if "feature" not in body:
                body["feature"] = ""
            self.event_id = self._tel._put(body)
        except Exception:  # noqa: BLE001
            pass

    def __call__(self, fn: F) -> F:
        template = self

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with CallTracker(template._tel, template._kind, template._fields) as call:
                    return call.record(await fn(*args, **kwargs))
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with CallTracker(template._tel, template._kind, template._fields) as call:
                return call.record(fn(*args, **kwargs))
        return wrapper  # type: ignore[return-value]


class AsyncTelemetry:
    """The same API for asyncio code. ``emit_*``, ``guard`` and ``track_*`` are synchronous
    and non-blocking (an append to a deque, a dict lookup); ``flush`` and ``close`` are
    awaitable. Validation, batching, spilling and following run on the shim's own thread, so
    none of that work lands on the application's event loop."""

    def __init__(self, service: str = "", **kwargs: Any) -> None:
        self._sync = Telemetry(service, **kwargs)

    @classmethod
    async def create(cls, service: str = "", **kwargs: Any) -> AsyncTelemetry:
        """Construct without blocking the running loop (the thread start waits briefly)."""
        return await asyncio.to_thread(cls, service, **kwargs)

    @property
    def counters(self) -> Counters:
        return self._sync.counters

    @property
    def view(self) -> DirectiveView:
        return self._sync.view

    def emit_llm_call(self, **fields: Any) -> str:
        return self._sync.emit_llm_call(**fields)

    def emit_tool_call(self, **fields: Any) -> str:
        return self._sync.emit_tool_call(**fields)

    def emit_safety_trigger(self, **fields: Any) -> str:
        return self._sync.emit_safety_trigger(**fields)

    def emit_retrieval(self, **fields: Any) -> str:
        return self._sync.emit_retrieval(**fields)

    def emit_feedback(self, **fields: Any) -> str:
        return self._sync.emit_feedback(**fields)

    def track_llm_call(self, **fields: Any) -> CallTracker:
        return self._sync.track_llm_call(**fields)

    def track_tool_call(self, **fields: Any) -> CallTracker:
        return self._sync.track_tool_call(**fields)

    def track_retrieval(self, **fields: Any) -> CallTracker:
        return self._sync.track_retrieval(**fields)

    def guard(self, **request: Any) -> Decision:
        return self._sync.guard(**request)

    def stats(self) -> dict[str, int]:
        return self._sync.stats()

    async def flush(self, timeout: float = 10.0) -> bool:
        return await asyncio.to_thread(self._sync.flush, timeout)

    async def close(self, timeout: float = 10.0) -> None:
        await asyncio.to_thread(self._sync.close, timeout)

    async def __aenter__(self) -> AsyncTelemetry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

