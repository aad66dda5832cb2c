"""Spikes of an additive amount (cost in USD, tokens) per tenant or per tenant+feature.

A tenant's spend per 10 s window is a sum over a random number of calls of random size: a compound
Poisson process. Its baseline per key is learned from the key's own history:

baseline  m = EWMA of the amount per 10 s window (empty windows count 0) and v = EWMA of its
          square, half-life ``half_life_windows`` (30 minutes: follows the daily cycle, whose
          ramps would otherwise look like spikes, while a spike is kept out, see below), bias-corrected while the history is short; learned only from windows that have
          left the longest span while no alert of the kind is open for the key (an incident does
          not teach the detector that it is normal; ``AlertBook.learns``: one open for an hour
          does, a lasting change is the new normal). A key needs ``min_history`` windows
          (1 hour) of history before it can alert (cold start).
test      for each span (the last 1, 5 and 15 minutes, so a busy key is judged fast and a quiet one
          gets enough calls), the span's sum S without its single largest call (leave-one-out: one
          big request is not a rate spike) against ``null_ratio`` x mu, mu = span x m (the null
          hypothesis is "at most 1.5x the usual": a normal burst is not an incident). With the per-window variance
          sigma^2 = v - m^2 (which includes the key's own burstiness), the dispersion
          phi = sigma^2 / m turns amounts into effective counts (S / phi, mu / phi), and the
          exact Poisson tail P(X >= S/phi | mu/phi) (regularised incomplete gamma, valid at any
          count) is the p-value: a small tenant's few calls give a large phi and need a large
          multiple, a big tenant's thousands of calls a small one.
floors    (``Sensitivity`` of the kind, per tenant if set) p < ``p_value``; S >= ``min_ratio`` x mu
          (business size, relative to the key's own history); at least ``min_events`` calls in the
          span (minimum evidence; counted from the sample ids, at most 10 per 10 s window);
          ``confirm`` abnormal windows before an alert opens (the alert book).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from flyball.schemas import Alert, AlertKind, Scope
from scipy.special import gammainc  # type: ignore[import-untyped]

from .base import BASE_WINDOW_S, AlertBook, Evidence, ScopeBound, fmt
from .sensitivity import SensitivityTable

KEY_SEP = "\x1f"


@dataclass(frozen=True, slots=True)
class AmountParams:
    spans: tuple[int, ...] = (6, 30, 90)  # 10 s windows: 1, 5 and 15 minutes
    half_life_windows: float = 180.0
    min_history: int = 360
    leave_one_out: bool = True
    # the memory of each span's over-dispersion (c below): a tenant's normal bursts come a few a
    # day, so their size must be remembered for hours, not for the baseline's 30 minutes
    burst_half_life_windows: float = 2160.0  # 6 hours


@dataclass(slots=True)
class _Series:
    newest: int
    absorbed: int                # the newest window folded into the baseline
    windows: dict[int, list[Any]] = field(default_factory=dict)  # w -> [amount, peak, calls]
    mean: float = 0.0            # EWMA of the amount per window (not bias-corrected)
    sq: float = 0.0              # EWMA of its square
    weight: float = 0.0          # 1 - decay**n: the bias correction
    history: int = 0             # windows absorbed
    calls: float = 0.0           # EWMA of the calls per window (same decay and weight as ``mean``)
    spread: float = 0.0          # EWMA, over windows with calls, of (amount - calls x per-call mean)^2 / calls
    spread_weight: float = 0.0   # its weight (the sum of the decays of those windows)
    # per span: the span's sum ending at ``absorbed`` (over the absorbed windows), and the two
    # EWMAs whose ratio is its over-dispersion c (Var = phi mu + c mu^2, see ``_absorb``)
    recent: dict[int, float] = field(default_factory=dict)  # absorbed amounts of the last ``longest`` windows
    rolling: list[float] = field(default_factory=list)
    excess: list[float] = field(default_factory=list)   # EWMA of (S - mu)^2 - phi mu
    level: list[float] = field(default_factory=list)    # EWMA of mu^2
    clean_from: int = 0          # the first window whose spans hold no window of an open alert
    scope_key: str | None = None  # derived

    def burst(self, j: int) -> float:
        """c of span ``j``: the squared relative size of the scope's own normal excursions over
        that span beyond what independent windows explain (bursts, the lag of the baseline on the
        daily ramp); 0 until learned."""
        if j >= len(self.level) or self.level[j] <= 0:
            return 0.0
        return max(self.excess[j] / self.level[j], 0.0)


def tail_p(k: float, mu: float) -> float:
    """P(X >= k) for X ~ Poisson(mu), continued to real k > 0 (regularised lower gamma)."""
    if k <= 0:
        return 1.0
    if mu <= 0:
        return 0.0
    return float(gammainc(k, mu))


@dataclass(slots=True)
class AmountSpikeDetector:
    """``observe_at(key, window, amount, peak, first, last, ids)`` per (key, 10 s window) sum;
    keys are a tenant or ``tenant + KEY_SEP + feature`` (``scope_fields``)."""

    kind: AlertKind
    book: AlertBook
    sensitivity: SensitivityTable = field(default_factory=SensitivityTable)
    params: AmountParams = field(default_factory=AmountParams)
    metric: str = "cost_usd_per_window"
    unit: str = "USD"
    scope_fields: tuple[str, ...] = ("tenant_id",)
    state: dict[str, _Series] = field(default_factory=dict)
    bound: ScopeBound = field(default_factory=ScopeBound)  # scopes tracked at once (base.ScopeBound)

    def scope_of(self, key: str) -> Scope:
        return Scope(**dict(zip(self.scope_fields, key.split(KEY_SEP), strict=True)))

    def is_open(self, key: str, t: float | None = None) -> bool:
        s = self.state.get(key)
        return s is not None and self.book.is_open(self.kind, self._text(s, key), t)

    def _text(self, s: _Series, key: str) -> str:
        text = s.scope_key
        if text is None:
            text = s.scope_key = self.scope_of(key).key()
        return text

    def observe_at(self, key: str, window: int, amount: Decimal | int, peak: Decimal | int, calls_in: int,
                   first_ts: datetime, last_ts: datetime, event_ids: list[str],
                   suppressed: Callable[[float], bool] | None = None) -> Alert | None:
        p = self.params
        longest = p.spans[-1]
        s = self.state.get(key)
        if s is None:
            if not self.bound.admit(len(self.state), key.split(KEY_SEP, 1)[0]):
                return None
            s = self.state[key] = _Series(newest=window, absorbed=window - longest)
        if window <= s.newest - longest:
            return None  # too late to be evidence of anything current (still counted in spend)
        acc = s.windows.get(window)
        if acc is None:
            s.windows[window] = [amount, peak, calls_in]
        else:
            acc[0] += amount
            if peak > acc[1]:
                acc[1] = peak
            acc[2] += calls_in
        if window > s.newest:
            s.newest = window
            self._absorb(s, key)
        if s.history < p.min_history or s.weight <= 0:
            return None
        m = s.mean / s.weight
        if m <= 0:
            return None
        var = max(s.sq / s.weight - m * m, 0.0)
        phi = max(var / m, 1e-12)
        tenant = key.split(KEY_SEP, 1)[0]
        sens = self.sensitivity.of(self.kind, tenant)
        # the spans' sums, peaks and calls in one pass over the (at most ``longest``) windows
        newest = s.newest
        spans = p.spans
        sums: list[Any] = [0] * len(spans)
        peaks: list[Any] = [0] * len(spans)
        calls = [0] * len(spans)
        for w, (a, top, n) in s.windows.items():
            age = newest - w
            for j, span in enumerate(spans):
                if age < span:
                    sums[j] += a
                    if top > peaks[j]:
                        peaks[j] = top
                    calls[j] += n
        # per call: the usual amount of one call and its variance, from the windows' residuals
        per_call = s.mean / s.calls if s.calls > 0 else 0.0
        phi_call = s.spread / s.spread_weight / per_call if s.spread_weight > 0 and per_call > 0 else 0.0
        best: tuple[float, int, float, float, bool] | None = None
        for j, span in enumerate(spans):
            if calls[j] < sens.min_events:
                continue
            total = float(sums[j])
            judged = total - float(peaks[j]) if p.leave_one_out else total
            # per unit of time: the amount against the span's usual amount (a flood of calls,
            # pricier calls, bigger calls alike)
            mu = span * m
            if judged >= sens.min_ratio * mu:
                # quasi-Poisson with the NB2 variance at the null's mean: phi x null + c x null^2
                null = sens.null_ratio * mu
                disp = phi + s.burst(j) * null
                pval = tail_p(judged / disp, null / disp)
                if pval < sens.p_value and (best is None or pval < best[0]):
                    best = (pval, j, judged, mu, False)
            # per call: the amount against what the span's calls usually amount to (bigger or
            # pricier calls, whatever the traffic: a busy hour or a burst of calls is not this)
            if sens.call_ratio and phi_call > 0:
                n = calls[j] - 1 if p.leave_one_out else calls[j]
                expected = n * per_call
                if n > 0 and judged >= sens.call_ratio * expected:
                    pval = tail_p(judged / phi_call, sens.call_null * expected / phi_call)
                    if pval < sens.p_value and (best is None or pval < best[0]):
                        best = (pval, j, judged, expected, True)
        if best is None:
            return None
        t = first_ts.timestamp()
        if suppressed is not None and not self.book.is_open(self.kind, self._text(s, key), t) and suppressed(t):
            return None
        pval, j, judged, mu, by_call = best
        span = spans[j]
        floor = sens.call_ratio if by_call else sens.min_ratio
        ratio = judged / mu
        scope = self.scope_of(key)
        observed = sums[j]
        usual = (f"{ratio:.1f}x what its {calls[j]} calls usually use ({mu:.6g})" if by_call
                 else f"{ratio:.1f}x its usual {mu:.6g}")
        ev = Evidence(
            severity="critical" if ratio >= 3 * floor else "warning",
            metric=self.metric.replace("_window", "_call") if by_call else self.metric,
            observed=str(observed), baseline=fmt(mu), threshold=fmt(floor * mu),
            score=ratio / floor, p_value=pval, window_s=span * BASE_WINDOW_S,
            first_ts=first_ts.timestamp(), last_ts=last_ts.timestamp(), event_ids=list(event_ids),
            summary=f"{scope.key()} used {observed} {self.unit} in the last {span * BASE_WINDOW_S}s, "
                    f"{usual} (without its largest call; p={pval:.2g})",
        )
        return self.book.fire(self.kind, scope, ev, confirm=sens.confirmations(pval), confirm_s=sens.confirm_s)

    def _absorb(self, s: _Series, key: str) -> None:
        """Fold the windows that left the longest span into the baseline (zeros for empty ones),
        window by window while any of the last ``longest`` windows had an amount (the spans'
        sums need each window), in one step over a longer silence.

        Over-dispersion per span (negative-binomial / NB2 form): the span's sum S is compared
        with mu = span x m, and independent windows would give Var(S) = phi mu; a tenant's
        bursts and the baseline's lag on the daily ramp make windows move together, which adds
        c mu^2. c is estimated by moments from the scope's own history, as each window leaves:
        c = EWMA[(S - mu)^2 - phi mu] / EWMA[mu^2] (half-life ``burst_half_life_windows``), only
        from windows learned while no alert was open (nor in the ``longest`` windows after)."""
        p = self.params
        spans = p.spans
        longest = spans[-1]
        upto = s.newest - longest
        if upto <= s.absorbed:
            return
        learn = self.book.learns(self.kind, self._text(s, key), s.newest * BASE_WINDOW_S)
        decay = 0.5 ** (1.0 / p.half_life_windows)
        keep = 0.5 ** (1.0 / p.burst_half_life_windows)
        if not s.rolling:
            s.rolling, s.excess, s.level = [0.0] * len(spans), [0.0] * len(spans), [0.0] * len(spans)
        rolling, excess, level, recent = s.rolling, s.excess, s.level, s.recent
        windows = s.windows
        last = s.absorbed
        while last < upto:
            if not recent:
                # nothing in any span: jump over the silence to the next window with an amount
                if upto - last <= len(windows):  # the usual case: newest moved by a window or two
                    nxt = next((w for w in range(last + 1, upto + 1) if w in windows), upto + 1)
                else:
                    nxt = min((w for w in windows if w <= upto), default=upto + 1)
                gap = nxt - 1 - last
                if gap > 0:
                    if learn:
                        d = decay ** gap
                        s.mean *= d
                        s.sq *= d
                        s.calls *= d
                        s.spread *= d
                        s.spread_weight *= d
                        s.weight = 1.0 - (1.0 - s.weight) * d
                        s.history += gap
                        e = keep ** gap
                        for j in range(len(spans)):
                            excess[j] *= e
                            level[j] *= e
                    for j in range(len(spans)):
                        rolling[j] = 0.0
                    last += gap
                    continue
            w = last + 1
            got = windows.pop(w, None)
            a, n = (float(got[0]), got[2]) if got is not None else (0.0, 0)
            if a:
                recent[w] = a
            for j, span in enumerate(spans):
                rolling[j] += a - recent.get(w - span, 0.0)
            recent.pop(w - longest, None)
            if learn:
                if s.weight > 0 and s.history >= longest and w >= s.clean_from:
                    m = s.mean / s.weight
                    if m > 0:
                        phi = max(s.sq / s.weight - m * m, 0.0) / m
                        for j, span in enumerate(spans):
                            mu = span * m
                            r = rolling[j] - mu
                            excess[j] = excess[j] * keep + (r * r - phi * mu)
                            level[j] = level[j] * keep + mu * mu
                if n and s.calls > 0:  # residual against the per-call mean learned so far
                    r = a - n * s.mean / s.calls
                    s.spread = s.spread * decay + r * r / n
                    s.spread_weight = s.spread_weight * decay + 1.0
                else:
                    s.spread *= decay
                    s.spread_weight *= decay
                s.mean = s.mean * decay + (1 - decay) * a
                s.sq = s.sq * decay + (1 - decay) * a * a
                s.calls = s.calls * decay + (1 - decay) * n
                s.weight = 1.0 - (1.0 - s.weight) * decay  # every window, empty or not, weighs 1 - decay
                s.history += 1
            else:
                s.clean_from = w + longest  # the spans that hold this window are not normal history
            last = w
        s.absorbed = last

    def evict(self, newest_window: int, idle_windows: int = 8640) -> None:
        for key in [k for k, s in self.state.items() if s.newest < newest_window - idle_windows]:
            del self.state[key]
        self._recount()

    def _recount(self) -> None:
        self.bound.recount(k.split(KEY_SEP, 1)[0] for k in self.state)

    def snapshot(self) -> list[Any]:
        return [[k, s.newest, s.absorbed, {str(w): [str(a), str(t), n] for w, (a, t, n) in s.windows.items()},
                 s.mean, s.sq, s.weight, s.history, s.calls, s.spread, s.spread_weight,
                 {str(w): a for w, a in s.recent.items()}, s.rolling, s.excess, s.level, s.clean_from]
                for k, s in self.state.items()]

    def restore(self, data: list[Any]) -> None:
        self.state = {}
        self.adopt(data, lambda tenant: True)

    def adopt(self, data: list[Any], owns: Callable[[str], bool]) -> int:
        """Take the baselines of another replica's :meth:`snapshot` for the keys whose tenant ``owns``
        says this replica now consumes and that it has no series for yet (a rebalance moved the
        tenant here); their open alerts stay with the replica that opened them. The number taken."""
        num = Decimal if self.unit == "USD" else int
        taken = 0
        for k, newest, absorbed, windows, mean, sq, weight, history, *per_call in data:
            if k in self.state or not owns(k.split(KEY_SEP, 1)[0]):
                continue
            # a snapshot from before the per-call baseline, or before the spans' over-dispersion:
            # what it lacks starts empty
            calls, spread, spread_weight = per_call[:3] or (0.0, 0.0, 0.0)
            recent, rolling, excess, level, clean_from = per_call[3:8] or ({}, [], [], [], 0)
            self.state[k] = _Series(newest, absorbed, {int(w): [num(a), num(t), n] for w, (a, t, n) in windows.items()},
                                    mean, sq, weight, history, calls, spread, spread_weight,
                                    {int(w): a for w, a in recent.items()}, list(rolling), list(excess), list(level),
                                    clean_from)
            taken += 1
        self._recount()
        return taken
