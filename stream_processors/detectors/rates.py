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
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flyball.schemas import Alert, AlertKind, Scope
from scipy.stats import binom, nbinom

from .base import BASE_WINDOW_S, AlertBook, Evidence, ScopeBound, fmt
from .sensitivity import SensitivityTable


def _scope(fields: tuple[str, ...], key: tuple[str, ...]) -> Scope:
    return Scope(**dict(zip(fields, key, strict=True)))


def _leaving(windows: dict[int, Any], old_newest: int, newest: int, longest: int) -> list[int]:
    """``sorted(w for w in windows if w <= newest - longest)`` after newest moved up from
    ``old_newest``. Every window is > old_newest - longest (late ones are refused, older ones were
    absorbed when newest last moved), so when newest moved by at most ``longest`` only that range
    of windows needs looking up."""
    cut = newest - longest
    if newest - old_newest > longest or newest - old_newest > len(windows):
        return sorted(w for w in windows if w <= cut)
    return [w for w in range(old_newest - longest + 1, cut + 1) if w in windows]


def _sum_above(windows: dict[int, list[int]], width: int, cut: int) -> list[int]:
    """The counts (``width`` of them per window) summed over the windows with w > ``cut``."""
    sums = [0] * width
    for w, counts_w in windows.items():
        if w > cut:
            for i, x in enumerate(counts_w):
                sums[i] += x
    return sums


def _windows_out(windows: dict[int, Any]) -> dict[str, Any]:
    """A state's windows as JSON (string keys); :func:`_windows_in` undoes it."""
    return {str(w): v for w, v in windows.items()}


def _windows_in(windows: dict[str, Any]) -> dict[int, Any]:
    return {int(w): v for w, v in windows.items()}


class _ScopedDetector:
    """What the detectors below share: per-scope ``state`` (each with ``newest``, its newest window,
    and ``scope_key``), alerts of one ``kind`` through ``book``."""

    __slots__ = ()
    kind: AlertKind
    scope_fields: tuple[str, ...]
    book: AlertBook
    state: dict[tuple[str, ...], Any]
    bound: ScopeBound

    def _admit(self, key: tuple[str, ...]) -> bool:
        """Room for a new scope (the first scope field is its tenant where the scope names one)."""
        return self.bound.admit(len(self.state), key[0])

    def _learns(self, s: Any, key: tuple[str, ...]) -> bool:
        """Whether windows leaving the spans may teach the scope's baseline (``AlertBook.learns``).
        The scope's text key is made once per state (a Scope is only built for an alert)."""
        text = s.scope_key
        if text is None:
            text = s.scope_key = _scope(self.scope_fields, key).key()
        return self.book.learns(self.kind, text, s.newest * BASE_WINDOW_S)

    def evict(self, newest_window: int, idle_windows: int = 8640) -> None:
        for key in [k for k, s in self.state.items() if s.newest < newest_window - idle_windows]:
            del self.state[key]
        self._recount()

    def _recount(self) -> None:
        """The bound's per-tenant counts from the scopes held (after an eviction or an adoption)."""
        self.bound.recount(k[0] for k in self.state)


# ---------------------------------------------------------------------------------- binomial


@dataclass(frozen=True, slots=True)
class BinomialParams:
    """Failure-proportion regression test (error rate per provider+model, tool failure rate per
    tool, empty-result and error rate per retrieval index).

    baseline  p0 = (decayed failures + prior_rate * prior_n) / (decayed calls + prior_n): an
              EWMA of the proportion over past windows, half-life ``half_life_windows`` windows
              with traffic (360 x 10 s = 1 hour), shrunk towards ``prior_rate`` while there is
              little data (a new model starts at 2 %, worth 20 calls); a scope is judged at the
              kind's ``p_value`` once it is ``min_history`` windows old (1 hour) and
              ``min_history_n`` calls (decayed) have left the spans into its baseline; before (cold
              start), only on overwhelming evidence (p < ``p_value`` squared);
    test      one-sided exact binomial test of k failures in the n calls of each span (the last
              1, 5 and 15 minutes: fast on a busy scope, enough calls on a quiet one), the smallest
              p-value wins: P(X >= k | n, p0) < the kind's ``p_value`` (``Sensitivity``);
    floors    k >= the kind's ``min_events`` (minimum evidence), the observed proportion at least
              ``min_ratio`` times p0 (business size relative to the scope's own history) and at
              least ``min_delta`` (2 points) above it, so that a busy scope does not page for a
              0.3-point wobble that is significant but not actionable; ``confirm`` abnormal windows.
    """

    spans: tuple[int, ...] = (6, 12, 18, 30, 60, 90, 180, 360)
    half_life_windows: float = 360.0
    prior_rate: float = 0.02
    prior_n: float = 20.0
    prior_fleet_n: float = 200.0
    min_delta: float = 0.02
    min_history_n: float = 30.0
    min_history: int = 720


