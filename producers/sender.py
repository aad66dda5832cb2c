"""The shim's sender: a background thread running an asyncio loop that moves queued events
to the broker, and to the on-disk spill log while the broker is unreachable.

A state machine with two states, *healthy* and *degraded* (spill mode):

- *intake*: validates queued events (an invalid one goes to ``flyball.events.dlq.v1`` with
  its reason and is counted ``invalid``), encodes them, and hands batches to delivery; while
  degraded it appends them to the on-disk spill log instead;
- *delivery*: sends batches through the ``Transport`` (idempotent Kafka producer,
  ``acks=all``, zstd). A batch that fails is spilled (fsync'd) and the shim turns degraded:
  everything new goes behind it on disk, and the log is replayed oldest first until it is
  empty, so per-tenant order holds across an outage and across a process restart (a new
  shim on the same spill directory replays what the old one left).

``Sender`` is the half of ``Telemetry`` that runs on that thread; the public half
(``telemetry.py``) only appends to the queue and reads counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from flyball.schemas import DLQ, EVENTS, SCHEMA_VERSION, InvalidEvent, parse_event

from flyball import __version__

from .buffer import Record, SpillLog
from .enforcement import DirectiveIntake, DirectiveView
from .follower import follow_directives, poll_directives
from .ids import shim_instance
from .logs import Outage, get_logger
from .transports import Transport, TransportError

log = get_logger("flyball.producers.client")


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
    directives_refused: int = 0  # unsigned, forged, replayed or invalid directive messages


class Sender:
    """The background thread's work; ``Telemetry`` sets these attributes before starting it."""

    service: str
    environment: str
    counters: Counters
    view: DirectiveView
    _transport: Transport
    _queue: deque[dict[str, Any]]
    _queue_size: int
    _batch_size: int
    _done: int
    _salt: bytes
    _spill: SpillLog | None
    _private_spill: Path | None
    _inherited: int
    _outbox: deque[list[Record]]
    _inflight: list[Record] | None
    _degraded: bool
    _stopping: bool
    _closing: threading.Event
    _started: threading.Event
    _loop: asyncio.AbstractEventLoop | None
    _follow: bool
    _directives_url: str | None
    _api_key: str | None
    _poll_interval: float
    _admission: DirectiveIntake
    _send_outage: Outage

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except Exception as exc:  # noqa: BLE001 - the thread must end quietly
            log.error("shim sender thread crashed: %s", repr(exc)[:300])
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
            log.warning("%d records left in the spill log %s: a shim started with FLYBALL_SHIM_SPILL_DIR on "
                        "this directory replays them", spill.pending_records, spill.directory)
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
            body.setdefault("schema_version", SCHEMA_VERSION)
            body.setdefault("shim_version", __version__)
            body.setdefault("shim_instance", shim_instance())
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
            log.warning("invalid %s event sent to the DLQ: %s", str(body.get("event_type"))[:64], reason[:300])
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
        log.error("%d events dropped: %s", len(batch), reason[:200])

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
            # what intake queued while the last send was in flight goes out in one send (up to
            # batch_size records): one send per small batch, each waiting for its linger and
            # acks, delivered about 250 events/s on a loaded machine and the queue overflowed
            while self._outbox and len(batch) + len(self._outbox[0]) <= self._batch_size:
                batch.extend(self._outbox.popleft())
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
        if not failed_idx:
            self._send_outage.recovered(now=time.monotonic())
        return [records[i] for i in sorted(failed_idx)]

    def _send_failed(self, exc: BaseException, size: int) -> None:
        self.counters.send_failures += 1
        self._send_outage.failed(exc, now=time.monotonic(), records=size)

    async def _follower(self) -> None:
        await follow_directives(self._transport, self.view, self.counters, self._admission)

    async def _poller(self) -> None:
        assert self._directives_url is not None  # started only with a URL
        await poll_directives(self._directives_url, self._api_key, self.view, self._poll_interval)


def _safe(body: dict[str, Any]) -> str:
    try:
        return orjson.dumps(body, default=str).decode()
    except TypeError:
        return repr(body)[:4096]
