"""Service level objectives and multiwindow, multi-burn-rate alerts. Pure.

An SLO says which share of a feature's LLM calls must be good over a window (28 days by
default): *availability* counts a call as bad when its status is one of ``failure_statuses``;
*latency* looks at successful calls only and counts a call as good when it finished within
``latency_ms`` (a streamed call with a time to first token: when that came within ``ttft_ms``).
``feature: "*"`` makes one objective per feature; ``tenant_id`` is absent (all tenants
together), one tenant, or ``"*"`` (one objective per tenant).

Burn-rate alerts follow the Google SRE Workbook (chapter 5, "Alerting on SLOs", the
multiwindow, multi-burn-rate table): a rule fires when the error budget burns at least
``factor`` times the sustainable rate over both its long and its short window. The short window
makes the alert resolve soon after the burning stops. Everything here is a function of counts
per window and of ``now``: the live monitor (``slo_live.py``, from the ``slo_minute`` rollup)
and ``flyball replay`` (``slo_replay.py``, in event time) call the same functions.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flyball.schemas import Alert, AlertKind, Scope
from flyball.schemas.events import CallStatus

from .documents import load_document, validate_document

SLO_NAMESPACE = uuid.UUID("0b7f4c52-6f0e-4a8e-9d42-51c1f0a9e3d7")
DEFAULT_FAILURES = (CallStatus.ERROR, CallStatus.TIMEOUT, CallStatus.RATE_LIMITED)
EVERY = "*"


class SLOKind(StrEnum):
    AVAILABILITY = "availability"
    LATENCY = "latency"


class SLO(BaseModel):
    """One objective as written in an SLO file (flat keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slo_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    kind: SLOKind
    feature: str = Field(default=EVERY, min_length=1, max_length=200,
                         description='a feature, or "*": one objective per feature')
    tenant_id: str | None = Field(default=None, min_length=1, max_length=200,
                                  description='absent: all tenants together; "*": one objective per tenant')
    target: float = Field(gt=0, lt=1, description="share of good calls, e.g. 0.995")
    window_days: int = Field(default=28, ge=1, le=90)
    failure_statuses: tuple[CallStatus, ...] = Field(default=DEFAULT_FAILURES, min_length=1)
    latency_ms: float | None = Field(default=None, gt=0, description="latency: a call is good within this")
    ttft_ms: float | None = Field(default=None, gt=0, description="latency: a streamed call is good when its "
                                                                   "first token came within this")
    min_events: int = Field(default=10, ge=1, description="no burn alert on fewer calls in the long window")
    version: int = Field(default=1, ge=1)
    description: str = Field(default="", max_length=1000)

    @model_validator(mode="after")
    def _coherent(self) -> SLO:
        if self.kind == SLOKind.LATENCY and self.latency_ms is None and self.ttft_ms is None:
            raise ValueError("latency_ms: a latency objective needs latency_ms, ttft_ms or both")
        if self.kind == SLOKind.AVAILABILITY and (self.latency_ms is not None or self.ttft_ms is not None):
            raise ValueError("kind: latency_ms/ttft_ms belong to a latency objective")
        if CallStatus.OK in self.failure_statuses:
            raise ValueError("failure_statuses: ok cannot count as a failure")
        return self

    @property
    def budget(self) -> Decimal:
        """The error budget as a share of calls (1 - target), exact."""
        return 1 - Decimal(repr(self.target))

    @property
    def window(self) -> timedelta:
        return timedelta(days=self.window_days)

    @property
    def ref(self) -> str:
        return f"{self.slo_id}@v{self.version}"

    def applies(self, feature: str, tenant_id: str) -> bool:
        return (self.feature in (EVERY, feature)) and (self.tenant_id in (None, EVERY, tenant_id))

    def subject(self, feature: str, tenant_id: str) -> Subject:
        """The objective a call belongs to (call ``applies`` first)."""
        return Subject(self.slo_id, feature, None if self.tenant_id is None else tenant_id)

    def classify(self, *, status: str, latency_ms: float, ttft_ms: float | None, stream: bool) -> bool | None:
        """True: a bad call; False: a good one; None: the call does not count for this SLI."""
        if self.kind == SLOKind.AVAILABILITY:
            return status in self.failure_statuses
        if status != CallStatus.OK:
            return None
        if stream and ttft_ms is not None and self.ttft_ms is not None:
            return ttft_ms > self.ttft_ms
        if self.latency_ms is not None:
            return latency_ms > self.latency_ms
        return None


class SLOFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(default=1, ge=1)
    slos: list[SLO] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> SLOFile:
        seen: set[str] = set()
        for i, s in enumerate(self.slos):
            if s.slo_id in seen:
                raise ValueError(f"slos[{i}].slo_id: duplicate {s.slo_id!r}")
            seen.add(s.slo_id)
        return self


@dataclass(frozen=True, slots=True)
class SLOs:
    slos: tuple[SLO, ...]
    version: int = 1

    def by_id(self, slo_id: str) -> SLO | None:
        return next((s for s in self.slos if s.slo_id == slo_id), None)


@dataclass(frozen=True, slots=True, order=True)
class Subject:
    """One objective: an SLO applied to one feature (and one tenant, or all: None)."""

    slo_id: str
    feature: str
    tenant_id: str | None

    def scope(self) -> Scope:
        return Scope(tenant_id=self.tenant_id, feature=self.feature)


def parse_slos(data: Any) -> SLOs:
    """SLOs from decoded JSON/YAML; a ValueError names the offending field."""
    spec = validate_document(SLOFile, data, "SLOs", list_key="slos", error=ValueError)
    return SLOs(slos=tuple(spec.slos), version=spec.version)




def load_slos(text: str) -> SLOs:
    """SLOs from the text of a YAML (or JSON) file, at most ``MAX_DEPTH`` deep."""
    return parse_slos(load_document(text, "SLO"))


def dump_slos(slos: SLOs) -> dict[str, Any]:
    """The JSON/YAML form (round-trips through ``parse_slos``)."""
    return {"version": slos.version, "slos": [s.model_dump(mode="json") for s in slos.slos]}


def revise(old: SLOs, new: SLOs) -> SLOs:
    """``new`` as the next version after ``old``: the set's version goes up by one, and each SLO
    whose content changed gets its own version bumped past the old one."""
    before = {s.slo_id: s for s in old.slos}
    out = []
    for s in new.slos:
        prev = before.get(s.slo_id)
        if prev is None:
            out.append(s)
        elif s.model_copy(update={"version": prev.version}) == prev:
            out.append(s.model_copy(update={"version": prev.version}))
        else:
            out.append(s.model_copy(update={"version": max(s.version, prev.version + 1)}))
    return SLOs(slos=tuple(out), version=old.version + 1)


# ------------------------------------------------------------------ burn rates
@dataclass(frozen=True, slots=True)
class Counts:
    total: int = 0
    bad: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.total + other.total, self.bad + other.bad)

    def __sub__(self, other: Counts) -> Counts:
        return Counts(self.total - other.total, self.bad - other.bad)


