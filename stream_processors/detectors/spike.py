"""Rate spikes of an additive amount (cost in USD, tokens) per tenant or per tenant+feature.

RateSpike — per key (a tenant, or a tenant+feature pair), fixed event-time windows of ``window_s``.
  baseline  = median of the key's last ``history_windows`` windows (empty windows count 0),
  spread    = MAD (median absolute deviation, scaled by 1.4826 to estimate a std. deviation),
  threshold = max(factor * baseline, baseline + mad_k * spread, min_amount).
  The median/MAD pair is robust: one earlier spike or a few busy windows barely move it, so a
  spike does not teach the detector that spikes are normal, and a normal burst (traffic doubling
  for a few minutes) stays below ``factor`` x the median. The history is short (5 minutes for
  cost, 30 for tokens) so the baseline follows the daily cycle, which moves a few percent per
  hour. ``min_amount`` keeps a key with near-zero spend from alerting on its first real call. A
  key needs ``min_history`` windows of history before it can alert (cold start). The open window
  is evaluated as it fills, so an alert fires as soon as the running sum crosses the threshold,
  not when the window closes; given 10 s sub-windows, the trailing ``window_s`` seconds are
  judged too, so a spike that starts late in a window is not diluted by the quiet part. The alert resolves after ``resolve_windows`` consecutive windows
  below threshold (judged by the watermark, so a key that went quiet also resolves).

Defaults (``SpikeParams()``): 10 s windows, 30 of history, 6 to start, factor 4, 6 MADs, floor
0.25 USD per window. The worker runs ``COST_PARAMS`` and ``TOKEN_PARAMS``: 60 s windows, 30 of
history (30 min), 3 to start, leave-one-out (the window must cross the threshold even without its
largest call); cost: factor 4, 6 MADs, floor 1.50 USD a minute; tokens: factor 5, 8 MADs, floor
80,000 tokens a minute.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from flyball.schemas import Alert, AlertKind, Scope

from .base import BASE_WINDOW_S, WindowSample, alert_id_for, at

MAD_SCALE = Decimal("1.4826")
KEY_SEP = "\x1f"
_ZERO = Decimal(0)


def _alert_time(ts: datetime) -> datetime:
    """An event's ts as the alert datetime the detectors give it: ``at`` of its epoch seconds."""
    return at(ts.timestamp())


@dataclass(frozen=True, slots=True)
class SpikeParams:
    window_s: int = 10
    history_windows: int = 30
    min_history: int = 6
    factor: Decimal = Decimal(4)
    mad_k: Decimal = Decimal(6)
    min_amount: Decimal = Decimal("0.25")
    resolve_windows: int = 3
    leave_one_out: bool = False  # judge the window without its single largest call


# What the worker runs. One-minute windows: a single heavy request (a 100k-token summary, a
# six-step agent run on an expensive model) fills a 10 s window of a quiet tenant on its own;
# leave-one-out then asks the window to cross the threshold even without its largest call, so
# a rate spike must be many calls, not one big one.
COST_PARAMS = SpikeParams(window_s=60, history_windows=30, min_history=3, min_amount=Decimal("1.50"),
                          resolve_windows=2, leave_one_out=True)
# Token counts per call are more heavy-tailed than cost (one agent request is six correlated
# calls): a wider factor and MAD band, and a floor of 80k tokens a minute.
TOKEN_PARAMS = SpikeParams(window_s=60, history_windows=30, min_history=3, factor=Decimal(5), mad_k=Decimal(8),
                           min_amount=Decimal(80_000), resolve_windows=2, leave_one_out=True)


@dataclass(slots=True)
class _Open:
    alert: Alert
    opened_window: int
    last_spike_window: int


