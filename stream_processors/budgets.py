"""Budgets: running spend per tenant (or tenant + feature) per day or month, and the
``budget_threshold`` alerts at 50/80/100 % (configurable), once per period per threshold.

Pure: no I/O, no clock. Time is the events' own (a budget period is the event-time day or
month, UTC) plus ``now`` to decide whether a period is still open and whether a running total
must be re-read. Seeds (the spend already stored for a budget's period) are asked for, not
fetched: :meth:`BudgetTracker.wanted` lists the :class:`SeedRequest` a batch needs, the shell
answers them (the worker from ClickHouse ``events FINAL``, off the event loop, through the
:class:`BudgetSeeds` port) and hands the totals to :meth:`BudgetTracker.observe`. Tests and
replay may pass a pure ``seed`` function instead (answered from a dict).

Single owner, no check-then-increment race: events are keyed by ``tenant_id`` on Kafka, so one
partition, hence one worker replica at a time, sees all of a tenant's events, in order. That
replica's tracker holds the running total and adds each event's cost as it processes the
batch; nothing reads a shared counter and writes it back. Replicas never share state and so
cannot drift apart. Ownership moves on a rebalance; a total is therefore re-read (``seed``)
when this tracker first sees a (budget, period), after the tenant was idle here for
``reseed_idle`` (a partition that moved away and back has been idle here for at least a
rebalance), and every ``reseed_every``. The seed excludes the event ids of the batch being
processed, so a batch replayed after a crash (already inserted, not committed) is counted
exactly once, at its position in the stream, and a threshold it crosses is detected again
(the alert id is deterministic, so the re-sent alert is the same alert).

In-flight window (documented overshoot): the alert is raised by the event whose cost takes
the owner's total to or past the threshold, so detection overshoots by less than that one
event's cost. What is spent after that is the enforcement window: events already emitted by
the product service before its shim receives the throttle directive (measured alert -> guard
refusal latency: ~0.1-0.5 s, ``bench/loop.py``) times the tenant's spend rate, plus the rest of
the batch in which the crossing event was consumed (at most ``max_batch`` events). Totals are
never under-counted: a seed can only over-count a replayed, already inserted batch, which
makes an alert fire early, never late.

Events of a period that closed more than ``lateness`` ago are stored (and flagged ``late``)
but raise no budget alerts: that period's alerts are final.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal, Protocol

from flyball.schemas import Alert, AlertKind, Scope
from flyball.schemas.alerts import escape_key_part

from .detectors import alert_id_for
from .errors import InvalidInput

DEFAULT_THRESHOLDS = (50, 80, 100)


class Period(StrEnum):
    DAILY = "daily"
    MONTHLY = "monthly"


class BudgetError(InvalidInput):
    """A budget that cannot be accepted; the message names the field."""


@dataclass(frozen=True, slots=True)
class Budget:
    tenant_id: str
    limit_usd: Decimal
    period: Period = Period.MONTHLY
    feature: str | None = None  # None: the whole tenant
    thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS  # percent of limit_usd

    @property
    def budget_id(self) -> str:
        """Deterministic: one budget per (tenant, feature, period); posting again replaces it."""
        # "/" (and "*", which stands for no feature) percent-encoded: ids cannot collide
        feature = escape_key_part(self.feature, "/*") if self.feature else "*"
        return f"{escape_key_part(self.tenant_id, '/*')}/{feature}/{self.period}"

    def covers(self, feature: str) -> bool:
        return self.feature is None or self.feature == feature

    def scope(self) -> Scope:
        return Scope(tenant_id=self.tenant_id, feature=self.feature)


def make_budget(*, tenant_id: Any, limit_usd: Any, period: Any = "monthly", feature: Any = None,
                thresholds: Any = None) -> Budget:
    """Validate user input into a Budget; errors name the field."""
    if not isinstance(tenant_id, str) or not tenant_id.strip():
        raise BudgetError("tenant_id: required")
    try:
        limit = Decimal(str(limit_usd))
    except ArithmeticError:
        raise BudgetError(f"limit_usd: not a decimal number: {limit_usd!r}") from None
    if not limit.is_finite() or limit <= 0:
        raise BudgetError("limit_usd: must be a positive number")
    try:
        per = Period(str(period))
    except ValueError:
        raise BudgetError("period: one of daily, monthly") from None
    if feature is not None and (not isinstance(feature, str) or not feature):
        raise BudgetError("feature: a non-empty string or null (the whole tenant)")
    ts = tuple(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    if not ts or any(isinstance(t, bool) or not isinstance(t, int) or not 0 < t <= 1000 for t in ts):
        raise BudgetError("thresholds: a non-empty list of integer percents in 1..1000")
    return Budget(tenant_id=tenant_id, limit_usd=limit, period=per, feature=feature, thresholds=tuple(sorted(set(ts))))


def period_bounds(period: Period, ts: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the UTC day or month containing ``ts``."""
    ts = ts.astimezone(UTC)
    if period is Period.DAILY:
        start = datetime(ts.year, ts.month, ts.day, tzinfo=UTC)
        return start, start + timedelta(days=1)
    start = datetime(ts.year, ts.month, 1, tzinfo=UTC)
    days = calendar.monthrange(ts.year, ts.month)[1]
    return start, start + timedelta(days=days)


