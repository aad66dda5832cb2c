"""The per-batch core of the worker: validate -> dedupe -> price -> rows, dead letters, alerts.

Pure: bytes in, plain data out; no Kafka, no ClickHouse, no clock (``now`` is a parameter).
Validation is ``decode.decode_event``: a msgspec fast path for the common event, the pydantic
models for anything it is unsure of (they decide, and name the field in the DLQ reason).
The live worker and ``flyball replay`` both call :meth:`Pipeline.process`, which is why they
cannot disagree. Work is done per batch, and the detectors see one aggregated sample per
(scope, 10 s window) per batch instead of one call per event (see ``detectors/suite.py``).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from flyball.schemas import Alert, AlertKind, InvalidEvent, LLMCall, Scope
from flyball.schemas.events import CallStatus, Envelope

from .detectors import BatchWindows, Detectors, alert_id_for
from .budgets import BudgetTracker, SeedRequest, SeedTotals
from .decode import decode_event, id_key
from .pricing import PriceBook, price_event, unpriced_reason, usage_of
from .releases import ReleaseComparator

EVENT_COLUMNS = (
    "event_id", "ts", "event_type", "tenant_id", "feature", "service", "environment",
    "request_id", "trace_id", "provider", "model", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "latency_ms", "status",
    "tool_name", "category", "index_name", "cost_usd", "price_version", "unpriced",
    "service_tier", "cache_write_1h_tokens", "prompt_version", "late", "cache_write_12h_tokens",
    "ttft_ms", "stream", "error_type", "score", "target_event_id", "outcome", "shim_instance",
    "results_count", "user_id_hash",
)


_ZERO = Decimal(0)
# a status as the plain string the row stores (CallStatus.value, without the enum property's cost)
_STATUS = {status: status.value for status in CallStatus}


# What of a rejected input goes into its dead-letter record: the first DLQ_ORIGINAL_BYTES bytes
# (with its SHA-256 and length, so the whole can be matched against the producer's copy) and
# the first DLQ_REASON_CHARS of the reason. JSON escaping can grow a byte to six (``\u0000``)
# and base64 adds a third: a record stays under 400 KB, well inside the producer's 1 MB limit.
# unpriced_model alerts raised one by one (distinct provider, model and what is missing); past
# that, one alert says so and the rest go unalerted (their events are still stored, cost NULL): a
# model field of high cardinality (a deployment id, a bug) must not become an alert per call
MAX_UNPRICED_ALERTS = 500
DLQ_ORIGINAL_BYTES = 32 * 1024
DLQ_REASON_CHARS = 2048


@dataclass(frozen=True, slots=True)
class DeadLetter:
    raw: bytes
    reason: str

    def record(self, now: datetime, *, keep: int = DLQ_ORIGINAL_BYTES) -> bytes:
        """The bounded dead-letter record (JSON) of this input, whatever its size: at most
        ``keep`` bytes of the original, with the whole's SHA-256 and length."""
        raw = self.raw
        head = raw[:keep]
        text = head.decode("utf-8", errors="replace")
        b64 = None if _utf8(raw) else base64.b64encode(head).decode()
        return orjson.dumps({
            "reason": self.reason[:DLQ_REASON_CHARS],
            "original": text,
            "original_b64": b64,
            "original_len": len(raw),
            "original_sha256": hashlib.sha256(raw).hexdigest(),
            "truncated": len(raw) > len(head),
            "dead_lettered_at": now.isoformat(),
        })


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass(slots=True)
class BatchResult:
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    duplicates: int = 0


class RecentIds:
    """The event ids seen in the last ``window`` of event time: the first line of dedupe (the
    second, across restarts and replicas, is ClickHouse's ``ReplacingMergeTree`` on
    ``(tenant_id, toDate(ts), event_id)`` read with ``FINAL``).

    A duplicate is a copy of its original (a producer's resend, a replayed batch), so it carries
    the same ``ts``: ids are kept in one set per minute of event time and an id is looked for in
    its own minute only. Ids are kept as 128-bit ints (a validated UUID), about 72 bytes each
    against 157 for the string in an ordered dict. :meth:`forget` drops the minutes older than
    ``watermark - window``; memory is bounded by the traffic of ``window`` (at 1,000 events/s
    and 5 minutes: 300,000 ids, about 22 MB) and, whatever the rate, by ``capacity`` ids (the
    oldest minutes go first). An event older than the window (a backfill, a lagging partition)
    is still deduplicated within its batch; past that, ClickHouse absorbs it.
    """

    __slots__ = ("_minutes", "_size", "capacity", "window_s")

    def __init__(self, window: timedelta = timedelta(minutes=5), capacity: int = 1_000_000) -> None:
        self.window_s = window.total_seconds()
        self.capacity = capacity
        self._minutes: dict[int, set[int]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, event_id: str, ts: datetime) -> bool:
        """Record the id; False if it was already there."""
        minute = int(ts.timestamp()) // 60
        ids = self._minutes.get(minute)
        if ids is None:
            ids = self._minutes[minute] = set()
        key = id_key(event_id)
        if key in ids:
            return False
        ids.add(key)
        self._size += 1
        return True

    def forget(self, watermark: datetime) -> None:
        """Drop the minutes wholly before ``watermark - window``, then the oldest ones while
        more than ``capacity`` ids are kept."""
        minutes = self._minutes
        oldest = int(watermark.timestamp() - self.window_s) // 60
        for minute in sorted(minutes):
            if minute >= oldest and self._size <= self.capacity:
                break
            self._size -= len(minutes.pop(minute))