@dataclass(slots=True)
class Series:
    first_window: int
    windows: dict[int, Decimal] = field(default_factory=dict)
    open: _Open | None = None
    peaks: dict[int, Decimal] = field(default_factory=dict)
    cached: tuple[int, Decimal, Decimal] | None = None  # (window, threshold, baseline) while history is unchanged
    subs: dict[int, tuple[Decimal, Decimal]] = field(default_factory=dict)  # trailing 10 s sums and peaks
    # max(windows) and max(subs), kept so that observe need not scan them (None: not known yet, e.g.
    # after a restore; then computed from the dicts). Not state: a snapshot does not carry them.
    newest: int | None = None
    newest_sub: int | None = None
    subs_total: Decimal | None = None  # the sum of subs' amounts (a screen: see observe_at)


@dataclass(slots=True)
class RateSpikeDetector:
    """Spike detector for an additive amount; ``state`` maps key -> series.

    A key is a tenant_id, or ``tenant_id + KEY_SEP + feature`` when ``scope_fields`` has both.
    """

    params: SpikeParams = field(default_factory=SpikeParams)
    state: dict[str, Series] = field(default_factory=dict)
    kind: AlertKind = AlertKind.COST_SPIKE
    metric: str = "cost_usd_per_window"
    unit: str = "USD"
    scope_fields: tuple[str, ...] = ("tenant_id",)

    def window_of(self, ts: datetime) -> int:
        return int(ts.timestamp()) // self.params.window_s

    def scope_of(self, key: str) -> Scope:
        return Scope(**dict(zip(self.scope_fields, key.split(KEY_SEP), strict=True)))

    def is_open(self, key: str) -> bool:
        series = self.state.get(key)
        return series is not None and series.open is not None

    def observe(self, key: str, window: int, sample: WindowSample, *, sub: int | None = None) -> Alert | None:
        """Add ``sample`` to ``window`` of the key; return an alert if one opened or grew.

        ``sub`` (the sample's 10 s window, when the caller has it) also judges the trailing
        ``window_s`` seconds, so a spike that starts late in a window is not diluted by it.
        """
        return self.observe_at(key, window, sample.amount, sample.peak, sample.first_ts, sample.last_ts,
                               sample.event_ids, sub, None)

    def observe_at(self, key: str, window: int, amount: Decimal, peak: Decimal, first_ts: datetime,
                   last_ts: datetime, event_ids: list[str], sub: int | None = None,
                   conv: Callable[[datetime], datetime] | None = _alert_time) -> Alert | None:
        """:meth:`observe` of a sample given as its parts. ``conv`` maps ``first_ts``/``last_ts`` to
        alert datetimes when an alert is built; by default they are the events' own timestamps and
        an alert gets ``at(ts.timestamp())`` of them (the batch path: most samples raise nothing,
        so most never need an alert datetime); None takes them as they are."""
        p = self.params
        history = p.history_windows
        series = self.state.get(key)
        if series is None:
            series = self.state[key] = Series(first_window=window)
        windows = series.windows
        newest = series.newest
        known = newest is not None
        if newest is None:
            newest = max(windows, default=window)
        if window < newest - history:
            return None  # too late to matter for a rate alert; still counted in spend
        observed = windows[window] = windows.get(window, _ZERO) + amount
        peaks = series.peaks
        if window < newest:
            series.cached = None  # a late sample changed the history of the newer window
        if p.leave_one_out:
            peaks[window] = max(peaks.get(window, _ZERO), peak)
        if window > newest:
            series.newest = window
            cut = window - history
            if known and window - newest <= history:
                # every window is >= newest - history (the check above), so only those below the
                # new cut, a range of (window - newest) windows, can go (deleting keeps the order)
                for old in range(newest - history, cut):
                    windows.pop(old, None)
            else:
                for old in [w for w in windows if w < cut]:
                    del windows[old]
            if peaks:
                for old in [w for w in peaks if w < window]:
                    del peaks[old]
        elif not known:
            series.newest = newest
        first = max(series.first_window, window - history)
        if window - first < p.min_history:
            return None
        judged = observed - peaks.get(window, _ZERO)
        if sub is not None:
            # the trailing window_s seconds of 10 s sums (``subs``), judged at the newest one
            span = p.window_s // BASE_WINDOW_S
            subs = series.subs
            acc = subs.get(sub)
            subs[sub] = (acc[0] + amount, max(acc[1], peak)) if acc else (amount, peak)
            total = series.subs_total
            total = sum(a for a, _ in subs.values()) if total is None else total + amount
            newest_sub = series.newest_sub
            if newest_sub is None or span <= 0:
                newest_sub = max(subs)
                gone = [x for x in subs if x <= newest_sub - span]
                series.newest_sub = newest_sub if span > 0 else None
            elif sub > newest_sub:
                # every sub was > newest_sub - span: only those up to the new cut can go
                old, newest_sub = newest_sub, sub
                series.newest_sub = sub
                if sub - old <= span:
                    gone = ()
                    for x in range(old - span + 1, sub - span + 1):
                        a = subs.pop(x, None)
                        if a is not None:
                            total -= a[0]
                else:
                    gone = [x for x in subs if x <= sub - span]
            else:  # every other sub is already within the span: only this one can be out of it
                gone = (sub,) if sub <= newest_sub - span else ()
            for x in gone:
                total -= subs.pop(x)[0]
            series.subs_total = total
            # ``total`` (the exact sum of the span, kept as subs come and go) screens the span: at or
            # under the bar this window must clear (its threshold when known, else min_amount, which
            # no threshold is below), neither it nor the span without its peak can alert or change
            # what is returned, so its sum and peak are not needed
            cached = series.cached
            bar = cached[1] if cached is not None and cached[0] == window else p.min_amount
            if sub == newest_sub and total > bar:
                # sum() and max() of the span, in the dict's order (the first of equal peaks wins)
                spans = iter(subs.values())
                a, top = next(spans)
                trailing = _ZERO + a
                for a, b in spans:
                    trailing = trailing + a
                    if b > top:  # max() costs a call per sub
                        top = b
                if trailing - (top if p.leave_one_out else 0) > judged:
                    observed, judged = trailing, trailing - (top if p.leave_one_out else 0)
        # the threshold is never below min_amount, so a window at or under it needs no median
        if judged <= p.min_amount:
            o = series.open
            if o is None or window - o.last_spike_window <= p.resolve_windows:
                return None  # what _maybe_resolve decides, without making its datetime
            return self._maybe_resolve(series, window, last_ts if conv is None else conv(last_ts))
        if series.cached is not None and series.cached[0] == window:
            threshold, baseline = series.cached[1], series.cached[2]
        else:
            threshold, baseline = self._threshold([windows.get(w, _ZERO) for w in range(first, window)])
            series.cached = (window, threshold, baseline)
        if judged <= threshold:
            o = series.open
            if o is None or window - o.last_spike_window <= p.resolve_windows:
                return None
            return self._maybe_resolve(series, window, last_ts if conv is None else conv(last_ts))
        if conv is not None:
            first_ts, last_ts = conv(first_ts), conv(last_ts)
        scope = self.scope_of(key)
        severity = "critical" if observed >= threshold * 3 else "warning"
        if series.open is None:
            alert = Alert(
                alert_id=alert_id_for(self.kind, scope.key(), window * p.window_s),
                kind=self.kind, scope=scope, severity=severity, metric=self.metric,
                observed=str(observed), baseline=str(baseline), threshold=str(threshold),
                score=float(observed / threshold) if threshold else None, window_s=p.window_s,
                first_seen=first_ts, last_seen=last_ts, opened_at=last_ts,
                sample_event_ids=event_ids[:10],
                summary=f"{scope.key()} used {observed:.6f} {self.unit} in {p.window_s}s, baseline {baseline:.6f}",
            )
            series.open = _Open(alert=alert, opened_window=window, last_spike_window=window)
            return alert
        current = series.open.alert
        grown = severity != current.severity or Decimal(current.observed) * 2 <= observed or window != series.open.last_spike_window
        series.open.last_spike_window = max(series.open.last_spike_window, window)
        updated = current.model_copy(update={
            "severity": "critical" if "critical" in (severity, current.severity) else severity,
            "observed": str(max(observed, Decimal(current.observed))),
            "last_seen": max(last_ts, current.last_seen),
            "score": float(observed / threshold) if threshold else None,
        })
        series.open.alert = updated
        return updated if grown else None

    def advance(self, watermark: datetime) -> list[Alert]:
        """Resolve open alerts whose key has been quiet or normal up to ``watermark``."""
        window = self.window_of(watermark)
        resolved = []
        for series in self.state.values():
            if series.open is None:
                continue
            alert = self._maybe_resolve(series, window, watermark)
            if alert is not None:
                resolved.append(alert)
        return resolved

    def evict(self, watermark: datetime) -> None:
        """Forget keys with no window in the history span and no open alert (bounded memory)."""
        window = self.window_of(watermark)
        stale = [k for k, s in self.state.items()
                 if s.open is None and max(s.windows, default=s.first_window) < window - self.params.history_windows]
        for key in stale:
            del self.state[key]

    def _maybe_resolve(self, series: Series, window: int, ts: datetime) -> Alert | None:
        if series.open is None or window - series.open.last_spike_window <= self.params.resolve_windows:
            return None
        alert = series.open.alert.model_copy(update={"status": "resolved", "last_seen": max(ts, series.open.alert.last_seen)})
        series.open = None
        return alert

    def _threshold(self, history: list[Decimal]) -> tuple[Decimal, Decimal]:
        p = self.params
        baseline = statistics.median(history)
        mad = statistics.median([abs(x - baseline) for x in history]) * MAD_SCALE
        return max(baseline * p.factor, baseline + p.mad_k * mad, p.min_amount), baseline

    def snapshot(self) -> dict[str, Any]:
        return {k: {"first": s.first_window, "windows": {str(w): str(v) for w, v in s.windows.items()},
                    "peaks": {str(w): str(v) for w, v in s.peaks.items()},
                    "subs": {str(w): [str(a), str(b)] for w, (a, b) in s.subs.items()},
                    "open": None if s.open is None else {"alert": s.open.alert.model_dump(mode="json"),
                                                         "opened": s.open.opened_window,
                                                         "last": s.open.last_spike_window}}
                for k, s in self.state.items()}

    def restore(self, data: dict[str, Any]) -> None:
        self.state = {}
        for k, v in data.items():
            s = _series_in(v)
            if v["open"] is not None:
                o = v["open"]
                s.open = _Open(Alert.model_validate(o["alert"]), o["opened"], o["last"])
            self.state[k] = s

    def adopt(self, data: dict[str, Any], owns: Callable[[str], bool]) -> int:
        """Take the history of the keys of another replica's :meth:`snapshot` whose tenant
        ``owns`` says this replica now consumes and that it has no series for yet (a rebalance
        moved the tenant here); their open alerts stay with the replica that opened them, which
        resolves them. The number of keys taken."""
        taken = 0
        for k, v in data.items():
            if k not in self.state and owns(k.split(KEY_SEP, 1)[0]):
                self.state[k] = _series_in(v)
                taken += 1
        return taken


def _series_in(v: dict[str, Any]) -> Series:
    """A series' history from its snapshot (without its open alert)."""
    return Series(first_window=v["first"], windows={int(w): Decimal(x) for w, x in v["windows"].items()},
                  peaks={int(w): Decimal(x) for w, x in v.get("peaks", {}).items()},
                  subs={int(w): (Decimal(a), Decimal(b)) for w, (a, b) in v.get("subs", {}).items()})


@dataclass(slots=True)
class CostSpikeDetector(RateSpikeDetector):
    """Per-tenant cost-rate spike detector (the defaults of :class:`RateSpikeDetector`)."""
