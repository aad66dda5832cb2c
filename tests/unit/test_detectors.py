"""Unit tests for the cost-spike detector (``flyball.stream_processors.detectors``)."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from flyball.schemas import Alert, AlertKind, LLMCall, Scope
from flyball.stream_processors.detectors import (
    BASE_WINDOW_S,
    COST_PARAMS,
    AlertBook,
    BatchWindows,
    BinomialRateDetector,
    CostSpikeDetector,
    Detectors,
    LatencyDetector,
    PoissonBurstDetector,
    RunawayDetector,
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


# ------------------------------------------------------------------ the other detectors (issue 5)

T0 = NOW.timestamp()
B0 = int(T0) // BASE_WINDOW_S


def errors_detector() -> BinomialRateDetector:
    return BinomialRateDetector(AlertKind.ERROR_RATE, ("provider", "model"), ("error", "timeout", "rate_limited"),
                                AlertBook())


def feed_rates(det: BinomialRateDetector, windows: Iterable[tuple[int, list[int]]]) -> list[Alert]:
    out = []
    for w, counts in windows:
        t = float(w * BASE_WINDOW_S)
        alert = det.observe(("openai", "gpt-4o-mini"), w, counts, t, t + 9, [f"evt-{w}"])
        if alert is not None:
            out.append(alert)
    return out


def test_error_rate_at_baseline_never_alerts() -> None:
    rng = random.Random(1)
    det = errors_detector()
    windows = [(B0 + i, [50, sum(rng.random() < 0.01 for _ in range(50)), 0, 0]) for i in range(720)]
    assert feed_rates(det, windows) == []


def test_timeout_regression_opens_one_error_rate_alert_with_its_p_value() -> None:
    det = errors_detector()
    feed_rates(det, [(B0 + i, [50, 1 if i % 2 else 0, 0, 0]) for i in range(360)])
    alerts = feed_rates(det, [(B0 + 360 + i, [50, 0, 20, 0]) for i in range(3)])
    assert [(a.kind, a.scope, a.metric, a.status) for a in alerts[:1]] == [
        (AlertKind.ERROR_RATE, Scope(provider="openai", model="gpt-4o-mini"), "timeout_rate", "open")]
    assert alerts[0].p_value is not None and alerts[0].p_value < 1e-6
    assert len({a.alert_id for a in alerts}) == 1


def test_significant_but_tiny_error_rate_wobble_does_not_alert() -> None:
    det = errors_detector()
    feed_rates(det, [(B0 + i, [5000, 50, 0, 0]) for i in range(360)])  # 1 %
    assert feed_rates(det, [(B0 + 360 + i, [5000, 125, 0, 0]) for i in range(6)]) == []  # 2.5 %: below +5 points


def test_error_rate_alert_resolves_after_resolve_s_of_normal_traffic() -> None:
    det = errors_detector()
    feed_rates(det, [(B0 + i, [50, 0, 0, 0]) for i in range(360)])
    (opened, *_) = feed_rates(det, [(B0 + 360, [50, 30, 0, 0])])
    assert det.book.sweep(T0 + 3600 + 60) == []
    resolved = det.book.sweep(T0 + 3600 + 10 + det.book.resolve_s)
    assert [(a.alert_id, a.status) for a in resolved] == [(opened.alert_id, "resolved")]


def safety_detector() -> PoissonBurstDetector:
    return PoissonBurstDetector(AlertKind.SAFETY_BURST, ("tenant_id", "feature", "category"), AlertBook())


def feed_counts(det: PoissonBurstDetector, counts: Iterable[tuple[int, int]]) -> list[Alert]:
    out = []
    for w, k in counts:
        alert = det.observe(("acme", "chat", "jailbreak"), w, k, w * 10.0, w * 10.0 + 9, [f"evt-{w}"])
        if alert is not None:
            out.append(alert)
    return out


def test_safety_triggers_at_their_usual_rate_do_not_alert() -> None:
    rng = random.Random(2)
    det = safety_detector()
    assert feed_counts(det, [(B0 + i, 1) for i in range(8640) if rng.random() < 0.08]) == []


def test_safety_burst_against_baseline_alerts_per_tenant_feature_category() -> None:
    det = safety_detector()
    feed_counts(det, [(B0 + i, 1) for i in range(0, 720, 20)])  # 0.3 a minute
    alerts = feed_counts(det, [(B0 + 720 + i, 4) for i in range(4)])
    assert alerts and alerts[0].kind == AlertKind.SAFETY_BURST
    assert alerts[0].scope == Scope(tenant_id="acme", feature="chat", category="jailbreak")
    assert alerts[0].p_value is not None and alerts[0].p_value < 1e-6


def test_a_few_triggers_on_a_new_scope_stay_below_the_absolute_floor() -> None:
    assert feed_counts(safety_detector(), [(B0, 3), (B0 + 1, 2)]) == []


def latency_detector() -> LatencyDetector:
    return LatencyDetector(AlertKind.LATENCY, ("provider", "model"), AlertBook())


def lognormal(rng: random.Random, median: float, n: int) -> list[float]:
    return [rng.lognormvariate(math.log(median), 0.35) for _ in range(n)]


def feed_latency(det: LatencyDetector, windows: Iterable[tuple[int, list[float]]]) -> list[Alert]:
    out = []
    for w, values in windows:
        alert = det.observe(("openai", "gpt-4o-mini"), w, values, w * 10.0, w * 10.0 + 9, [])
        if alert is not None:
            out.append(alert)
    return out


def test_latency_at_its_usual_distribution_does_not_alert() -> None:
    rng = random.Random(3)
    assert feed_latency(latency_detector(), [(B0 + i, lognormal(rng, 800, 8)) for i in range(2000)]) == []


def test_p95_latency_regression_alerts_with_observed_and_baseline_p95() -> None:
    rng = random.Random(4)
    det = latency_detector()
    feed_latency(det, [(B0 + i, lognormal(rng, 800, 8)) for i in range(200)])
    alerts = feed_latency(det, [(B0 + 200 + i, lognormal(rng, 2400, 8)) for i in range(3)])
    assert alerts and alerts[0].metric == "latency_ms_p95"
    assert float(alerts[0].observed) > 2 * float(alerts[0].baseline)


def test_latency_and_ttft_of_one_model_share_one_alert() -> None:
    rng = random.Random(5)
    book = AlertBook()
    lat = LatencyDetector(AlertKind.LATENCY, ("provider", "model"), book)
    ttft = LatencyDetector(AlertKind.LATENCY, ("provider", "model"), book, metric="ttft_ms_p95")
    key = ("openai", "gpt-4o-mini")
    for i in range(200):
        lat.observe(key, B0 + i, lognormal(rng, 800, 8), 0, (B0 + i) * 10.0, [])
        ttft.observe(key, B0 + i, lognormal(rng, 150, 8), 0, (B0 + i) * 10.0, [])
    opened = [a for i in range(3) for a in (
        lat.observe(key, B0 + 200 + i, lognormal(rng, 3000, 8), 0, (B0 + 200 + i) * 10.0, []),
        ttft.observe(key, B0 + 200 + i, lognormal(rng, 600, 8), 0, (B0 + 200 + i) * 10.0, [])) if a is not None]
    assert len({a.alert_id for a in opened}) == 1 and len(book.open) == 1


def test_runaway_request_alerts_with_its_request_id_and_normal_requests_do_not() -> None:
    det = RunawayDetector(AlertBook())
    for n in range(200):
        assert det.observe(("acme", "agent", f"req-{n}"), 3, 9_000, T0 + n, T0 + n + 5, []) is None
    alerts = [det.observe(("acme", "agent", "loop"), 5, 15_000, T0 + i, T0 + i + 4, [f"e{i}"]) for i in range(6)]
    opened = [a for a in alerts if a is not None]
    assert opened and opened[0].kind == AlertKind.RUNAWAY_LOOP
    assert opened[0].scope == Scope(tenant_id="acme", feature="agent", request_id="loop")
    assert opened[0].metric == "calls_per_request" and int(opened[0].observed) >= 25


def test_one_huge_call_is_not_a_cost_rate_spike_but_many_are() -> None:
    detector = CostSpikeDetector(COST_PARAMS)
    w0 = int(T0) // 60
    for i in range(10):
        detector.observe("acme", w0 + i, WindowSample(Decimal("0.10"), NOW, NOW, [], Decimal("0.01")))
    one = WindowSample(Decimal("2.10"), NOW, NOW, [], Decimal("2.00"))
    assert detector.observe("acme", w0 + 10, one) is None
    many = WindowSample(Decimal("2.10"), NOW, NOW, [], Decimal("0.10"))
    assert detector.observe("acme", w0 + 11, many) is not None


def test_detector_state_round_trips_through_json_and_keeps_baselines() -> None:
    det = Detectors()
    rates = det.errors
    for i in range(360):
        rates.observe(("openai", "gpt-4o-mini"), B0 + i, [50, 0, 0, 0], 0.0, (B0 + i) * 10.0, [])
    restored = Detectors()
    restored.restore(orjson.loads(orjson.dumps(det.snapshot())))
    assert restored.snapshot() == det.snapshot()
    alert = restored.errors.observe(("openai", "gpt-4o-mini"), B0 + 360, [50, 30, 0, 0], 0.0, (B0 + 360) * 10.0, [])
    assert alert is not None and float(alert.baseline) < 0.01  # learnt, not the 2 % prior


# ------------------------------------------------------------------ batch aggregation (performance paths)


def test_batch_windows_put_out_of_order_events_in_their_own_10s_window() -> None:
    """BatchWindows.add caches the latest window's bounds: out-of-order events around window
    boundaries must still land in int(ts.timestamp()) // 10, with exact first/last times."""
    rng = random.Random(7)
    base = datetime(2026, 3, 2, 12, tzinfo=UTC)
    offsets = [0.0, 9.999999, 10.0, 10.000001, 19.5, 29.999999, 30.0, -0.000001, 5.25, 41.0]
    events = []
    for n in range(200):
        ts = base + timedelta(seconds=rng.choice(offsets) + rng.choice((0, 0, 0, 40, -40)))
        events.append(LLMCall(schema_version=1, event_id=str(uuid.UUID(int=n + 1)), ts=ts, tenant_id="acme", provider="openai",
                              model="gpt-4o-mini", input_tokens=10, output_tokens=5, request_id=f"r{n % 7}"))
    b = BatchWindows()
    for e in events:
        b.add(e, Decimal("0.001"))
    expected: dict[int, list[datetime]] = {}
    for e in events:
        expected.setdefault(int(e.ts.timestamp()) // BASE_WINDOW_S, []).append(e.ts)
    assert {w: (u[2], u[3]) for (_, _, w), u in b.usage.items()} == {
        w: (min(ts), max(ts)) for w, ts in expected.items()}
    assert sorted(k[2] for k in b.models) == sorted(expected)


def test_latency_running_span_sums_equal_a_recount() -> None:
    """The latency detector keeps each span's n and k (values above q0) as windows come, go and
    arrive late; after every observation they must equal a recount of its windows."""
    rng = random.Random(11)
    det = latency_detector()
    key = ("openai", "gpt-4o-mini")
    for i in range(600):
        w = B0 + i - (rng.randrange(20) if rng.random() < 0.2 else 0)  # some late windows
        median = 2400 if 400 <= i < 420 else 800
        det.observe(key, w, lognormal(rng, median, rng.randrange(1, 12)), w * 10.0, w * 10.0 + 9, [])
        s = det.state[key]
        if s.sums is None:
            continue
        short, long_ = det.params.spans
        recount = [0, 0, 0, 0]
        for wi, vals in s.windows.items():
            above = sum(1 for v in vals if v > s.counts_q0)
            if wi > s.newest - long_:
                recount[2] += len(vals)
                recount[3] += above
            if wi > s.newest - short:
                recount[0] += len(vals)
                recount[1] += above
        assert s.sums == recount


def _recount(events: list[tuple[LLMCall, Decimal | None]]) -> tuple[dict[Any, list[Any]], dict[Any, list[Any]]]:
    """``BatchWindows.usage``/``models`` of LLM calls, summed the plain way: call by call."""
    usage: dict[Any, list[Any]] = {}
    models: dict[Any, list[Any]] = {}
    for e, cost in events:
        w = int(e.ts.timestamp()) // BASE_WINDOW_S
        tokens = e.input_tokens + e.output_tokens
        u = usage.setdefault((e.tenant_id, e.feature, w), [None, 0, e.ts, e.ts, None, 0, []])
        if u[0] is None:
            u[0] = u[4] = cost if cost is not None else Decimal(0)
        elif cost is not None:
            u[0] += cost
            u[4] = max(u[4], cost)
        u[1] += tokens
        u[5] = max(u[5], tokens)
        u[2], u[3] = min(u[2], e.ts), max(u[3], e.ts)
        u[6].append(e.event_id)
        m = models.setdefault((e.provider, e.model, w), [0, 0, 0, 0, [], [], e.ts, e.ts, []])
        m[0] += 1
        m[6], m[7] = min(m[6], e.ts), max(m[7], e.ts)
        if e.status == "ok":
            m[4].append(e.latency_ms)
            if e.ttft_ms is not None:
                m[5].append(e.ttft_ms)
        elif e.status in ("error", "timeout", "rate_limited"):
            m[1 + ("error", "timeout", "rate_limited").index(e.status)] += 1
            m[8].append(e.event_id)
    return ({k: [*u[:6], *u[6][:10]] for k, u in usage.items()},
            {k: [*m[:8], *m[8][:10]] for k, m in models.items()})


def test_batch_windows_sums_equal_a_call_by_call_recount() -> None:
    """BatchWindows' hand-inlined sums (usage and models): the sums, maxima, times, sample ids
    and per-model latency lists must be what plainly summing call by call gives, with unpriced
    calls (cost None, first or later), every status, TTFT present or absent, events out of
    order, and a window read before and after more calls arrive."""
    rng = random.Random(11)
    base = datetime(2026, 3, 2, 12, tzinfo=UTC)
    statuses = ["ok"] * 6 + ["error", "timeout", "rate_limited", "filtered", "cancelled"]
    for trial in range(30):
        events: list[tuple[LLMCall, Decimal | None]] = []
        for n in range(rng.randint(1, 300)):
            latency = round(rng.uniform(10, 5_000), 1)
            e = LLMCall(schema_version=1, event_id=str(uuid.UUID(int=trial * 1000 + n + 1)),
                        ts=base + timedelta(seconds=rng.uniform(-15, 45)),
                        tenant_id=rng.choice(["acme", "globex"]), feature=rng.choice(["", "chat", "search"]),
                        provider="openai", model=rng.choice(["gpt-4o", "gpt-4o-mini"]),
                        input_tokens=rng.randint(0, 5_000), output_tokens=rng.randint(0, 900),
                        status=rng.choice(statuses), latency_ms=latency,
                        ttft_ms=rng.choice([None, round(latency / 3, 1)]))
            cost = None if rng.random() < 0.1 else Decimal(rng.randint(0, 10**6)) / Decimal(10**8)
            events.append((e, cost))
        b = BatchWindows()
        half = len(events) // 2
        for e, cost in events[:half]:
            b.add(e, cost)
        assert (b.usage, b.models) == _recount(events[:half])
        for e, cost in events[half:]:
            b.add(e, cost)
        assert (b.usage, b.models) == _recount(events)