@dataclass(slots=True)
class _RateState:
    newest: int
    windows: dict[int, list[int]] = field(default_factory=dict)
    base_n: float = 0.0
    base_k: list[float] = field(default_factory=list)
    since: int = 0  # the scope's first window
    # derived, not in a snapshot: the counts summed over the windows of the longest span (kept as
    # windows come and go, integers so exact; None until first needed, e.g. after a restore) and
    # the scope's text key
    totals: list[int] | None = None
    scope_key: str | None = None
    pooled: bool = False  # in the fleet (a mature scope: see ``BinomialRateDetector.fleet``)


@dataclass(slots=True)
class BinomialRateDetector(_ScopedDetector):
    """``observe(key, window, counts)`` with counts = [calls, failures of class 0, class 1, ...]."""

    kind: AlertKind
    scope_fields: tuple[str, ...]
    classes: tuple[str, ...]
    book: AlertBook
    params: BinomialParams = field(default_factory=BinomialParams)
    sensitivity: SensitivityTable = field(default_factory=SensitivityTable)
    state: dict[tuple[str, ...], _RateState] = field(default_factory=dict)
    bound: ScopeBound = field(default_factory=ScopeBound)  # scopes tracked at once (base.ScopeBound)
    # the sums of the decayed baselines of the mature scopes (calls, then failures per class):
    # the fleet's share, the prior of a young scope (derived: recomputed on restore and eviction).
    # Only scopes past their own cold start are pooled: a young scope's share is not yet known,
    # and a fleet of scopes that all started together would judge each against itself
    fleet: list[float] = field(default_factory=list)
    # the same sums over every scope, mature or not: the prior while the fleet is too small (kept
    # as baselines change, so that a young scope's look is not a pass over every scope: with a
    # new model name on every call that pass made each call cost the number of scopes)
    everyone: list[float] = field(default_factory=list)

    def mature(self, s: _RateState) -> bool:
        """Past the cold start: ``min_history`` windows old with ``min_history_n`` calls learned."""
        p = self.params
        return s.base_n >= p.min_history_n and s.newest - s.since >= p.min_history

    def prior(self) -> float:
        """The prior failure share (all classes) of a scope: the fleet's (every mature scope of
        this detector pooled) once it has ``prior_fleet_n`` calls; while no scope is mature (a
        new deployment), every scope's; else ``prior_rate``. The pooled share is shrunk towards
        ``prior_rate`` with ``prior_fleet_n`` pseudo-calls (zero failures in a small fleet is
        not a share of zero)."""
        p = self.params
        fleet = self.fleet
        if fleet and fleet[0] >= p.prior_fleet_n:
            n, k = fleet[0], sum(fleet[1:])
        else:
            everyone = self._everyone()
            n = everyone[0]
            if n < p.prior_fleet_n:
                return p.prior_rate
            k = sum(everyone[1:])
        # the pooled share is an estimate, not a fact: shrunk towards ``prior_rate`` worth
        # ``prior_fleet_n`` calls (a Beta prior), so that a fleet of a few hundred calls and no
        # failure gives about 1 %, not 0 % (against which any failure would be "significant")
        return (k + p.prior_rate * p.prior_fleet_n) / (n + p.prior_fleet_n)

    def _has_fleet(self) -> bool:
        p = self.params
        if self.fleet and self.fleet[0] >= p.prior_fleet_n:
            return True
        return self._everyone()[0] >= p.prior_fleet_n

    def observe(self, key: tuple[str, ...], window: int, counts: list[int], first_ts: float, last_ts: float,
                event_ids: list[str]) -> Alert | None:
        p = self.params
        s = self.state.get(key)
        if s is None:
            if not self._admit(key):
                return None
            s = self.state[key] = _RateState(newest=window, base_k=[0.0] * len(self.classes), since=window)
        longest = p.spans[-1]
        if window <= s.newest - longest:
            return None  # late: outside the spans, no longer evidence of anything current
        totals = s.totals
        if totals is None:  # the windows with w > newest - longest span
            totals = s.totals = _sum_above(s.windows, len(self.classes) + 1, s.newest - longest)
        windows = s.windows
        acc = windows.get(window)
        if acc is None:
            windows[window] = list(counts)
        else:
            for i, c in enumerate(counts):
                acc[i] += c
        for i, c in enumerate(counts):
            totals[i] += c
        if window > s.newest:
            old_newest = s.newest
            s.newest = window
            self._absorb(s, key, old_newest)
        newest = s.newest
        width = len(self.classes) + 1
        sens = self.sensitivity.of(self.kind)
        least = sens.min_events
        young = not self.mature(s)
        if young and not self._has_fleet():
            return None  # cold start with nothing to compare against: no verdict
        # cold start: overwhelming evidence only, and against ``min_ratio`` x the share its
        # history and the fleet give (scopes differ: a tool that always fails 4 % is no incident
        # against a fleet's 1.3 %)
        bar = sens.p_value ** 2 if young else sens.p_value
        prior = self.prior()
        base_k = sum(s.base_k)
        p0 = (base_k + prior * p.prior_n) / (s.base_n + p.prior_n)
        limit = max(p0 + p.min_delta, sens.min_ratio * p0)
        null = min(0.5, sens.null_ratio * p0)  # a young scope's are set per span, below
        life = newest - s.since + 1
        best: tuple[float, int, float, float, int, int, int] | None = None
        acc, w = [0] * width, newest  # the sums of the windows above w, spans growing in order
        for span in p.spans:
            if young and life - span < span:
                # a young scope is judged on a span only against at least as long a past of its
                # own (a tool whose normal is 4 % of failures is no incident in its first hour
                # because the fleet fails 0.3 %; nor is its first hour against its first minutes)
                continue
            if span == longest:
                sums = totals  # the windows with w > newest - longest: all of them but late leftovers
            else:  # no window is newer than newest: look the span's windows up
                while w > newest - span:
                    counts_w = windows.get(w)
                    if counts_w is not None:
                        for i, x in enumerate(counts_w):
                            acc[i] += x
                    w -= 1
                sums = acc
            n, *ks = sums
            k = sum(ks)
            if k < least:
                continue
            if young:  # its own past outside the span (the baseline and the older windows), with the prior
                past_n, past_k = s.base_n + totals[0] - n, base_k + sum(totals[1:]) - k
                p0 = (past_k + prior * p.prior_n) / (past_n + p.prior_n)
                limit = max(p0 + p.min_delta, sens.min_ratio * p0)
                null = min(0.5, sens.min_ratio * p0)
            # the failures of every class together against the scope's usual failure share (one
            # test, not one per class: a class's own share can be tiny, and three classes would
            # be three chances of a fluke); the alert names the class with the most failures
            if k / n < limit:
                continue
            pval = float(binom.sf(k - 1, n, null))
            if pval < bar and (best is None or pval < best[0]):
                best = (pval, ks.index(max(ks)), p0, limit, k, n, span)
        if best is None:
            return None
        pval, i, p0, limit, k, n, span = best
        rate = k / n
        cls = self.classes[i]
        scope = _scope(self.scope_fields, key)
        spread = sum(1 for w, c in windows.items() if w > newest - span and any(c[1:]))  # windows with failures
        ev = Evidence(evidence_windows=spread,
            severity="critical" if rate >= p0 + 0.25 else "warning", metric=f"{cls}_rate",
            observed=fmt(rate), baseline=fmt(p0), threshold=fmt(limit), score=rate / limit, p_value=pval,
            window_s=span * BASE_WINDOW_S, first_ts=first_ts, last_ts=last_ts, event_ids=event_ids,
            summary=f"{scope.key()}: {k} of {n} failed in the last {span * BASE_WINDOW_S}s, most of them "
                    f"{cls} ({rate:.1%}, baseline {p0:.2%}, p={pval:.2g})",
        )
        return self.book.fire(self.kind, scope, ev, confirm=sens.confirmations(pval), confirm_s=sens.confirm_s)

    def _absorb(self, s: _RateState, key: tuple[str, ...], old_newest: int) -> None:
        p = self.params
        done = _leaving(s.windows, old_newest, s.newest, p.spans[-1])
        if not done:
            return
        learn = self._learns(s, key)
        decay = 0.5 ** (1.0 / p.half_life_windows)
        counted = old_newest - p.spans[-1]  # the windows above this were in the totals
        totals = s.totals
        for w in done:
            counts = s.windows.pop(w)
            if totals is not None and w > counted:
                for i, c in enumerate(counts):
                    totals[i] -= c
            if learn:
                fleet = self.fleet or self._refleet()  # and ``everyone`` with it
                everyone = self.everyone
                new = s.base_n * decay + counts[0]
                everyone[0] += new - s.base_n
                if s.pooled:
                    fleet[0] += new - s.base_n
                s.base_n = new
                for i in range(len(s.base_k)):
                    new = s.base_k[i] * decay + counts[i + 1]
                    everyone[i + 1] += new - s.base_k[i]
                    if s.pooled:
                        fleet[i + 1] += new - s.base_k[i]
                    s.base_k[i] = new
        if not s.pooled and self.mature(s):
            self._refleet()  # its share is now known: it joins the fleet

    def _everyone(self) -> list[float]:
        if not self.everyone:
            self._refleet()
        return self.everyone

    def _refleet(self) -> list[float]:
        """Recompute the sums (the mature scopes' and everyone's) from the scopes."""
        fleet = [0.0] * (len(self.classes) + 1)
        everyone = [0.0] * (len(self.classes) + 1)
        for s in self.state.values():
            s.pooled = self.mature(s)
            everyone[0] += s.base_n
            for i, k in enumerate(s.base_k):
                everyone[i + 1] += k
            if s.pooled:
                fleet[0] += s.base_n
                for i, k in enumerate(s.base_k):
                    fleet[i + 1] += k
        self.fleet = fleet
        self.everyone = everyone
        return fleet

    def evict(self, newest_window: int, idle_windows: int = 8640) -> None:
        _ScopedDetector.evict(self, newest_window, idle_windows)
        self._refleet()

    def snapshot(self) -> list[Any]:
        return [[list(k), s.newest, _windows_out(s.windows), s.base_n, s.base_k, s.since]
                for k, s in self.state.items()]

    def restore(self, data: list[Any]) -> None:
        self.state = {tuple(k): _RateState(newest, _windows_in(windows), base_n, list(base_k), since)
                      for k, newest, windows, base_n, base_k, since in data}
        self._refleet()