class Pipeline:
    def __init__(self, book: Callable[[], PriceBook], *, dedupe_window: timedelta = timedelta(minutes=5),
                 dedupe_capacity: int = 1_000_000, budgets: BudgetTracker | None = None,
                 lateness: timedelta | None = None, detectors: Detectors | None = None,
                 releases: ReleaseComparator | None = None) -> None:
        self._book = book
        self.budgets = budgets  # budget accounting after pricing (see budgets.py)
        self.lateness = lateness  # events older than now - lateness are stored with late=1
        self.detectors = detectors or Detectors()
        self.releases = releases or ReleaseComparator()  # new prompt/model/config versions vs incumbents
        self._seen = RecentIds(dedupe_window, dedupe_capacity)
        self._unpriced_alerted: set[tuple[str, str, str]] = set()
        self._unpriced_overflowed = False
        self.watermark: datetime | None = None

    def process(self, raws: Sequence[bytes], *, now: datetime | None, budgets: bool = True) -> BatchResult:
        """``now`` bounds how far in the future an event may be; None (replay) skips that check.
        ``budgets=False``: the caller accounts budgets itself (:meth:`account`), after fetching
        the seeds they ask for (``self.budgets.wanted``)."""
        out = BatchResult()
        book = self._book()
        windows = BatchWindows()  # per (scope, 10 s window) sums for the detectors
        late_before = now - self.lateness if now is not None and self.lateness is not None else None
        # the hot loop: ~20k events per call, so bound methods are looked up once
        seen, add_window, rows, dead = self._seen.add, windows.add, out.rows, out.dead
        versioned: list[tuple[Envelope, float | None]] = []  # the events the release comparison reads
        keep = versioned.append
        watermark = self.watermark
        for raw in raws:
            try:
                event = decode_event(raw, now=now)
            except InvalidEvent as exc:
                dead.append(DeadLetter(raw=bytes(raw) if raw is not None else b"", reason=exc.reason))
                continue
            except Exception as exc:  # noqa: BLE001 - a validator bug must dead-letter one event, not crash the batch
                dead.append(DeadLetter(raw=bytes(raw) if raw is not None else b"",
                                       reason=f"event: could not be validated ({type(exc).__name__})"))
                continue
            ts = event.ts
            if not seen(event.event_id, ts):
                out.duplicates += 1
                continue
            try:
                if event.event_type == "llm_call":
                    cost, version, tier, one_hour = price_event(event, book)
                else:
                    cost, version, tier, one_hour = _ZERO, "", "", 0
                row = to_row(event, cost, version, late_before is not None and ts < late_before, tier, one_hour)
            except Exception as exc:  # noqa: BLE001 - a pricing bug must dead-letter one event, not stop ingest
                dead.append(DeadLetter(raw=bytes(raw), reason=f"event: could not be priced ({type(exc).__name__})"))
                continue
            if watermark is None or ts > watermark:
                watermark = ts
            if cost is None:
                self._unpriced(event, out, book)
            add_window(event, cost)
            if event.feature:
                keep((event, None if cost is None else float(cost)))
            rows.append(row)
        self.watermark = watermark
        if watermark is not None:
            self._seen.forget(watermark)
        out.alerts.extend(self.detectors.observe(windows))
        out.alerts.extend(self.releases.observe(versioned))
        if self.watermark is not None:
            out.alerts.extend(self.detectors.advance(self.watermark))
            out.alerts.extend(self.releases.advance(self.watermark))
        if budgets:
            self.account(out, now=now)
        return out

    def seeds_wanted(self, result: BatchResult, *, now: datetime | None) -> list[SeedRequest]:
        return [] if self.budgets is None else self.budgets.wanted(result.rows, EVENT_COLUMNS, now=now)

    def account(self, result: BatchResult, *, now: datetime | None, seeds: SeedTotals | None = None) -> None:
        """Budget accounting of a processed batch (its alerts come after the detectors')."""
        if self.budgets is not None:
            result.alerts.extend(self.budgets.observe(result.rows, EVENT_COLUMNS, now=now, seeds=seeds))

    def _unpriced(self, event: LLMCall, out: BatchResult, book: PriceBook) -> None:
        """One alert per (provider, model, what is missing): a model priced in the standard tier
        but not in the tier or for the cache duration an event used is named as such."""
        missing = unpriced_reason(event, book) or "no price for this provider and model"
        key = (event.provider, event.model, missing)
        if key in self._unpriced_alerted:
            return
        if len(self._unpriced_alerted) >= MAX_UNPRICED_ALERTS:
            if not self._unpriced_overflowed:  # one alert says so, once
                self._unpriced_overflowed = True
                out.alerts.append(_overflow_alert(event))
            return
        self._unpriced_alerted.add(key)
        scope = Scope(provider=event.provider, model=event.model)
        tier = usage_of(event).service_tier
        scope_key = scope.key() if missing.startswith("no price") else f"{scope.key()}|{missing}"
        out.alerts.append(Alert(
            alert_id=alert_id_for(AlertKind.UNPRICED_MODEL, scope_key, 0),
            kind=AlertKind.UNPRICED_MODEL, scope=scope, severity="warning", metric="unpriced_events",
            observed="1", baseline="0", threshold="0", window_s=0, first_seen=event.ts,
            last_seen=event.ts, sample_event_ids=[event.event_id],
            summary=(f"unpriced: provider {event.provider}, model {event.model}"
                     f"{f', service tier {tier}' if tier else ''}: {missing}; its events are stored with cost NULL "
                     "(add the rate with POST /v1/prices or flyball prices update, then reprice)"),
        ))


