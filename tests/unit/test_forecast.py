"""Unit tests for the end-of-period spend forecast (``flyball.stream_processors.forecast``)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from flyball.stream_processors.budgets import Period
from flyball.stream_processors.forecast import forecast

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)  # 14 complete days, half of the 15th, 16.5 days to go


def days(values: list[str], *, today: str = "0") -> dict[date, Decimal]:
    out = {date(2026, 1, 1) + timedelta(days=i): Decimal(v) for i, v in enumerate(values)}
    out[NOW.date()] = Decimal(today)
    return out


def test_flat_spend_forecasts_the_daily_rate_times_the_remaining_days() -> None:
    f = forecast(days(["10"] * 14, today="5"), period=Period.MONTHLY, now=NOW)
    assert f.spent_to_date == Decimal(145)
    assert f.forecast == Decimal(145) + Decimal(10) * Decimal("16.5")
    assert f.low <= f.forecast <= f.high
    assert f.days_observed == 14


def test_a_single_spike_day_barely_moves_the_forecast() -> None:
    flat = days(["10", "11", "9", "10", "12", "10", "9", "11", "10", "10", "11", "9", "10", "10"], today="5")
    spiky = dict(flat)
    spiky[date(2026, 1, 7)] = Decimal(500)  # one runaway day
    f_flat = forecast(flat, period=Period.MONTHLY, now=NOW)
    f_spike = forecast(spiky, period=Period.MONTHLY, now=NOW)
    extra_spent = Decimal(500) - flat[date(2026, 1, 7)]
    # the spike counts as money spent, but the projected remaining spend stays near 10/day
    projected_flat = f_flat.forecast - f_flat.spent_to_date
    projected_spike = f_spike.forecast - f_spike.spent_to_date
    assert f_spike.spent_to_date == f_flat.spent_to_date + extra_spent
    assert abs(projected_spike - projected_flat) < Decimal("0.1") * projected_flat
    mean_based = (sum(v for d, v in spiky.items() if d < NOW.date()) / 14) * Decimal("16.5")
    assert projected_spike < mean_based / 2  # a mean would have projected the spike forward


def test_a_steady_ramp_is_followed() -> None:
    f = forecast(days([str(10 + 2 * i) for i in range(14)], today="20"), period=Period.MONTHLY, now=NOW)
    assert f.method == "theil-sen"
    assert f.daily_rate > Decimal(40)  # day 14..31 of a +2/day ramp averages ~56 a day


def test_noisier_history_gives_a_wider_interval() -> None:
    calm = forecast(days(["10", "10.5", "9.5"] * 4 + ["10", "10"]), period=Period.MONTHLY, now=NOW)
    noisy = forecast(days(["2", "18", "10"] * 4 + ["3", "17"]), period=Period.MONTHLY, now=NOW)
    assert (noisy.high - noisy.low) > 3 * (calm.high - calm.low)


def test_first_day_of_the_period_extrapolates_the_partial_day() -> None:
    now = datetime(2026, 2, 1, 6, 0, tzinfo=UTC)  # a quarter of the day gone, $2 spent
    f = forecast({date(2026, 2, 1): Decimal(2)}, period=Period.MONTHLY, now=now)
    assert f.days_observed == 0 and f.daily_rate == Decimal(8)
    assert f.forecast == Decimal(2) + Decimal(8) * Decimal("27.75")


def test_daily_period_forecasts_the_rest_of_today() -> None:
    f = forecast(days(["24"] * 14, today="12"), period=Period.DAILY, now=NOW)
    assert f.period_end == datetime(2026, 1, 16, tzinfo=UTC)
    assert f.forecast == Decimal(24)  # 12 spent + 24/day * 0.5 day


def test_spend_outside_the_period_is_ignored() -> None:
    data = days(["10"] * 14)
    data[date(2025, 12, 31)] = Decimal(1000)
    assert forecast(data, period=Period.MONTHLY, now=NOW).spent_to_date == Decimal(140)


def test_confidence_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match="confidence"):
        forecast({}, period=Period.MONTHLY, now=NOW, confidence=1.5)