# ---------------------------------------------------------------------------------- poisson


@dataclass(frozen=True, slots=True)
class PoissonParams:
    """Count-burst test (safety triggers per tenant + feature, all categories).

    baseline  lambda ~ Gamma(C + prior_rate * prior_windows, E + prior_windows), where C is the
              count and E the number of 10 s windows seen (and, per call, the calls seen), all
              decayed with half-life ``half_life_windows`` (2160 x 10 s = 6 hours: a quiet
              feature's few triggers a day are most of what is known of it; the daily cycle is the
              per-call test's business): the Gamma-Poisson posterior. A new scope starts at
              ``prior_rate`` (one trigger an hour) worth ``prior_windows`` (5 minutes) of
              evidence, and its own history takes over as it grows; a quiet scope's rate is its
              own, not a fixed floor; a scope is judged at the kind's ``p_value``
              ``min_history`` windows (2 hours: an hour of baseline beyond the longest span) after
              its first LLM call or trigger; before (cold start), only its last minute, against
              its whole life before that minute, on overwhelming evidence (p < ``p_value``
              squared: a never-seen feature that suddenly fires a dozen triggers a minute, not
              one whose usual rate is still unknown);
    test      exact one-sided test of each span's count k (the last 1, 5, 15 and 60 minutes)
              against the posterior predictive (negative binomial) of ``null_ratio`` x the rate
              over the span: P(X >= k) < the kind's ``p_value``; and the same per call;
    floors    k >= the kind's ``min_events`` and k >= ``min_ratio`` x mu (``Sensitivity``);
              ``ceiling`` (per 60 s) alerts whatever the baseline, for a scope whose baseline has
              itself grown unacceptable.
    """

    spans: tuple[int, ...] = (6, 30, 90, 360)
    half_life_windows: float = 2160.0
    prior_rate: float = 1 / 360
    prior_windows: float = 30.0
    min_history: int = 720
    ceiling: int | None = 120


