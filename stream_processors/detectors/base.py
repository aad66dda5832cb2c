"""Shared pieces of the detectors: deterministic alert ids, window samples, the alert book, and
the bound on the scopes a detector tracks.

Everything here is pure: event time comes in as a parameter (epoch seconds or a datetime taken
from the events), never from a clock, so ``flyball replay`` and the live worker agree.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from flyball.schemas import Alert, AlertKind, Scope

ALERT_NAMESPACE = uuid.UUID("0b6c3f7e-2f1a-4f61-9d8e-6a2b9c1d0f11")
BASE_WINDOW_S = 10  # the pipeline aggregates every signal in 10-second event-time windows
MAX_SCOPES = 50_000  # scopes one detector tracks at once (ScopeBound)
MAX_TENANT_SCOPES = 2_000  # of them, one tenant's features (ScopeBound)
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


def alert_id_for(kind: str, scope_key: str, opened_window_start: int) -> str:
    """Deterministic, so that replay and live give an alert the same id."""
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{kind}|{scope_key}|{opened_window_start}"))


def window_start(window: int, window_s: int) -> datetime:
    return datetime.fromtimestamp(window * window_s, tz=UTC)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@dataclass(slots=True)
class WindowSample:
    """The sum of one batch's events for one key and window, with their time span."""

    amount: Decimal
    first_ts: datetime
    last_ts: datetime
    event_ids: list[str] = field(default_factory=list)
    peak: Decimal = Decimal(0)  # the largest single call's amount in the sample


@dataclass(slots=True)
class Evidence:
    """What one evaluation of a detector found, in the alert's own terms."""

    severity: str
    metric: str
    observed: str
    baseline: str
    threshold: str
    score: float | None
    p_value: float | None
    window_s: int
    first_ts: float
    last_ts: float
    event_ids: list[str]
    summary: str
    # distinct 10 s windows of the tested span that hold abnormal events themselves (failures,
    # triggers), for the count detectors; 1 where that is not defined (amounts, latency)
    evidence_windows: int = 1


@dataclass(slots=True)
class _Open:
    alert: Alert
    last_fired: float          # event time of the latest evaluation that was still abnormal
    published_score: float
    published_at: float