# spend already stored for (budget, period start, period end), excluding these event ids
Seed = Callable[[Budget, datetime, datetime, frozenset[str]], Decimal]


@dataclass(slots=True)
class Running:
    total: Decimal
    fired: set[int] = field(default_factory=set)
    seeded_at: datetime | None = None
    last_seen: datetime | None = None


@dataclass(frozen=True, slots=True)
class SeedRequest:
    """The stored spend of ``budget`` in [start, end), without the events of the batch being
    processed (``exclude``: their ids), is needed before the batch can be accounted."""

    budget: Budget
    start: datetime
    end: datetime
    exclude: frozenset[str]

    @property
    def key(self) -> tuple[str, datetime]:
        return (self.budget.budget_id, self.start)


SeedTotals = Mapping[tuple[str, datetime], Decimal]  # SeedRequest.key -> stored spend


class BudgetSeeds(Protocol):
    """The port the worker's shell answers seed requests through (ClickHouse in production)."""

    async def totals(self, requests: Sequence[SeedRequest]) -> dict[tuple[str, datetime], Decimal]: ...


class BudgetTracker:
    """Running totals per tenant; ``observe(rows, columns, now=...)`` -> alerts."""

    def __init__(self, budgets: Callable[[], Sequence[Budget]], *, seed: Seed | None = None,
                 asks: bool = False, lateness: timedelta = timedelta(days=1),
                 reseed_idle: timedelta = timedelta(seconds=1), reseed_every: timedelta = timedelta(seconds=60)) -> None:
        """``asks``: totals are seeded from what the shell answers to :meth:`wanted` (passed to
        :meth:`observe` as ``seeds``); ``seed``: from this pure function; neither: from zero."""
        self._budgets = budgets
        self._seed = seed
        self._asks = asks or seed is not None
        self.lateness = lateness
        self.reseed_idle = reseed_idle
        self.reseed_every = reseed_every
        # tenant_id -> (budget_id, period start) -> Running: the tenant's owner holds all of it
        self.state: dict[str, dict[tuple[str, datetime], Running]] = {}
        self._index_of: tuple[int, dict[str, list[Budget]]] | None = None

    def _by_tenant(self) -> dict[str, list[Budget]]:
        budgets = self._budgets()
        if self._index_of is None or self._index_of[0] != id(budgets):
            index: dict[str, list[Budget]] = {}
            for b in budgets:
                index.setdefault(b.tenant_id, []).append(b)
            self._index_of = (id(budgets), index)
        return self._index_of[1]

    def total(self, budget: Budget, at: datetime) -> Decimal | None:
        start, _ = period_bounds(budget.period, at)
        running = self.state.get(budget.tenant_id, {}).get((budget.budget_id, start))
        return None if running is None else running.total

    def _per_tenant(self, rows: Iterable[Sequence[Any]], columns: Sequence[str],
                    by_tenant: dict[str, list[Budget]]) -> tuple[dict[str, list[Sequence[Any]]], tuple[int, ...]]:
        col = {name: i for i, name in enumerate(columns)}
        idx = (col["tenant_id"], col["feature"], col["ts"], col["cost_usd"], col["event_id"])
        i_tenant, i_cost = idx[0], idx[3]
        per_tenant: dict[str, list[Sequence[Any]]] = {}
        for row in rows:
            if row[i_cost] is not None and row[i_tenant] in by_tenant:
                per_tenant.setdefault(row[i_tenant], []).append(row)
        return per_tenant, idx

    def wanted(self, rows: Iterable[Sequence[Any]], columns: Sequence[str], *, now: datetime | None) -> list[SeedRequest]:
        """The seeds :meth:`observe` will need for these rows (same rows, ``now`` and state)."""
        by_tenant = self._by_tenant()
        if not by_tenant or not self._asks:
            return []
        per_tenant, (_, i_feature, i_ts, _, i_id) = self._per_tenant(rows, columns, by_tenant)
        out: list[SeedRequest] = []
        for tenant, tenant_rows in per_tenant.items():
            batch_ids = frozenset(str(r[i_id]) for r in tenant_rows)
            states = self.state.get(tenant, {})
            touched: set[tuple[str, datetime]] = set()
            for row in tenant_rows:
                for budget in by_tenant[tenant]:
                    if not budget.covers(row[i_feature]):
                        continue
                    start, end = period_bounds(budget.period, row[i_ts])
                    if now is not None and end + self.lateness <= now:
                        continue
                    key = (budget.budget_id, start)
                    if key in touched:
                        continue
                    touched.add(key)
                    running = states.get(key)
                    if running is None or self._stale(running, now):
                        out.append(SeedRequest(budget, start, end, batch_ids))
        return out

    def observe(self, rows: Iterable[Sequence[Any]], columns: Sequence[str], *, now: datetime | None,
                seeds: SeedTotals | None = None) -> list[Alert]:
        """Account the rows; ``seeds`` answers :meth:`wanted` for the same rows (``asks`` mode)."""
        by_tenant = self._by_tenant()
        if not by_tenant:
            return []
        per_tenant, (_, i_feature, i_ts, i_cost, i_id) = self._per_tenant(rows, columns, by_tenant)
        alerts: list[Alert] = []
        for tenant, tenant_rows in per_tenant.items():
            batch_ids = frozenset(str(r[i_id]) for r in tenant_rows)
            states = self.state.setdefault(tenant, {})
            touched: set[tuple[str, datetime]] = set()
            for row in tenant_rows:
                cost: Decimal = row[i_cost]
                ts: datetime = row[i_ts]
                for budget in by_tenant[tenant]:
                    if not budget.covers(row[i_feature]):
                        continue
                    start, end = period_bounds(budget.period, ts)
                    if now is not None and end + self.lateness <= now:
                        continue  # a closed period: stored and flagged late, no alert
                    key = (budget.budget_id, start)
                    running = states.get(key)
                    if key not in touched:
                        touched.add(key)
                        if running is None or self._stale(running, now):
                            request = SeedRequest(budget, start, end, batch_ids)
                            running = self._seeded(request, now, running, seeds)
                            states[key] = running
                    assert running is not None
                    running.total += cost
                    running.last_seen = now
                    for pct in budget.thresholds:
                        if pct not in running.fired and running.total >= budget.limit_usd * pct / 100:
                            running.fired.add(pct)
                            alerts.append(_alert(budget, pct, start, end, running.total, ts, str(row[i_id])))
            self._forget_closed(states, now)
        return alerts

    def _stale(self, running: Running, now: datetime | None) -> bool:
        if not self._asks or now is None:
            return False
        if running.seeded_at is None or running.last_seen is None:
            return True
        return now - running.last_seen > self.reseed_idle or now - running.seeded_at > self.reseed_every

    def _seeded(self, request: SeedRequest, now: datetime | None, old: Running | None,
                seeds: SeedTotals | None) -> Running:
        budget = request.budget
        if seeds is not None and request.key in seeds:
            total = seeds[request.key]
        elif self._seed is not None:
            total = self._seed(budget, request.start, request.end, request.exclude)
        elif self._asks and now is not None:
            raise LookupError(f"no seed for {request.key}: answer wanted() before observe()")
        else:
            return Running(total=Decimal(0), seeded_at=now, last_seen=now)
        # thresholds the stored spend already passed were alerted by whoever processed it
        fired = {p for p in budget.thresholds if total >= budget.limit_usd * p / 100}
        if old is not None:
            fired |= {p for p in old.fired if total >= budget.limit_usd * p / 100}
        return Running(total=total, fired=fired, seeded_at=now, last_seen=now)

    def _forget_closed(self, states: dict[tuple[str, datetime], Running], now: datetime | None) -> None:
        if now is None or len(states) < 8:
            return
        horizon = now - self.lateness - timedelta(days=31)
        for key in [k for k in states if k[1] < horizon]:
            del states[key]