@dataclass(frozen=True, slots=True)
class BurnRule:
    name: str
    factor: Decimal
    long: timedelta
    short: timedelta
    severity: Literal["warning", "critical"]


# SRE Workbook, table 5-8: 2% of a 30-day budget in 1 h, 5% in 6 h (pages), 10% in 3 days (ticket)
RULES: tuple[BurnRule, ...] = (
    BurnRule("fast", Decimal("14.4"), timedelta(hours=1), timedelta(minutes=5), "critical"),
    BurnRule("slow", Decimal(6), timedelta(hours=6), timedelta(minutes=30), "critical"),
    BurnRule("ticket", Decimal(1), timedelta(days=3), timedelta(hours=6), "warning"),
)
WINDOWS: tuple[timedelta, ...] = tuple(sorted({w for r in RULES for w in (r.long, r.short)}))
LONGEST = max(WINDOWS)
_PLACES = Decimal("0.0001")


def burn_rate(counts: Counts, budget: Decimal) -> Decimal:
    """How many times faster than sustainable the budget burns: (bad / total) / (1 - target)."""
    if counts.total <= 0 or budget <= 0:
        return Decimal(0)
    return Decimal(counts.bad) / Decimal(counts.total) / budget


@dataclass(frozen=True, slots=True)
class Burn:
    subject: Subject
    slo: SLO
    rule: BurnRule | None  # the first rule (fast, slow, ticket) whose two windows both burn fast enough
    rates: Mapping[timedelta, Decimal]
    windows: Mapping[timedelta, Counts]
    budget_window: Counts  # calls and bad calls over the SLO's own window
    consumed: Decimal  # share of the error budget spent over the SLO window (may exceed 1)

    @property
    def remaining(self) -> Decimal:
        return 1 - self.consumed