class AlertBook:
    """One alert per (kind, scope) while open: opened once, re-published as evidence grows,
    resolved once no evaluation has been abnormal for ``resolve_s`` seconds of event time
    (judged by the watermark, so a scope that went quiet resolves too).

    A re-publication happens when the severity rises, the score at least doubles, or every
    ``republish_s`` seconds while the signal stays abnormal (so ``last_seen`` moves for the
    control plane's keep-alive); smaller changes are kept in the state and not re-sent.
    """

    def __init__(self, *, resolve_s: float = 120.0, republish_s: float = 60.0, relearn_s: float = 3600.0) -> None:
        self.resolve_s = resolve_s
        self.relearn_s = relearn_s
        self.republish_s = republish_s
        self.open: dict[str, _Open] = {}
        # persistence: (kind|scope) -> (abnormal 10 s windows so far, the latest, its event time, first_ts)
        # for an alert not yet open; not in a snapshot (a restart only restarts a confirmation)
        self.pending: dict[str, tuple[int, int, float, float]] = {}
        # (kind|scope) -> event time of the last abnormal evidence of its latest resolved alert,
        # for ``relearn_s`` after it; not in a snapshot (a restart forgets an incident's tail)
        self.closed: dict[str, float] = {}
        # resolved by ``fire`` (evidence that came after a quiet ``resolve_s``), not yet published
        self.resolved: list[Alert] = []

    def is_open(self, kind: str, scope_key: str, t: float | None = None) -> bool:
        """Whether an alert of (kind, scope) is open; with ``t``, one that evidence beginning at
        event time ``t`` would find open (not one normal for ``resolve_s`` by then, which
        :meth:`fire` would resolve)."""
        o = self.open.get(f"{kind}|{scope_key}")
        return o is not None and (t is None or not self._lapsed(o, t))

    def _lapsed(self, o: _Open, t: float) -> bool:
        """Normal for ``resolve_s`` by event time ``t``: what a sweep at ``t`` resolves, and what
        evidence beginning at ``t`` finds resolved even before a sweep (a replay's or a backlog's
        batch spans minutes, and the book sweeps at its end)."""
        return t - o.last_fired >= self.resolve_s

    def learns(self, kind: str, scope_key: str, t: float) -> bool:
        """Whether a scope's baseline may learn from evidence at event time ``t``: not while an alert
        of ``kind`` is open for it (an incident must not teach that it is normal), unless that
        alert has been open for ``relearn_s``: a change that lasts is the new normal (else a
        lasting step would keep its alert open for ever and hide the next incident)."""
        o = self.open.get(f"{kind}|{scope_key}")
        if o is None or self._lapsed(o, t):
            return True
        opened = o.alert.opened_at or o.alert.first_seen
        return t - opened.timestamp() >= self.relearn_s

    def fire(self, kind: AlertKind, scope: Scope, ev: Evidence, *, confirm: int = 1,
             confirm_s: float = 300.0) -> Alert | None:
        """An abnormal evaluation of (kind, scope). A new alert opens only once ``confirm``
        distinct 10 s windows were abnormal, each within ``confirm_s`` of the previous one
        (persistence: one odd window is not an incident), or at once when the evidence itself
        comes from ``confirm`` distinct windows (``Evidence.evidence_windows``: triggers or failures that
        arrived apart already persisted; a quiet scope, evaluated only when it has events, would
        otherwise wait for one more of them); ``first_seen`` is then the first abnormal
        evidence's."""
        key = f"{kind}|{scope.key()}"
        score = ev.score or 0.0
        current = self.open.get(key)
        if current is not None and self._lapsed(current, ev.first_ts):
            # resolve it here, so that this evidence opens a new alert as it would have live
            # (``Detectors.observe`` publishes the resolution just before it; ``sweep`` where a
            # detector is used alone)
            self._resolve(key, current.last_fired + self.resolve_s)
            current = None
        if current is None and confirm > 1 and ev.evidence_windows < confirm:
            w = int(ev.last_ts // BASE_WINDOW_S)
            seen = self.pending.get(key)
            if seen is None or ev.last_ts - seen[2] > confirm_s:
                seen = (1, w, ev.last_ts, ev.first_ts)
            elif w > seen[1]:
                seen = (seen[0] + 1, w, ev.last_ts, min(seen[3], ev.first_ts))
            if seen[0] < confirm:
                self.pending[key] = seen
                return None
            self.pending.pop(key, None)
            ev.first_ts = min(ev.first_ts, seen[3])
        if current is None:
            opened = int(ev.last_ts // ev.window_s) * ev.window_s
            alert = Alert(
                alert_id=alert_id_for(kind, scope.key(), opened), kind=kind, scope=scope,
                severity=ev.severity,
                metric=ev.metric, observed=ev.observed, baseline=ev.baseline, threshold=ev.threshold,
                score=ev.score, p_value=ev.p_value, window_s=ev.window_s, first_seen=at(ev.first_ts),
                last_seen=at(ev.last_ts), opened_at=at(ev.last_ts), sample_event_ids=ev.event_ids[:10],
                summary=ev.summary,
            )
            self.open[key] = _Open(alert, ev.last_ts, score, ev.last_ts)
            return alert
        old = current.alert
        rank = max(SEVERITY_RANK[ev.severity], SEVERITY_RANK[old.severity])
        severity = "critical" if rank == 2 else "warning" if rank == 1 else "info"
        ids = old.sample_event_ids if len(old.sample_event_ids) >= 10 else (
            old.sample_event_ids + [i for i in ev.event_ids if i not in old.sample_event_ids])[:10]
        update: dict[str, Any] = {
            "severity": severity, "observed": ev.observed, "baseline": ev.baseline, "threshold": ev.threshold,
            "score": ev.score, "p_value": ev.p_value, "metric": ev.metric, "summary": ev.summary,
            "last_seen": max(old.last_seen, at(ev.last_ts)), "sample_event_ids": ids,
        }
        current.alert = old.model_copy(update=update)
        current.last_fired = max(current.last_fired, ev.last_ts)
        grown = (severity != old.severity or score >= 2 * current.published_score
                 or ev.last_ts - current.published_at >= self.republish_s)
        if not grown:
            return None
        current.published_score = max(score, current.published_score)
        current.published_at = ev.last_ts
        return current.alert

    def closed_at(self, kind: str, scope_key: str, t: float | None = None) -> float | None:
        """The event time of the last abnormal evidence of the alert of ``kind`` that resolved for
        the scope in the last ``relearn_s``, if any: a detector counts new evidence from there on,
        since its long spans still hold the incident that alert was (an incident's tail is not a
        new incident). With ``t``, an open alert that evidence beginning at ``t`` would find
        resolved (:meth:`is_open`) counts as resolved."""
        key = f"{kind}|{scope_key}"
        o = self.open.get(key)
        if o is not None and t is not None and self._lapsed(o, t):
            return o.last_fired
        return self.closed.get(key)

    def sweep(self, watermark: float) -> list[Alert]:
        """Resolve the alerts that have been normal for ``resolve_s`` up to ``watermark``."""
        if self.pending:
            self.pending = {k: v for k, v in self.pending.items() if watermark - v[2] < 3600}
        if self.closed:
            self.closed = {k: t for k, t in self.closed.items() if watermark - t < self.relearn_s}
        for key in [k for k, o in self.open.items() if self._lapsed(o, watermark)]:
            self._resolve(key, watermark)
        return self.take_resolved()

    def take_resolved(self) -> list[Alert]:
        """The resolutions not yet published (those :meth:`fire` made, then the sweep's)."""
        resolved, self.resolved = self.resolved, []
        return resolved

    def _resolve(self, key: str, t: float) -> None:
        o = self.open.pop(key)
        self.closed[key] = o.last_fired
        self.resolved.append(o.alert.model_copy(update={"status": "resolved", "last_seen": max(o.alert.last_seen, at(t))}))

    def snapshot(self) -> dict[str, Any]:
        return {k: {"alert": o.alert.model_dump(mode="json"), "last_fired": o.last_fired,
                    "published_score": o.published_score, "published_at": o.published_at}
                for k, o in self.open.items()}

    def restore(self, data: dict[str, Any]) -> None:
        self.open = {k: _Open(Alert.model_validate(v["alert"]), v["last_fired"], v["published_score"],
                              v["published_at"]) for k, v in data.items()}


def fmt(x: float) -> str:
    """Plain number text for non-money observations (alert ``observed``/``baseline``)."""
    return f"{x:.6g}"


@dataclass(slots=True)
class ScopeBound:
    """How many scopes one detector tracks at once: a field of high cardinality (a request id
    sent as the feature, a deployment id as the model) must not grow a worker without bound.
    ``max_scopes`` in all and, for a detector of tenants' features, ``per_tenant`` of one tenant's
    (so that one tenant's request ids leave room for the other tenants' new features). A new
    scope past either is not judged; ``dropped`` counts those looks, ``full`` and ``full_tenants``
    say which bound was reached (the worker logs each once). Scopes go only when a detector
    evicts them, and then recounts (:meth:`recount`)."""

    max_scopes: int = MAX_SCOPES
    per_tenant: int = 0  # 0: no bound per tenant
    dropped: int = 0
    full: bool = False
    full_tenants: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)  # scopes per tenant (when ``per_tenant``)

    def admit(self, held: int, tenant: str | None) -> bool:
        """Room for one more scope (of ``tenant``) beside the ``held`` ones?"""
        if held >= self.max_scopes:
            self.full = True
        elif not self.per_tenant or tenant is None:
            return True
        else:
            n = self.counts.get(tenant, 0)
            if n < self.per_tenant:
                self.counts[tenant] = n + 1
                return True
            self.full_tenants.add(tenant)
        self.dropped += 1
        return False

    def recount(self, tenants: Iterable[str]) -> None:
        """The per-tenant counts from the tenants of the scopes held (after an eviction)."""
        if self.per_tenant:
            self.counts = dict(Counter(tenants))