@dataclass(slots=True)
class _CountState:
    newest: int
    last_absorbed: int
    windows: dict[int, int] = field(default_factory=dict)
    count: float = 0.0     # decayed count absorbed
    exposure: float = 0.0  # decayed number of windows absorbed
    history: int = 0       # windows seen since the scope's first trigger (capped)
    calls: dict[int, int] = field(default_factory=dict)  # the scope's LLM calls per window (``expose``)
    called: float = 0.0    # decayed calls absorbed (the same decay as ``count``)
    scope_key: str | None = None  # derived, not in a snapshot


@dataclass(slots=True)
class PoissonBurstDetector(_ScopedDetector):
    kind: AlertKind
    scope_fields: tuple[str, ...]
    book: AlertBook
    metric: str = "triggers_per_window"
    params: PoissonParams = field(default_factory=PoissonParams)
    sensitivity: SensitivityTable = field(default_factory=SensitivityTable)
    state: dict[tuple[str, ...], _CountState] = field(default_factory=dict)
    bound: ScopeBound = field(default_factory=ScopeBound)  # scopes tracked at once (base.ScopeBound)

    def _at(self, key: tuple[str, ...], window: int) -> _CountState | None:
        """The scope's state moved on to ``window`` (created at its first call or trigger), or
        None when the window is older than the longest span (no longer evidence of anything)."""
        longest = self.params.spans[-1]
        s = self.state.get(key)
        if s is None:
            if not self._admit(key):
                return None
            s = self.state[key] = _CountState(newest=window, last_absorbed=window - longest)
        if window <= s.newest - longest:
            return None
        if window > s.newest:
            s.history = min(s.history + window - s.newest, 1 << 20)
            s.newest = window
            self._absorb(s, key)
        return s

    def expose(self, key: tuple[str, ...], window: int, calls: int) -> None:
        """The scope's LLM calls in a window: the exposure of the per-call test. A scope's
        history starts with its first call, not its first trigger: a feature that has served
        calls for hours without a trigger has a known, low rate (and is past its cold start when
        its first burst comes)."""
        s = self._at(key, window)
        if s is not None:
            s.calls[window] = s.calls.get(window, 0) + calls

    def observe(self, key: tuple[str, ...], window: int, count: int, first_ts: float, last_ts: float,
                event_ids: list[str]) -> Alert | None:
        p = self.params
        longest = p.spans[-1]
        s = self._at(key, window)
        if s is None:
            return None
        s.windows[window] = s.windows.get(window, 0) + count
        sens = self.sensitivity.of(self.kind, key[0])
        newest = s.newest
        if s.history >= p.min_history:
            bar, spans = sens.p_value, p.spans
            triggers, calls, exposure = s.count, s.called, s.exposure
        else:
            # cold start: no baseline beyond the spans yet. Only the last minute is judged, against
            # the scope's whole life before it (its windows still in the spans count), and only on
            # overwhelming evidence: a feature that suddenly fires a dozen triggers a minute, not
            # one whose usual rate is still unknown
            first = p.spans[0]
            triggers = s.count + sum(x for w, x in s.windows.items() if w <= newest - first)
            calls = s.called + sum(x for w, x in s.calls.items() if w <= newest - first)
            exposure = s.exposure + max(0, min(s.history, p.spans[-1]) - first)
            bar, spans = sens.p_value ** 2, p.spans[:1]
        # the usual rate is an estimate from the scope's own few counts, not a fact: Gamma(alpha,
        # beta) per window (the prior of one trigger an hour worth ``prior_windows``), and a span's
        # count is judged against the posterior predictive, a negative binomial (the Poisson at the
        # point estimate took 4 triggers an hour on a feature with none in its first hour, "0.07 an
        # hour", for p = 1e-6)
        alpha = triggers + p.prior_rate * p.prior_windows
        beta = exposure + p.prior_windows
        lam = alpha / beta
        # per call: the same count against the scope's calls (the prior: one trigger an hour's
        # worth of its calls); None for a scope without calls (a filter in front of no model)
        beta_calls = None
        if calls > 0:
            beta_calls = calls + calls / max(exposure, 1.0) * p.prior_windows
        # an alert of this scope resolved lately: its incident is still in the long spans, and
        # only the windows after its last abnormal evidence are new evidence
        text = s.scope_key
        if text is None:
            text = s.scope_key = _scope(self.scope_fields, key).key()
        closed = self.book.closed_at(self.kind, text, first_ts)
        after = newest - longest if closed is None else max(newest - longest, int(closed // BASE_WINDOW_S))
        best: tuple[float, int, float, int, int | None] | None = None  # p, k, mu, span, calls (None: per time)
        ceiling = False
        for span in spans:
            span = min(span, newest - after)
            if span <= 0:
                continue
            k = sum(x for w, x in s.windows.items() if w > newest - span)
            mu = span * lam
            if span == p.spans[0] and p.ceiling is not None and k >= p.ceiling:
                ceiling = True
                best = (_predictive_tail(k, alpha, beta, span), k, mu, span, None)
                break
            if k < sens.min_events:
                continue
            if beta_calls is not None and sens.call_ratio:
                # per call, for a scope with calls: a busy hour or a burst of traffic brings its
                # triggers with its calls; an incident raises the triggers per call. The test per
                # unit of time is not asked as well: it knows no daily cycle, so at a quiet hour
                # it vetoed what the calls show (7 triggers in 18 calls against 0.26 expected, a
                # 30x burst at an hour of a third of the usual calls, judged against the day's average hour)
                n = sum(x for w, x in s.calls.items() if w > newest - span)
                mu = n * alpha / beta_calls
                if k < sens.call_ratio * mu:
                    continue
                pval = _predictive_tail(k, alpha, beta_calls, sens.call_null * n)
                judged: int | None = n  # per call: the span's calls
            else:
                if k < sens.min_ratio * mu:
                    continue
                judged = None
                pval = _predictive_tail(k, alpha, beta, sens.null_ratio * span)
            if pval >= bar:
                continue
            if best is None or pval < best[0]:
                best = (pval, k, mu, span, judged)
        if best is None:
            return None
        pval, k, mu, span, per_call = best
        limit = max(float(sens.min_events), (sens.min_ratio if per_call is None else sens.call_ratio) * mu)
        usual = f"{mu / span * 360:.2g} an hour" if per_call is None else f"in its {per_call} calls"
        scope = _scope(self.scope_fields, key)
        spread = sum(1 for w, x in s.windows.items() if w > newest - span and x)
        ev = Evidence(evidence_windows=spread,
            severity="critical" if ceiling or k >= 3 * limit else "warning", metric=self.metric,
            observed=str(k), baseline=fmt(mu), threshold=fmt(limit), score=k / limit, p_value=pval,
            window_s=span * BASE_WINDOW_S, first_ts=first_ts, last_ts=last_ts, event_ids=event_ids,
            summary=f"{scope.key()}: {k} in the last {span * BASE_WINDOW_S}s, "
                    f"usually {mu:.2f} ({usual}; p={pval:.2g})",
        )
        return self.book.fire(self.kind, scope, ev, confirm=1 if ceiling else sens.confirmations(pval),
                              confirm_s=sens.confirm_s)

    def _absorb(self, s: _CountState, key: tuple[str, ...]) -> None:
        p = self.params
        learn = self._learns(s, key)
        decay = 0.5 ** (1.0 / p.half_life_windows)
        upto = s.newest - p.spans[-1]
        calls = s.calls
        for w in sorted({w for w in s.windows if w <= upto} | {w for w in calls if w <= upto}):
            x = s.windows.pop(w, 0)
            n = calls.pop(w, 0)
            if learn:  # the empty windows since the last one count as zeros
                d = decay ** (w - s.last_absorbed)
                s.count = s.count * d + x
                s.called = s.called * d + n
                s.exposure = s.exposure * d + (w - s.last_absorbed)
            s.last_absorbed = w
        if upto > s.last_absorbed:
            if learn:
                d = decay ** (upto - s.last_absorbed)
                s.count *= d
                s.called *= d
                s.exposure = s.exposure * d + (upto - s.last_absorbed)
            s.last_absorbed = upto

    def snapshot(self) -> list[Any]:
        return [[list(k), s.newest, s.last_absorbed, _windows_out(s.windows), s.count, s.exposure, s.history,
                 _windows_out(s.calls), s.called] for k, s in self.state.items()]

    def restore(self, data: list[Any]) -> None:
        self.state = {}
        self.adopt(data, lambda tenant: True)

    def adopt(self, data: list[Any], owns: Callable[[str], bool]) -> int:
        """Take the baselines of another replica's :meth:`snapshot` for the scopes whose tenant
        (the first scope field) ``owns`` says this replica now consumes and that it has no state
        for yet (see ``RateSpikeDetector.adopt``). The number of scopes taken."""
        taken = 0
        for k, newest, last, windows, count, exposure, history, *per_call in data:
            key = tuple(k)
            if key not in self.state and owns(key[0]):
                # a snapshot from before the per-call test: its calls start empty
                calls, called = per_call or ({}, 0.0)
                self.state[key] = _CountState(newest, last, _windows_in(windows), count, exposure, history,
                                              _windows_in(calls), called)
                taken += 1
        self._recount()
        return taken


def _predictive_tail(k: int, alpha: float, beta: float, exposure: float) -> float:
    """P(X >= k) for the count X over ``exposure`` (windows or calls) of a rate known as
    Gamma(``alpha``, ``beta``) from the scope's own history: the negative binomial posterior
    predictive, exact at any count, and wider than the Poisson tail at the point estimate by as much
    as the estimate is unsure (a rate learnt from one trigger is not a rate learnt from a hundred)."""
    if exposure <= 0:
        return 1.0
    return float(nbinom.sf(k - 1, alpha, beta / (beta + exposure)))


# ---------------------------------------------------------------------------------- latency


@dataclass(frozen=True, slots=True)
class LatencyParams:
    """p95 regression test (latency and time-to-first-token per provider+model, latency per tool).

    baseline  q0 = the ``quantile`` (p95) of a ring of the last ``ring_size`` values seen outside
              incidents (values leave the 60 s span into the ring; up to ``per_window`` per window,
              evenly strided, so a busy scope's ring still spans several minutes); needs
              ``min_baseline`` values (cold start);
    test      exceedance test: under no change, each value exceeds q0 with probability 5 %; a
              one-sided exact binomial test of the k of n values above q0, P(X >= k) < the kind's
              ``p_value``, in each span (the last 60 s and the last 5 min, for a model with few calls);
    floors    n >= the kind's ``min_events``, the span's own p95 >= ``min_ratio`` x q0 and >= q0 +
              ``min_delta_ms`` (a significant 20 ms drift is not an incident); ``confirm`` windows.
    """

    spans: tuple[int, ...] = (6, 30)
    ring_size: int = 1024
    per_window: int = 64
    min_baseline: int = 200
    quantile: float = 0.95
    min_delta_ms: float = 250.0


@dataclass(slots=True)
class _LatState:
    newest: int
    windows: dict[int, list[float]] = field(default_factory=dict)
    ring: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    pos: int = 0
    q0: float | None = None
    fresh: int = 0  # values absorbed since q0 was computed
    counts: dict[int, tuple[int, int]] = field(default_factory=dict)  # window -> (n, n above counts_q0)
    # derived, not in a snapshot: the q0 that ``counts`` were made with; with two spans, their
    # [n, k] sums over ``counts`` as of the newest window ``sums_newest`` (None: to be recounted);
    # each window's values sorted (to count those above a new q0 by bisection); the scope's key
    counts_q0: float | None = None
    sums: list[int] | None = None
    sums_newest: int = 0
    ordered: dict[int, list[float]] = field(default_factory=dict)
    scope_key: str | None = None


@dataclass(slots=True)
class LatencyDetector(_ScopedDetector):
    kind: AlertKind
    scope_fields: tuple[str, ...]
    book: AlertBook
    metric: str = "latency_ms_p95"
    params: LatencyParams = field(default_factory=LatencyParams)
    sensitivity: SensitivityTable = field(default_factory=SensitivityTable)
    state: dict[tuple[str, ...], _LatState] = field(default_factory=dict)
    bound: ScopeBound = field(default_factory=ScopeBound)  # scopes tracked at once (base.ScopeBound)

    def observe(self, key: tuple[str, ...], window: int, values: list[float], first_ts: float, last_ts: float,
                event_ids: list[str]) -> Alert | None:
        p = self.params
        s = self.state.get(key)
        if s is None:
            if not self._admit(key):
                return None
            s = self.state[key] = _LatState(newest=window)
        if window <= s.newest - p.spans[-1]:
            return None
        acc = s.windows.get(window)
        if acc is None:
            s.windows[window] = list(values)
        else:
            acc.extend(values)
        if window > s.newest:
            old_newest = s.newest
            s.newest = window
            self._absorb(s, key, old_newest)
        if len(s.ring) < p.min_baseline:
            s.sums = None  # the windows changed uncounted
            return None
        if s.q0 is None or s.fresh >= p.per_window:  # re-rank the ring once per ``per_window`` new values
            s.q0 = _ring_quantile(s.ring, p.quantile)
            s.fresh = 0
        q0 = s.q0
        tail = 1.0 - p.quantile
        sens = self.sensitivity.of(self.kind)
        limit = max(sens.min_ratio * q0, q0 + p.min_delta_ms)
        # n and k (values above q0) of every span; per window they are kept while q0 and the
        # window's length are unchanged
        newest = s.newest
        spans = p.spans
        if s.counts_q0 != q0:
            s.counts.clear()
            s.counts_q0 = q0
            s.sums = None
        if len(spans) == 2 and spans[0] < spans[1]:  # the usual two spans (the longer one holds every window)
            n0, k0, n1, k1 = self._two_span_counts(s, window, q0)
            ns, ks = [n0, n1], [k0, k1]
        else:
            ns, ks = self._span_counts(s, q0)
        found: tuple[float, float, int, int, int] | None = None
        for j, span in enumerate(spans):
            n, k = ns[j], ks[j]
            if n < sens.min_events or k < 3 * tail * n or k < 3:
                continue
            inside: list[float] = []
            for w, vals in s.windows.items():  # the span's values in the same order as before
                if w > newest - span:
                    inside.extend(vals)
            q = _quantile(sorted(inside), p.quantile)
            if q < limit:
                continue
            pval = float(binom.sf(k - 1, n, tail))
            if pval < sens.p_value and (found is None or pval < found[1]):
                found = (q, pval, n, k, span)
        if found is None:
            return None
        q, pval, n, k, span = found
        scope = _scope(self.scope_fields, key)
        ev = Evidence(
            severity="critical" if q >= 3 * q0 else "warning", metric=self.metric, observed=fmt(q),
            baseline=fmt(q0), threshold=fmt(limit), score=q / limit, p_value=pval,
            window_s=span * BASE_WINDOW_S, first_ts=first_ts, last_ts=last_ts, event_ids=event_ids,
            summary=f"{scope.key()}: {self.metric} {q:.0f} ms over {n} calls in the last "
                    f"{span * BASE_WINDOW_S}s, baseline {q0:.0f} ms ({k} above it, p={pval:.2g})",
        )
        return self.book.fire(self.kind, scope, ev, confirm=sens.confirmations(pval), confirm_s=sens.confirm_s)

    def _two_span_counts(self, s: _LatState, window: int, q0: float) -> list[int]:
        """[n, k] of the shorter span and of the longer one (which holds every window), kept in
        ``s.sums`` from one observe to the next: only ``window`` changed since (windows that left
        the longer span left the sums in _absorb), and the windows that left the shorter span."""
        spans = self.params.spans
        newest = s.newest
        counts = s.counts
        sums = s.sums
        if sums is None:  # count every window
            cut0, cut1 = newest - spans[0], newest - spans[1]
            n0 = k0 = n1 = k1 = 0
            for w, vals in s.windows.items():
                if w > cut1:
                    c = counts.get(w)
                    if c is None or c[0] != len(vals):
                        c = counts[w] = (len(vals), _above(s.ordered, w, vals, q0))
                    n1 += c[0]
                    k1 += c[1]
                    if w > cut0:
                        n0 += c[0]
                        k0 += c[1]
            sums = s.sums = [n0, k0, n1, k1]
            s.sums_newest = newest
            return sums
        n0, k0, n1, k1 = sums
        if newest != s.sums_newest:  # the windows that left the shorter span since
            lo, hi = s.sums_newest - spans[0], newest - spans[0]
            if hi - lo <= len(counts):
                gone = [counts.get(w) for w in range(lo + 1, hi + 1)]
            else:  # a long gap: fewer windows than that
                gone = [c for w, c in counts.items() if lo < w <= hi]
            for c in gone:
                if c is not None:
                    n0 -= c[0]
                    k0 -= c[1]
        vals = s.windows[window]
        c_old = counts.get(window)
        if c_old is None or c_old[0] != len(vals):
            c = counts[window] = (len(vals), _above(s.ordered, window, vals, q0))
            dn, dk = (c[0], c[1]) if c_old is None else (c[0] - c_old[0], c[1] - c_old[1])
            if window > newest - spans[0]:
                n0 += dn
                k0 += dk
            if window > newest - spans[1]:
                n1 += dn
                k1 += dk
        sums[0], sums[1], sums[2], sums[3] = n0, k0, n1, k1
        s.sums_newest = newest
        return sums

    def _span_counts(self, s: _LatState, q0: float) -> tuple[list[int], list[int]]:
        """n and k of each span, any number of them in any order: every window counted."""
        spans = self.params.spans
        cuts = [s.newest - span for span in spans]
        ns = [0] * len(spans)
        ks = [0] * len(spans)
        counts = s.counts
        for w, vals in s.windows.items():
            c = None
            for j, cut in enumerate(cuts):
                if w <= cut:
                    continue
                if c is None:
                    c = counts.get(w)
                    if c is None or c[0] != len(vals):
                        c = counts[w] = (len(vals), _above(s.ordered, w, vals, q0))
                ns[j] += c[0]
                ks[j] += c[1]
        return ns, ks

    def _absorb(self, s: _LatState, key: tuple[str, ...], old_newest: int) -> None:
        p = self.params
        done = _leaving(s.windows, old_newest, s.newest, p.spans[-1])
        if not done:
            return
        learn = self._learns(s, key)
        size = p.ring_size
        sums = s.sums
        for w in done:
            vals = s.windows.pop(w)
            c = s.counts.pop(w, None)
            if sums is not None and c is not None:  # out of the sums, from the spans it was in
                if w > old_newest - p.spans[0]:
                    sums[0] -= c[0]
                    sums[1] -= c[1]
                if w > old_newest - p.spans[1]:
                    sums[2] -= c[0]
                    sums[3] -= c[1]
            s.ordered.pop(w, None)
            if not learn or not vals:
                continue
            step = max(1, math.ceil(len(vals) / p.per_window))
            _ring_add(s, vals[::step], size)
            s.fresh += len(vals[::step])

    def snapshot(self) -> list[Any]:
        return [[list(k), s.newest, _windows_out(s.windows), list(s.ring), s.pos]
                for k, s in self.state.items()]

    def restore(self, data: list[Any]) -> None:
        self.state = {tuple(k): _LatState(newest, _windows_in(windows), array("d", ring), pos)
                      for k, newest, windows, ring, pos in data}


def _ring_add(s: _LatState, picked: list[float], size: int) -> None:
    """Add ``picked`` to the ring of ``s``: appended up to ``size`` values, then overwriting the
    oldest (at ``s.pos``)."""
    ring = s.ring
    if not (0 <= s.pos < size and len(ring) <= size):  # a ring restored under other params: value by value
        for v in picked:
            if len(ring) < size:
                ring.append(v)
            else:
                ring[s.pos] = v
                s.pos = (s.pos + 1) % size
        return
    # what appending up to ``size`` and then overwriting at ``pos`` value by value does, by slices
    room = size - len(ring)
    if room > 0:
        ring.extend(picked[:room])
        picked = picked[room:]
    while picked:
        n = min(len(picked), size - s.pos)
        ring[s.pos:s.pos + n] = array("d", picked[:n])
        s.pos = (s.pos + n) % size
        picked = picked[n:]


def _above(ordered: dict[int, list[float]], w: int, vals: list[float], q0: float) -> int:
    """``sum(1 for v in vals if v > q0)``, by bisecting the window's values kept sorted (a window's
    list only grows, so its length tells whether the sorted copy is current)."""
    o = ordered.get(w)
    if o is None or len(o) != len(vals):
        if math.isnan(sum(vals)):  # a NaN (or inf - inf): no total order to bisect, count one by one
            ordered.pop(w, None)
            return sum(1 for v in vals if v > q0)
        o = ordered[w] = sorted(vals)
    return len(o) - bisect_right(o, q0)


def _ring_quantile(ring: array, q: float) -> float:  # type: ignore[type-arg]
    """``_quantile(sorted(ring), q)`` without sorting: the value of that rank, by partition. Equal
    floats are the same value except 0.0 and -0.0 (and NaN has no rank), so a ring with a
    negative sign bit or a NaN takes the sort, which decides the tie exactly as before."""
    n = len(ring)
    if n == 0:
        return _quantile(sorted(ring), q)
    a = np.frombuffer(ring, dtype=np.float64)
    if np.signbit(a).any() or np.isnan(a).any():
        return _quantile(sorted(ring), q)
    idx = min(n - 1, max(0, math.ceil(q * n) - 1))
    return float(np.partition(a, idx)[idx])


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of a sorted list."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