def budget_consumed(counts: Counts, budget: Decimal) -> Decimal:
    """Bad calls over the calls the budget allows in the same window (0 with no traffic)."""
    if counts.total <= 0:
        return Decimal(0)
    return Decimal(counts.bad) / (budget * counts.total)


def evaluate(slo: SLO, subject: Subject, windows: Mapping[timedelta, Counts], budget_window: Counts) -> Burn:
    """The burn of one objective: ``windows`` holds the counts over each of ``WINDOWS`` ending at
    the evaluation time, ``budget_window`` the counts over the SLO's window."""
    rates = {w: burn_rate(windows.get(w, Counts()), slo.budget) for w in WINDOWS}
    firing = next((r for r in RULES
                   if windows.get(r.long, Counts()).total >= slo.min_events
                   and rates[r.long] >= r.factor and rates[r.short] >= r.factor), None)
    return Burn(subject, slo, firing, rates, dict(windows), budget_window,
                budget_consumed(budget_window, slo.budget))


def window_counts(minutes: Mapping[datetime, Counts], now: datetime,
                  windows: Sequence[timedelta] = WINDOWS) -> dict[timedelta, Counts]:
    """Sums of per-minute counts over [now - w, now) for each window (``now`` on a minute)."""
    out = {w: Counts() for w in windows}
    for minute, c in minutes.items():
        if minute >= now:
            continue
        for w in windows:
            if minute >= now - w:
                out[w] = out[w] + c
    return out


def incident_start(minutes: Mapping[datetime, Counts], burn: Burn, *, now: datetime) -> datetime:
    """Where the incident began, within the firing rule's long window: going back from ``now``,
    the earliest minute burning at least the rule's factor, stopping at the first minute with
    traffic that burned within budget (rate < 1). ``now - long`` if no single minute qualifies."""
    rule = burn.rule
    assert rule is not None
    budget = burn.slo.budget
    start = None
    for minute in sorted((m for m in minutes if now - rule.long <= m < now), reverse=True):
        c = minutes[minute]
        if c.total == 0:
            continue
        rate = burn_rate(c, budget)
        if rate >= rule.factor:
            start = minute
        elif rate < 1:
            break
    return start if start is not None else now - rule.long


def _text(d: Decimal) -> str:
    return format(d.quantize(_PLACES), "f")


def _hours(w: timedelta) -> str:
    s = int(w.total_seconds())
    return f"{s // 86400}d" if s % 86400 == 0 else (f"{s // 3600}h" if s % 3600 == 0 else f"{s // 60}m")


SEVERITY = {"warning": 1, "critical": 2}


