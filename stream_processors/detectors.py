"""Detectors: pure functions of (state, windowed sample, event time) -> alert or nothing.

No I/O and no clock: time is the events' own (event time), so ``flyball replay`` and the live
worker raise the same alerts for the same events.

CostSpike — per tenant, fixed event-time windows of ``window_s`` seconds.
  baseline  = median of the tenant's last ``history_windows`` windows (empty windows count 0),
  spread    = MAD (median absolute deviation, scaled by 1.4826 to estimate a std. deviation),
  threshold = max(factor * baseline, baseline + mad_k * spread, min_amount).
  The median/MAD pair is robust: one earlier spike or a few busy windows barely move it, so a
  spike does not teach the detector that spikes are normal. ``min_amount`` keeps a tenant with
  near-zero spend from alerting on its first real call. A tenant needs ``min_history`` windows of
  history before it can alert (cold start). The open window is evaluated as it fills, so an alert
  fires as soon as the running sum crosses the threshold, not when the window closes. The alert
  resolves after ``resolve_windows`` consecutive windows below threshold (judged by the
  watermark, so a tenant that went quiet also resolves).
"""

from __future__ import annotations

import statistics
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from flyball.schemas import Alert, AlertKind, Scope

ALERT_NAMESPACE = uuid.UUID("0b6c3f7e-2f1a-4f61-9d8e-6a2b9c1d0f11")
MAD_SCALE = Decimal("1.4826")


def alert_id_for(kind: str, scope_key: str, opened_window_start: int) -> str:
    """Deterministic, so that replay and live give an alert the same id."""
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{kind}|{scope_key}|{opened_window_start}"))


@dataclass(frozen=True, slots=True)
class SpikeParams:
    window_s: int = 10
    history_windows: int = 30
    min_history: int = 6
    factor: Decimal = Decimal(4)
    mad_k: Decimal = Decimal(6)
    min_amount: Decimal = Decimal("0.25")
    resolve_windows: int = 3


@dataclass(slots=True)
class WindowSample:
    """The sum of one batch's events for one key and window, with their time span."""

    amount: Decimal
    first_ts: datetime
    last_ts: datetime
    event_ids: list[str] = field(default_factory=list)


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


@dataclass(slots=True)
class CostSpikeDetector:
    """Per-tenant cost-rate spike detector; ``state`` maps tenant_id -> series."""

    params: SpikeParams = field(default_factory=SpikeParams)
    state: dict[str, Series] = field(default_factory=dict)
    kind: AlertKind = AlertKind.COST_SPIKE
    metric: str = "cost_usd_per_window"

    def window_of(self, ts: datetime) -> int:
        return int(ts.timestamp()) // self.params.window_s

    def observe(self, tenant_id: str, window: int, sample: WindowSample) -> Alert | None:
        """Add ``sample`` to ``window`` of the tenant; return an alert if one opened or grew."""
        p = self.params
        series = self.state.get(tenant_id)
        if series is None:
            series = self.state[tenant_id] = Series(first_window=window)
        newest = max(series.windows, default=window)
        if window < newest - p.history_windows:
            return None  # too late to matter for a rate alert; still counted in spend
        series.windows[window] = series.windows.get(window, Decimal(0)) + sample.amount
        if window > newest:
            for old in [w for w in series.windows if w < window - p.history_windows]:
                del series.windows[old]
        first = max(series.first_window, window - p.history_windows)
        if window - first < p.min_history:
            return None
        history = [series.windows.get(w, Decimal(0)) for w in range(first, window)]
        threshold, baseline = self._threshold(history)
        observed = series.windows[window]
        if observed <= threshold:
            return self._maybe_resolve(tenant_id, series, window, sample.last_ts)
        scope = Scope(tenant_id=tenant_id)
        severity = "critical" if observed >= threshold * 3 else "warning"
        if series.open is None:
            alert = Alert(
                alert_id=alert_id_for(self.kind, scope.key(), window * p.window_s),
                kind=self.kind, scope=scope, severity=severity, metric=self.metric,
                observed=str(observed), baseline=str(baseline), threshold=str(threshold),
                score=float(observed / threshold) if threshold else None, window_s=p.window_s,
                first_seen=sample.first_ts, last_seen=sample.last_ts,
                sample_event_ids=sample.event_ids[:10],
                summary=f"tenant {tenant_id} spent {observed:.6f} USD in {p.window_s}s, baseline {baseline:.6f}",
            )
            series.open = _Open(alert=alert, opened_window=window, last_spike_window=window)
            return alert
        current = series.open.alert
        grown = severity != current.severity or Decimal(current.observed) * 2 <= observed or window != series.open.last_spike_window
        series.open.last_spike_window = max(series.open.last_spike_window, window)
        updated = current.model_copy(update={
            "severity": "critical" if "critical" in (severity, current.severity) else severity,
            "observed": str(max(observed, Decimal(current.observed))),
            "last_seen": max(sample.last_ts, current.last_seen),
            "score": float(observed / threshold) if threshold else None,
        })
        series.open.alert = updated
        return updated if grown else None

    def advance(self, watermark: datetime) -> list[Alert]:
        """Resolve open alerts whose tenant has been quiet or normal up to ``watermark``."""
        window = self.window_of(watermark)
        resolved = []
        for tenant_id, series in self.state.items():
            alert = self._maybe_resolve(tenant_id, series, window, watermark)
            if alert is not None:
                resolved.append(alert)
        return resolved

    def _maybe_resolve(self, tenant_id: str, series: Series, window: int, ts: datetime) -> Alert | None:
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


def window_start(window: int, window_s: int) -> datetime:
    return datetime.fromtimestamp(window * window_s, tz=UTC)
