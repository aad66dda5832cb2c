"""Unit tests for the cost-spike detector (``flyball.stream_processors.detectors``)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal

from flyball.schemas import Alert, AlertKind, Scope
from flyball.stream_processors.detectors import (
    CostSpikeDetector,
    SpikeParams,
    WindowSample,
    alert_id_for,
    window_start,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PARAMS = SpikeParams()  # window_s=10, min_history=6, factor=4, resolve_windows=3
W0 = int(NOW.timestamp()) // PARAMS.window_s
BASELINE = Decimal("1.00")
SPIKE = Decimal("10.00")  # 10x the baseline: above the threshold (4 x 1.00), below critical (12)


def sample(amount: Decimal | str, window: int) -> WindowSample:
    start = window_start(window, PARAMS.window_s)
    return WindowSample(Decimal(amount), start, start, [f"evt-{window}"])


def feed(detector: CostSpikeDetector, tenant_id: str, amounts: Iterable[Decimal | str],
         start: int = W0) -> list[Alert]:
    alerts = []
    for offset, amount in enumerate(amounts):
        alert = detector.observe(tenant_id, start + offset, sample(amount, start + offset))
        if alert is not None:
            alerts.append(alert)
    return alerts


def spiked(tenant_id: str = "acme", history: int = 10) -> tuple[CostSpikeDetector, Alert]:
    """A detector with ``history`` normal windows then one spike at ``W0 + history``."""
    detector = CostSpikeDetector(PARAMS)
    assert feed(detector, tenant_id, [BASELINE] * history) == []
    alert = detector.observe(tenant_id, W0 + history, sample(SPIKE, W0 + history))
    assert alert is not None
    return detector, alert


def test_no_alert_during_cold_start_even_for_a_huge_window() -> None:
    detector = CostSpikeDetector(PARAMS)
    assert feed(detector, "acme", [BASELINE] * (PARAMS.min_history - 1) + [Decimal(1000)]) == []


def test_first_window_after_cold_start_can_alert() -> None:
    detector = CostSpikeDetector(PARAMS)
    alerts = feed(detector, "acme", [BASELINE] * PARAMS.min_history + [SPIKE])
    assert len(alerts) == 1


def test_steady_traffic_with_noise_never_alerts() -> None:
    noise = ["0.70", "1.30", "0.95", "1.10", "0.85", "1.25", "0.00", "1.05", "0.90", "1.40"]
    detector = CostSpikeDetector(PARAMS)
    assert feed(detector, "acme", noise * 20) == []


def test_spike_opens_exactly_one_alert_for_that_tenant_only() -> None:
    detector = CostSpikeDetector(PARAMS)
    feed(detector, "acme", [BASELINE] * 10)
    feed(detector, "globex", [BASELINE] * 10)
    alerts = feed(detector, "acme", [SPIKE], start=W0 + 10) + feed(detector, "globex", [BASELINE], start=W0 + 10)
    assert [(a.kind, a.scope, a.status, a.severity) for a in alerts] == [
        (AlertKind.COST_SPIKE, Scope(tenant_id="acme"), "open", "warning")]
    evidence = alerts[0]
    assert tuple(map(Decimal, (evidence.observed, evidence.baseline, evidence.threshold))) == (
        Decimal(10), Decimal(1), Decimal(4))


def test_alert_id_is_deterministic() -> None:
    _, first = spiked()
    _, again = spiked()
    assert first.alert_id == again.alert_id == alert_id_for(
        "cost_spike", "tenant_id=acme", (W0 + 10) * PARAMS.window_s)


def test_spike_three_times_the_threshold_is_critical() -> None:
    detector = CostSpikeDetector(PARAMS)
    assert [a.severity for a in feed(detector, "acme", [BASELINE] * 10 + ["12.00"])] == ["critical"]


def test_repeated_spiking_window_updates_the_same_alert() -> None:
    detector, opened = spiked()
    updated = detector.observe("acme", W0 + 11, sample(SPIKE, W0 + 11))
    assert updated is not None
    assert updated.alert_id == opened.alert_id
    assert updated.status == "open"
    assert updated.last_seen == window_start(W0 + 11, PARAMS.window_s)


def test_small_growth_within_the_spiking_window_is_not_republished() -> None:
    detector, _ = spiked()
    assert detector.observe("acme", W0 + 10, sample("0.50", W0 + 10)) is None


def test_alert_stays_open_until_resolve_windows_quiet_windows_have_passed() -> None:
    detector, _ = spiked()
    assert detector.advance(window_start(W0 + 10 + PARAMS.resolve_windows, PARAMS.window_s)) == []


def test_alert_resolves_after_resolve_windows_quiet_windows_via_advance() -> None:
    detector, opened = spiked()
    watermark = window_start(W0 + 11 + PARAMS.resolve_windows, PARAMS.window_s)
    resolved = detector.advance(watermark)
    assert [(a.alert_id, a.status, a.last_seen) for a in resolved] == [(opened.alert_id, "resolved", watermark)]
    assert detector.advance(watermark) == []


def test_late_window_older_than_history_is_ignored() -> None:
    detector = CostSpikeDetector(PARAMS)
    feed(detector, "acme", [BASELINE] * 40)
    late = W0 + 39 - PARAMS.history_windows - 1
    assert detector.observe("acme", late, sample(Decimal(1000), late)) is None
    assert late not in detector.state["acme"].windows