def transition(burns: Sequence[Burn], open_alert: Alert | None, *, now: datetime,
               started: Callable[[Burn], datetime] | None = None) -> Alert | None:
    """The alert to publish for one scope (tenant, feature), given the burns of every objective on
    it: a new ``slo_burn`` alert when one starts firing, the open one re-published with fresh
    evidence while any fires (so the policies keep their directive alive), and the open one
    resolved when none fires. ``started(burn)``: where the incident began (``incident_start``)."""
    firing = sorted((b for b in burns if b.rule is not None),
                    key=lambda b: (-SEVERITY[b.rule.severity], -b.rates[b.rule.long], b.subject) if b.rule else ())
    if not firing:
        if open_alert is None or open_alert.status != "open":
            return None
        return open_alert.model_copy(update={"status": "resolved", "last_seen": now})
    worst = firing[0]
    rule = worst.rule
    assert rule is not None
    slo, scope = worst.slo, worst.subject.scope()
    long_c = worst.windows.get(rule.long, Counts())
    details = {
        "slo_id": slo.slo_id, "slo_version": str(slo.version), "objective": str(slo.kind),
        "target": repr(slo.target), "window_days": str(slo.window_days), "rule": rule.name,
        "factor": str(rule.factor), "long_window": _hours(rule.long), "short_window": _hours(rule.short),
        **{f"burn_rate_{_hours(w)}": _text(r) for w, r in sorted(worst.rates.items())},
        "calls_in_slo_window": str(worst.budget_window.total), "bad_in_slo_window": str(worst.budget_window.bad),
        "budget_consumed": _text(worst.consumed), "budget_remaining": _text(worst.remaining),
    }
    if len(firing) > 1:
        details["also_burning"] = ",".join(b.subject.slo_id for b in firing[1:])
    summary = (f"{slo.slo_id} ({slo.kind}, target {slo.target:.4%}) burning {_text(worst.rates[rule.long])}x "
               f"over {_hours(rule.long)} and {_text(worst.rates[rule.short])}x over {_hours(rule.short)} "
               f"({rule.name} burn); error budget consumed {_text(worst.consumed * 100)}%, remaining "
               f"{_text(worst.remaining * 100)}% of {slo.window_days} days")
    fields: dict[str, Any] = {
        "severity": rule.severity, "metric": f"slo_burn_rate_{slo.kind}", "observed": _text(worst.rates[rule.long]),
        "baseline": "1", "threshold": str(rule.factor), "window_s": int(rule.long.total_seconds()),
        "last_seen": now, "summary": summary, "details": details,
    }
    if open_alert is not None and open_alert.status == "open":
        if SEVERITY[open_alert.severity] > SEVERITY[rule.severity]:
            fields["severity"] = open_alert.severity  # never downgraded while open
        return open_alert.model_copy(update=fields)
    first = started(worst) if started is not None else now - rule.long
    alert_id = str(uuid.uuid5(SLO_NAMESPACE, f"{AlertKind.SLO_BURN}|{scope.key()}|{int(now.timestamp())}"))
    return Alert(alert_id=alert_id, kind=AlertKind.SLO_BURN, scope=scope, status="open", first_seen=first,
                 opened_at=now, sample_event_ids=[], **fields)


def by_scope(burns: Iterable[Burn]) -> dict[str, list[Burn]]:
    """Burns grouped by the alert scope they share (one ``slo_burn`` alert per scope)."""
    out: dict[str, list[Burn]] = {}
    for b in burns:
        out.setdefault(b.subject.scope().key(), []).append(b)
    return out


def assess(slos: SLOs, windows: Mapping[Subject, Mapping[timedelta, Counts]], budgets: Mapping[Subject, Counts],
           open_alerts: Mapping[str, Alert], *, now: datetime,
           minutes: Callable[[Subject], Mapping[datetime, Counts]]) -> list[Alert]:
    """The ``slo_burn`` alerts to publish at ``now`` (on a minute): ``windows`` holds each
    subject's counts over ``WINDOWS`` ending at ``now``, ``budgets`` its counts over its SLO's
    window, ``open_alerts`` the open alerts by scope key, ``minutes(subject)`` its per-minute counts
    over the longest alert window (read only when an alert opens, for ``incident_start``)."""
    burns = []
    for subject in sorted(set(windows) | set(budgets)):
        slo = slos.by_id(subject.slo_id)
        if slo is not None:
            burns.append(evaluate(slo, subject, windows.get(subject, {}), budgets.get(subject, Counts())))
    grouped = by_scope(burns)
    out = []
    for key in sorted(set(grouped) | set(open_alerts)):
        alert = transition(grouped.get(key, []), open_alerts.get(key), now=now,
                           started=lambda b: incident_start(minutes(b.subject), b, now=now))
        if alert is not None:
            out.append(alert)
    return out


def floor_minute(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


# The shipped defaults are data, read once at import.
SHIPPED_SLOS_TEXT = resources.files("flyball.control_plane").joinpath("slos.yaml").read_text()
DEFAULT_SLOS = load_slos(SHIPPED_SLOS_TEXT)

__all__ = [
    "DEFAULT_SLOS",
    "LONGEST",
    "RULES",
    "SHIPPED_SLOS_TEXT",
    "SLO",
    "WINDOWS",
    "Burn",
    "BurnRule",
    "Counts",
    "SLOKind",
    "SLOs",
    "Subject",
    "assess",
    "budget_consumed",
    "burn_rate",
    "by_scope",
    "dump_slos",
    "evaluate",
    "floor_minute",
    "incident_start",
    "load_slos",
    "parse_slos",
    "revise",
    "transition",
    "window_counts",
]