def crossed_already(budget: Budget, spent: Decimal, start: datetime, end: datetime, *, at: datetime) -> list[Alert]:
    """The threshold alerts of a budget set when its period's spend ``spent`` had already passed
    them: nobody watched that spend against this budget, so they are raised now, once (the
    tracker, seeded later with that spend, counts them as fired)."""
    return [_alert(budget, pct, start, end, spent, at, None) for pct in budget.thresholds
            if spent >= budget.limit_usd * pct / 100]


def _alert(budget: Budget, pct: int, start: datetime, end: datetime, total: Decimal, ts: datetime,
           event_id: str | None) -> Alert:
    scope = budget.scope()
    threshold = budget.limit_usd * pct / 100
    severity: Literal["info", "warning", "critical"] = "critical" if pct >= 100 else "warning" if pct >= 80 else "info"
    return Alert(
        alert_id=alert_id_for(str(AlertKind.BUDGET_THRESHOLD), f"{budget.budget_id}|{pct}", int(start.timestamp())),
        kind=AlertKind.BUDGET_THRESHOLD, scope=scope, severity=severity, metric=f"budget_{budget.period}_pct_{pct}",
        observed=_text(total), baseline=_text(budget.limit_usd), threshold=_text(threshold),
        window_s=int((end - start).total_seconds()), first_seen=ts, last_seen=ts,
        sample_event_ids=[event_id] if event_id else [],
        summary=(f"{budget.budget_id}: spend ${_text(total)} reached {pct}% of the {budget.period} budget "
                 f"${_text(budget.limit_usd)} (period from {start.date().isoformat()})"),
    )


def _text(d: Decimal) -> str:
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"