def _overflow_alert(event: LLMCall) -> Alert:
    scope = Scope(provider=event.provider)
    return Alert(
        alert_id=alert_id_for(AlertKind.UNPRICED_MODEL, "unpriced-overflow", 0),
        kind=AlertKind.UNPRICED_MODEL, scope=scope, severity="warning", metric="unpriced_models",
        observed=f">{MAX_UNPRICED_ALERTS}", baseline="0", threshold=str(MAX_UNPRICED_ALERTS), window_s=0,
        first_seen=event.ts, last_seen=event.ts, sample_event_ids=[event.event_id],
        summary=(f"unpriced: more than {MAX_UNPRICED_ALERTS} distinct models have no price (the latest: provider "
                 f"{event.provider}, model {event.model}); a model field of high cardinality? Further unpriced "
                 "models are not alerted one by one; their events are stored with cost NULL and unpriced=1"),
    )


def to_row(event: Envelope, cost: Decimal | None, version: str, late: bool, tier: str,
           one_hour: int) -> tuple[Any, ...]:
    """The ``events`` row of one event (columns in ``EVENT_COLUMNS`` order); ``tier`` and
    ``one_hour`` are the service tier and 1-hour cache writes pricing read (``price_event``)."""
    provider = model = status = tool = category = index = prompt_version = error_type = target = ""
    tokens = (0, 0, 0, 0, 0)
    twelve_hours = 0
    latency = 0.0
    ttft: float | None = None
    score: float | None = None
    stream = 0
    results: int | None = None
    user = ""
    # a pydantic model or its fast mirror (decode.py); each event kind declares its own event_type
    kind: str = event.event_type  # type: ignore[attr-defined]
    if kind == "llm_call":
        e: LLMCall = event  # type: ignore[assignment]
        provider, model, status, latency = e.provider, e.model, _STATUS[e.status], e.latency_ms
        tokens = (e.input_tokens, e.output_tokens, e.cache_read_tokens, e.cache_write_tokens, e.reasoning_tokens)
        twelve_hours = min(e.cache_write_12h_tokens, e.cache_write_tokens - one_hour)
        prompt_version = e.prompt_version or str(e.attributes.get("prompt_version", "")) if e.attributes else e.prompt_version
        ttft, stream, error_type, user = e.ttft_ms, 1 if e.stream else 0, e.error_type, e.user_id_hash
    elif kind == "tool_call":
        tool, status, latency = event.tool_name, _STATUS[event.status], event.latency_ms  # type: ignore[attr-defined]
        error_type = event.error_type  # type: ignore[attr-defined]
    elif kind == "safety_trigger":
        category, status = event.category, event.action  # type: ignore[attr-defined]
    elif kind == "retrieval":
        index, status, latency = event.index_name, _STATUS[event.status], event.latency_ms  # type: ignore[attr-defined]
        error_type, results = event.error_type, event.results_count  # type: ignore[attr-defined]
    elif kind == "feedback":
        score, target = event.score, event.target_event_id  # type: ignore[attr-defined]
        user = event.user_id_hash  # type: ignore[attr-defined]
    # an explicit outcome of the request (see docs/KPIS.md), on any event kind
    outcome = event.attributes.get("outcome", "") if event.attributes else ""
    return (
        event.event_id, event.ts, kind, event.tenant_id, event.feature, event.service,
        event.environment, event.request_id, event.trace_id, provider, model, *tokens, latency,
        status, tool, category, index, cost, version, 1 if cost is None else 0,
        tier, one_hour, prompt_version, 1 if late else 0, twelve_hours,
        ttft, stream, error_type, score, target, outcome if isinstance(outcome, str) else str(outcome), event.shim_instance,
        results, user,
    )
