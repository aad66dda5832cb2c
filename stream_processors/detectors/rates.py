"""Detectors for failure proportions, count bursts and latency quantiles.

All three slide evaluation spans of 10-second event-time windows, the open one included, so
evidence is judged as it arrives (60 s; the proportion and latency tests also judge the last
5 minutes, which gives a quiet scope enough calls), over a per-scope baseline that learns only
from windows that have left the spans while no alert was open for the scope: an incident does
not teach the detector that it is normal. Alerts go through the shared :class:`AlertBook` (one per
kind and scope, resolved after ``resolve_s`` of normal evaluations).
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any

from flyball.schemas import Alert, AlertKind, Scope
from scipy.stats import binom, poisson  # type: ignore[import-untyped]

from .base import BASE_WINDOW_S, AlertBook, Evidence, fmt


def _scope(fields: tuple[str, ...], key: tuple[str, ...]) -> Scope:
    return Scope(**dict(zip(fields, key, strict=True)))


# ---------------------------------------------------------------------------------- binomial


@dataclass(frozen=True, slots=True)
class BinomialParams:
    """Failure-proportion regression test (error rate per provider+model, tool failure rate per
    tool, empty-result and error rate per retrieval index).

    baseline  p0 = (decayed failures + prior_rate * prior_n) / (decayed calls + prior_n): an
              EWMA of the proportion over past windows, half-life ``half_life_windows`` windows
              with traffic (180 x 10 s = 30 min), shrunk towards ``prior_rate`` while there is
              little data (a new model starts at 2 %, worth 200 calls);
    test      one-sided binomial test of k failures in the n calls of each span (the last 60 s,
              which reacts fast on a busy scope, and the last 5 min, which gives a quiet scope
              enough calls to judge), the smallest p-value wins:
              P(X >= k | n, p0) < ``alpha`` (1e-6: the span is re-tested on every batch, and a
              scope sees 1,440 spans a day, so the false-alert rate stays well under one a day);
    floors    k >= ``min_failures`` and the observed proportion at least ``min_delta`` above p0
              and ``factor`` times p0, so that a high-volume scope does not alert on a 0.3-point
              wobble that is significant but not actionable.
    """

    spans: tuple[int, ...] = (6, 30)
    half_life_windows: float = 180.0
    prior_rate: float = 0.02
    prior_n: float = 200.0
    alpha: float = 1e-6
    min_failures: int = 5
    min_delta: float = 0.05
    factor: float = 3.0


@dataclass(slots=True)
class _RateState:
    newest: int
    windows: dict[int, list[int]] = field(default_factory=dict)
    base_n: float = 0.0
    base_k: list[float] = field(default_factory=list)


@dataclass(slots=True)
class BinomialRateDetector:
    """``observe(key, window, counts)`` with counts = [calls, failures of class 0, class 1, ...]."""

    kind: AlertKind
    scope_fields: tuple[str, ...]
    classes: tuple[str, ...]
    book: AlertBook
    params: BinomialParams = field(default_factory=BinomialParams)
    state: dict[tuple[str, ...], _RateState] = field(default_factory=dict)

    def observe(self, key: tuple[str, ...], window: int, counts: list[int], first_ts: float, last_ts: float,
                event_ids: list[str]) -> Alert | None:
        p = self.params
        s = self.state.get(key)
        if s is None:
            s = self.state[key] = _RateState(newest=window, base_k=[0.0] * len(self.classes))
        if window <= s.newest - p.spans[-1]:
            return None  # late: outside the spans, no longer evidence of anything current
        acc = s.windows.get(window)
        if acc is None:
            s.windows[window] = list(counts)
        else:
            for i, c in enumerate(counts):
                acc[i] += c
        scope = _scope(self.scope_fields, key)
        if window > s.newest:
            s.newest = window
            self._absorb(s, scope)
        best: tuple[float, int, float, float, int, int, int] | None = None
        sums = {span: [0] * (len(self.classes) + 1) for span in p.spans}
        for w, counts_w in s.windows.items():
            for span, acc in sums.items():
                if w > s.newest - span:
                    for i, x in enumerate(counts_w):
                        acc[i] += x
        for span, (n, *ks) in sums.items():
            if max(ks) < p.min_failures:
                continue
            for i, k in enumerate(ks):
                if k < p.min_failures:
                    continue
                p0 = (s.base_k[i] + p.prior_rate * p.prior_n) / (s.base_n + p.prior_n)
                limit = max(p0 + p.min_delta, p.factor * p0)
                if k / n < limit:
                    continue
                pval = float(binom.sf(k - 1, n, p0))
                if pval < p.alpha and (best is None or pval < best[0]):
                    best = (pval, i, p0, limit, k, n, span)
        if best is None:
            return None
        pval, i, p0, limit, k, n, span = best
        rate = k / n
        cls = self.classes[i]
        ev = Evidence(
            severity="critical" if rate >= p0 + 0.25 else "warning", metric=f"{cls}_rate",
            observed=fmt(rate), baseline=fmt(p0), threshold=fmt(limit), score=rate / limit, p_value=pval,
            window_s=span * BASE_WINDOW_S, first_ts=first_ts, last_ts=last_ts, event_ids=event_ids,
            summary=f"{scope.key()}: {k} of {n} {cls} in the last {span * BASE_WINDOW_S}s "
                    f"({rate:.1%}, baseline {p0:.2%}, p={pval:.2g})",
        )
        return self.book.fire(self.kind, scope, ev)

    def _absorb(self, s: _RateState, scope: Scope) -> None:
        p = self.params
        learn = not self.book.is_open(self.kind, scope.key())
        decay = 0.5 ** (1.0 / p.half_life_windows)
        for w in sorted(w for w in s.windows if w <= s.newest - p.spans[-1]):
            counts = s.windows.pop(w)
            if learn:
                s.base_n = s.base_n * decay + counts[0]
                for i in range(len(s.base_k)):
                    s.base_k[i] = s.base_k[i] * decay + counts[i + 1]

    def evict(self, newest_window: int, idle_windows: int = 8640) -> None:
        for key in [k for k, s in self.state.items() if s.newest < newest_window - idle_windows]:
            del self.state[key]

    def snapshot(self) -> list[Any]:
        return [[list(k), s.newest, {str(w): c for w, c in s.windows.items()}, s.base_n, s.base_k]
                for k, s in self.state.items()]

    def restore(self, data: list[Any]) -> None:
        self.state = {tuple(k): _RateState(newest, {int(w): c for w, c in windows.items()}, base_n, list(base_k))
                      for k, newest, windows, base_n, base_k in data}


# ---------------------------------------------------------------------------------- poisson


@dataclass(frozen=True, slots=True)
class PoissonParams:
    """Count-burst test (safety triggers per tenant + feature + category).

    baseline  lambda = EWMA of the count per 10 s window, empty windows included, half-life
              ``half_life_windows`` (360 x 10 s = 1 hour: follows the daily cycle, not a burst),
              never below ``lambda_floor`` (0.05 per window = 0.3 a minute) so that a scope with
              no history is judged against a small but non-zero rate;
    test      one-sided Poisson test of the span's count k against mu = 6 * lambda:
              P(X >= k | mu) < ``alpha``;
    floors    k >= ``min_count`` and k >= ``factor`` * mu (relative burst, absolute floor);
              ``ceiling`` (per 60 s) alerts whatever the baseline, for a scope whose baseline has
              itself grown unacceptable.
    """

    span_windows: int = 6
    half_life_windows: float = 360.0
    lambda_floor: float = 0.05
    alpha: float = 1e-6
    min_count: int = 6
    factor: float = 4.0
    ceiling: int | None = 120


@dataclass(slots=True)
class _CountState:
    newest: int
    last_absorbed: int
    windows: dict[int, int] = field(default_factory=dict)
    lam: float = 0.0


@dataclass(slots=True)
class PoissonBurstDetector:
    kind: AlertKind
    scope_fields: tuple[str, ...]
    book: AlertBook
    metric: str = "triggers_per_60s"
    params: PoissonParams = field(default_factory=PoissonParams)
    state: dict[tuple[str, ...], _CountState] = field(default_factory=dict)

    def observe(self, key: tuple[str, ...], window: int, count: int, first_ts: float, last_ts: float,
                event_ids: list[str]) -> Alert | None:
        p = self.params
        s = self.state.get(key)
        if s is None:
            s = self.state[key] = _CountState(newest=window, last_absorbed=window - p.span_windows)
        if window <= s.newest - p.span_windows:
            return None
        s.windows[window] = s.windows.get(window, 0) + count
        scope = _scope(self.scope_fields, key)
        if window > s.newest:
            s.newest = window
            self._absorb(s, scope)
        k = sum(s.windows.values())
        mu = p.span_windows * max(s.lam, p.lambda_floor)
        ceiling = p.ceiling is not None and k >= p.ceiling
        if not ceiling and (k < p.min_count or k < p.factor * mu):
            return None
        pval = float(poisson.sf(k - 1, mu))
        if not ceiling and pval >= p.alpha:
            return None
        limit = max(float(p.min_count), p.factor * mu)
        ev = Evidence(
            severity="critical" if ceiling or k >= 3 * limit else "warning", metric=self.metric,
            observed=str(k), baseline=fmt(mu), threshold=fmt(limit), score=k / limit, p_value=pval,
            window_s=p.span_windows * BASE_WINDOW_S, first_ts=first_ts, last_ts=last_ts, event_ids=event_ids,
            summary=f"{scope.key()}: {k} in the last {p.span_windows * BASE_WINDOW_S}s, "
                    f"baseline {mu:.2f} (p={pval:.2g})",
        )
        return self.book.fire(self.kind, scope, ev)

    def _absorb(self, s: _CountState, scope: Scope) -> None:
        p = self.params
        learn = not self.book.is_open(self.kind, scope.key())
        decay = 0.5 ** (1.0 / p.half_life_windows)
        upto = s.newest - p.span_windows
        for w in sorted(w for w in s.windows if w <= upto):
            x = s.windows.pop(w)
            if learn:
                s.lam = s.lam * decay ** (w - s.last_absorbed) + (1 - decay) * x
            s.last_absorbed = w
        if upto > s.last_absorbed:  # the empty windows since the last one count as zeros
            if learn:
                s.lam *= decay ** (upto - s.last_absorbed)
            s.last_absorbed = upto

    def evict(self, newest_window: int, idle_windows: int = 8640) -> None:
        for key in [k for k, s in self.state.items() if s.newest < newest_window - idle_windows]:
            del self.state[key]

    def snapshot(self) -> list[Any]:
        return [[list(k), s.newest, s.last_absorbed, {str(w): c for w, c in s.windows.items()}, s.lam]
                for k, s in self.state.items()]

    def restore(self, data: list[Any]) -> None:
        self.state = {tuple(k): _CountState(newest, last, {int(w): c for w, c in windows.items()}, lam)
                      for k, newest, last, windows, lam in data}


# ---------------------------------------------------------------------------------- latency


@dataclass(frozen=True, slots=True)
class LatencyParams:
    """p95 regression test (latency and time-to-first-token per provider+model, latency per tool).

    baseline  q0 = the ``quantile`` (p95) of a ring of the last ``ring_size`` values seen outside
              incidents (values leave the 60 s span into the ring; up to ``per_window`` per window,
              evenly strided, so a busy scope's ring still spans several minutes); needs
              ``min_baseline`` values (cold start);
    test      exceedance test: under no change, each value exceeds q0 with probability 5 %; a
              one-sided binomial test of the k of n values above q0, P(X >= k) < ``alpha``, in
              each span (the last 60 s and the last 5 min, for a model with few calls);
    floors    n >= ``min_n``, the span's own p95 >= ``factor`` x q0 and >= q0 + ``min_delta_ms``
              (a significant 20 ms drift is not an incident).
    """

    spans: tuple[int, ...] = (6, 30)
    ring_size: int = 1024
    per_window: int = 64
    min_baseline: int = 200
    quantile: float = 0.95
    alpha: float = 1e-6
    min_n: int = 12
    factor: float = 1.5
    min_delta_ms: float = 250.0


@dataclass(slots=True)
class _LatState:
    newest: int
    windows: dict[int, list[float]] = field(default_factory=dict)
    ring: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    pos: int = 0
    q0: float | None = None
    fresh: int = 0  # values absorbed since q0 was computed
    counts: dict[int, tuple[float, int, int]] = field(default_factory=dict)  # window -> (q0, n, n above q0)


@dataclass(slots=True)
class LatencyDetector:
    kind: AlertKind
    scope_fields: tuple[str, ...]
    book: AlertBook
    metric: str = "latency_ms_p95"
    params: LatencyParams = field(default_factory=LatencyParams)
    state: dict[tuple[str, ...], _LatState] = field(default_factory=dict)

    def observe(self, key: tuple[str, ...], window: int, values: list[float], first_ts: float, last_ts: float,
                event_ids: list[str]) -> Alert | None:
        p = self.params
        s = self.state.get(key)
        if s is None:
            s = self.state[key] = _LatState(newest=window)
        if window <= s.newest - p.spans[-1]:
            return None
        acc = s.windows.get(window)
        if acc is None:
            s.windows[window] = list(values)
        else:
            acc.extend(values)
        scope = _scope(self.scope_fields, key)
        if window > s.newest:
            s.newest = window
            self._absorb(s, scope)
        if len(s.ring) < p.min_baseline:
            return None
        if s.q0 is None or s.fresh >= p.per_window:  # re-sort the ring once per ``per_window`` new values
            s.q0 = _quantile(sorted(s.ring), p.quantile)
            s.fresh = 0
        q0 = s.q0
        tail = 1.0 - p.quantile
        limit = max(p.factor * q0, q0 + p.min_delta_ms)
        found: tuple[float, float, int, int, int] | None = None
        for span in p.spans:
            n = k = 0
            for w, vals in s.windows.items():
                if w > s.newest - span:
                    c = s.counts.get(w)
                    if c is None or c[0] != q0 or c[1] != len(vals):
                        c = s.counts[w] = (q0, len(vals), sum(1 for v in vals if v > q0))
                    n += c[1]
                    k += c[2]
            if n < p.min_n or k < 3 * tail * n or k < 3:
                continue
            q = _quantile(sorted(v for w, vals in s.windows.items() if w > s.newest - span for v in vals), p.quantile)
            if q < limit:
                continue
            pval = float(binom.sf(k - 1, n, tail))
            if pval < p.alpha and (found is None or pval < found[1]):
                found = (q, pval, n, k, span)
        if found is None:
            return None
        q, pval, n, k, span = found
        ev = Evidence(
            severity="critical" if q >= 3 * q0 else "warning", metric=self.metric, observed=fmt(q),
            baseline=fmt(q0), threshold=fmt(limit), score=q / limit, p_value=pval,
            window_s=span * BASE_WINDOW_S, first_ts=first_ts, last_ts=last_ts, event_ids=event_ids,
            summary=f"{scope.key()}: {self.metric} {q:.0f} ms over {n} calls in the last "
                    f"{span * BASE_WINDOW_S}s, baseline {q0:.0f} ms ({k} above it, p={pval:.2g})",
        )
        return self.book.fire(self.kind, scope, ev)

    def _absorb(self, s: _LatState, scope: Scope) -> None:
        p = self.params
        learn = not self.book.is_open(self.kind, scope.key())
        for w in sorted(w for w in s.windows if w <= s.newest - p.spans[-1]):
            vals = s.windows.pop(w)
            s.counts.pop(w, None)
            if not learn or not vals:
                continue
            step = max(1, math.ceil(len(vals) / p.per_window))
            for v in vals[::step]:
                if len(s.ring) < p.ring_size:
                    s.ring.append(v)
                else:
                    s.ring[s.pos] = v
                    s.pos = (s.pos + 1) % p.ring_size
            s.fresh += len(vals[::step])

    def evict(self, newest_window: int, idle_windows: int = 8640) -> None:
        for key in [k for k, s in self.state.items() if s.newest < newest_window - idle_windows]:
            del self.state[key]

    def snapshot(self) -> list[Any]:
        return [[list(k), s.newest, {str(w): v for w, v in s.windows.items()}, list(s.ring), s.pos]
                for k, s in self.state.items()]

    def restore(self, data: list[Any]) -> None:
        self.state = {tuple(k): _LatState(newest, {int(w): v for w, v in windows.items()}, array("d", ring), pos)
                      for k, newest, windows, ring, pos in data}


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of a sorted list."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
