"""The shim's public API: ``Telemetry`` (threaded, for sync code).

On the caller's thread an ``emit_*`` only builds a dict and appends it to a bounded deque;
it never blocks and never raises. A background thread (``sender.py``) validates, batches,
sends and spills; the directive follower (``follower.py``) keeps a local ``DirectiveView`` that
``guard()`` answers from with no network I/O.

Counters (``stats()``): ``sent`` (events delivered), ``buffered`` (waiting in memory or on
disk), ``spilled`` (records written to disk), ``replayed`` (delivered from disk),
``dropped`` (lost: in-memory queue full, or spill log at its size cap), ``invalid``.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
import tempfile
import threading
import time
import weakref
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flyball.schemas import KeySet

from .buffer import Record, SpillLocked, SpillLog, open_lane
from .enforcement import Decision, DirectiveIntake, DirectiveView, Staleness, enforce_tuple, pins_in_force
from .ids import new_event_id
from .sender import Counters, Sender
from .settings import ShimSettings
from .tracker import CallTracker
from .transports import KafkaTransport, Transport

from .logs import Outage, get_logger

log = get_logger("flyball.producers.client")


class Telemetry(Sender):
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
        keys = KeySet.parse(cfg.signing_keys.get_secret_value()) if cfg.signing_keys else KeySet()
        if not keys.enabled and follow_directives:
            log.warning("directives_unauthenticated: FLYBALL_SIGNING_KEYS is not set, so any writer to "
                        "the directive topic is obeyed (acceptable in development only)")
        self._admission = DirectiveIntake(keys=keys, max_ttl_s=cfg.shim_max_directive_ttl_s)
        self._send_outage = Outage(log, "sending to the broker")
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
            log.warning("spill unavailable, events cannot be kept through an outage: %s", str(exc)[:200])
            self._spill = None
            return
        self._inherited = self._spill.pending_records
        if not self._spill.empty:
            self._degraded = True  # replay what a previous process left before anything new
            log.info("spill log holds %d records of a previous process in %s: replaying them first",
                     self._inherited, self._spill.directory)

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
        if self.view._setting_lookups:
            self._record_pins(body)
        return self._put(body)

    def _record_pins(self, body: dict[str, Any]) -> None:
        """An llm_call that names no prompt_version / config_version records the one pinned for
        its tenant's feature, so the release comparison sees a rollback take effect. A version
        the caller names is kept as given (the event says what was called)."""
        try:
            pins = pins_in_force(self.view, tenant_id=body["tenant_id"], feature=body.get("feature") or None,
                                 now=time.time())
            for name in ("prompt_version", "config_version"):
                if name in pins and not body.get(name) and not (body.get("attributes") or {}).get(name):
                    body[name] = pins[name]
        except Exception:  # the shim never raises into product code (a bad attributes value, ...)
            log.debug("pinned versions not recorded", exc_info=True)

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
                call.record(response)          # usage, response model, finish reason, tier

            with tel.track_llm_call(tenant_id="acme", provider="openai", model="gpt-4o") as call:
                stream = call.record(client.chat.completions.create(..., stream=True))
            for chunk in stream: ...           # the event is emitted when the stream ends

        An exception sets ``status`` (timeout, rate_limited, filtered, cancelled, error) and
        ``error_type``, and is re-raised. As a decorator, the return value is recorded (a
        returned stream is wrapped, see ``streams.py``)."""
        body = {"tenant_id": tenant_id, "provider": provider, "model": model, **fields}
        if self.view._setting_lookups:
            self._record_pins(body)
        return CallTracker(self, "llm_call", body)

    def track_tool_call(self, *, tenant_id: str, tool_name: str, **fields: Any) -> CallTracker:
        return CallTracker(self, "tool_call", {"tenant_id": tenant_id, "tool_name": tool_name, **fields})

    def track_retrieval(self, *, tenant_id: str, index_name: str, **fields: Any) -> CallTracker:
        return CallTracker(self, "retrieval", {"tenant_id": tenant_id, "index_name": index_name, **fields})

    # ------------------------------------------------------------------ guard (caller thread)
    def guard(self, *, tenant_id: str, feature: str | None = None, model: str | None = None,
              tool: str | None = None, provider: str | None = None, request_id: str | None = None) -> Decision:
        try:
            return enforce_tuple(self.view, (tenant_id, feature, provider, model, tool), time.time(), self.staleness,
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

