"""End-of-period spend forecast with a confidence interval.

Pure: daily spend in, a forecast out; ``now`` is a parameter. Robust to a single spike day:
the daily rate is a median-based estimate (Theil-Sen line through the complete days, which
reduces to the median when there is no trend; with fewer than ``trend_min_days`` days the
slope is taken as zero), and the noise band comes from the median absolute deviation of the
residuals, not their standard deviation, so one outlier day moves neither much.

Model: remaining spend = sum over the remaining (fractional) days of the fitted daily rate;
the interval combines the Theil-Sen slope interval (scipy's ``theilslopes`` ``alpha``) with
residual noise (MAD * 1.4826 * z * sqrt(remaining days)), clipped at zero. Statistics run in
float (scipy); the results are returned as Decimal rounded to a micro-dollar, and the money
already spent is added exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np
from scipy import stats

from .budgets import Period, period_bounds

MICRO = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class Forecast:
    period_start: datetime
    period_end: datetime
    spent_to_date: Decimal
    forecast: Decimal  # spent_to_date + expected remaining spend
    low: Decimal
    high: Decimal
    daily_rate: Decimal  # the fitted rate for the remaining days
    confidence: float
    days_observed: int  # complete days the fit used
    method: str


def _money(x: float) -> Decimal:
    return Decimal(repr(max(0.0, float(x)))).quantize(MICRO)


def forecast(daily: Mapping[date, Decimal], *, period: Period, now: datetime, confidence: float = 0.9,
             trend_min_days: int = 7) -> Forecast:
    """``daily``: spend per UTC day (missing days are zero-spend days)."""
    if not 0 < confidence < 1:
        raise ValueError("confidence: must be between 0 and 1")
    now = now.astimezone(UTC)
    start, end = period_bounds(period, now)
    today = now.date()
    spent = sum((v for d, v in daily.items() if start.date() <= d <= today), Decimal(0))
    full_days = [start.date() + timedelta(days=i) for i in range((today - start.date()).days)]
    y = np.array([float(daily.get(d, Decimal(0))) for d in full_days], dtype=float)
    remaining = max(0.0, (end - now).total_seconds() / 86400)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    today_start = datetime(today.year, today.month, today.day, tzinfo=UTC)
    frac_today = (now - today_start).total_seconds() / 86400
    if len(y) == 0:
        # nothing complete yet: extrapolate today's partial spend, with a wide band
        rate = float(daily.get(today, Decimal(0))) / frac_today if frac_today > 0 else 0.0
        expected = rate * remaining
        return Forecast(start, end, spent, spent + _money(expected), spent + _money(expected * 0.5),
                        spent + _money(expected * 2), _money(rate), confidence, 0, "partial-day extrapolation")
    x = np.arange(len(y), dtype=float)
    if len(y) >= trend_min_days:
        slope, intercept, lo_slope, hi_slope = stats.theilslopes(y, x, alpha=1 - confidence)
        method = "theil-sen"
    else:
        slope = lo_slope = hi_slope = 0.0
        intercept = float(np.median(y))
        method = "median"
    resid = y - (intercept + slope * x)
    spread = float(stats.median_abs_deviation(resid, scale="normal")) if len(y) >= 3 else float(np.ptp(y)) / 2
    # the remaining days span x in [n + frac_today, n + frac_today + remaining); the mean rate is at its middle
    mid = len(y) + frac_today + remaining / 2

    def total(s: float) -> float:
        b = float(np.median(y - s * x))  # the line through the median for this slope
        return max(0.0, b + s * mid) * remaining

    expected = total(slope)
    noise = z * spread * math.sqrt(remaining)
    low = min(total(lo_slope), total(hi_slope), expected) - noise
    high = max(total(lo_slope), total(hi_slope), expected) + noise
    rate = expected / remaining if remaining > 0 else max(0.0, intercept + slope * mid)
    return Forecast(start, end, spent, spent + _money(expected), spent + _money(low), spent + _money(high),
                    _money(rate), confidence, len(y), method)
