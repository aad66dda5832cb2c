"""SLO definitions and burn-rate alerts (pure): parsing, the SRE Workbook's multiwindow rules,
the alert lifecycle, where an incident starts, and the event-time window sums replay uses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flyball.control_plane.slo import (
    DEFAULT_SLOS,
    RULES,
    WINDOWS,
    SLO,
    Counts,
    Subject,
    burn_rate,
    evaluate,
    incident_start,
    load_slos,
    revise,
    transition,
    window_counts,
)
from flyball.control_plane.slo_replay import COL, EventTimeSLOs
from flyball.control_plane.policy import Outcome, decide_actions
from flyball.control_plane.policy_file import DEFAULT_POLICIES
from flyball.schemas import AlertKind
from flyball.stream_processors.pipeline import EVENT_COLUMNS

NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
AVAIL = SLO(slo_id="avail", kind="availability", feature="chat", target=0.999)  # budget 0.1%
SUBJECT = Subject("avail", "chat", None)
H, M = timedelta(hours=1), timedelta(minutes=1)


def windows(**ratios: tuple[int, int]) -> dict[timedelta, Counts]:
    """Counts per window from keyword names like h1=(total, bad)."""
    names = {"m5": 5 * M, "m30": 30 * M, "h1": H, "h6": 6 * H, "d3": 72 * H}
    out = {w: Counts(1000, 0) for w in WINDOWS}
    out |= {names[k]: Counts(*v) for k, v in ratios.items()}
    return out


def test_shipped_slos_load_and_cover_every_feature() -> None:
    kinds = {s.kind for s in DEFAULT_SLOS.slos}
    assert kinds == {"availability", "latency"}
    assert all(s.feature == "*" for s in DEFAULT_SLOS.slos)


@pytest.mark.parametrize(("text", "field"), [
    ("slos: [{slo_id: a, kind: availability, target: 1.5}]", "slos[0].target"),
    ("slos: [{slo_id: a, kind: latency, target: 0.9}]", "latency_ms"),
    ("slos: [{slo_id: a, kind: availability, target: 0.9, failure_statuses: [ok]}]", "failure_statuses"),
    ("slos: [{slo_id: a, kind: availability, target: 0.9, colour: red}]", "slos[0].colour"),
    ("slos: [{slo_id: a, kind: availability, target: 0.9}, {slo_id: a, kind: availability, target: 0.9}]",
     "slo_id: duplicate"),
])
def test_invalid_slo_file_names_the_field(text: str, field: str) -> None:
    with pytest.raises(ValueError, match="invalid SLOs") as exc:
        load_slos(text)
    assert field in str(exc.value)


def test_revise_bumps_only_changed_slos() -> None:
    old = load_slos("slos: [{slo_id: a, kind: availability, target: 0.99}, {slo_id: b, kind: availability, target: 0.9}]")
    new = load_slos("slos: [{slo_id: a, kind: availability, target: 0.999}, {slo_id: b, kind: availability, target: 0.9}]")
    out = revise(old, new)
    assert out.version == 2
    assert [(s.slo_id, s.version) for s in out.slos] == [("a", 2), ("b", 1)]


def test_burn_rate_is_error_ratio_over_budget() -> None:
    assert burn_rate(Counts(1000, 10), Decimal("0.001")) == Decimal(10)
    assert burn_rate(Counts(0, 0), Decimal("0.001")) == 0


@pytest.mark.parametrize(("given", "rule"), [
    ({"h1": (1000, 15), "m5": (100, 2)}, "fast"),  # 15x and 20x
    ({"h1": (1000, 15), "m5": (100, 1)}, None),  # the short window has recovered (10x): no page
    ({"h1": (1000, 14), "m5": (100, 2)}, None),  # 14x < 14.4x
    ({"h6": (6000, 40), "m30": (500, 4)}, "slow"),  # 6.67x and 8x
    ({"d3": (72000, 80), "h6": (6000, 7)}, "ticket"),  # 1.1x and 1.17x
    ({"h1": (1000, 20), "m5": (100, 5), "h6": (6000, 40), "m30": (500, 4)}, "fast"),  # fast wins
])
def test_rule_fires_only_when_both_of_its_windows_burn(given: dict[str, tuple[int, int]], rule: str | None) -> None:
    burn = evaluate(AVAIL, SUBJECT, windows(**given), Counts(100_000, 50))
    assert (burn.rule.name if burn.rule else None) == rule


def test_too_few_calls_raise_nothing() -> None:
    burn = evaluate(AVAIL, SUBJECT, windows(h1=(5, 5), m5=(5, 5)), Counts(5, 5))
    assert burn.rule is None


def test_budget_consumed_and_remaining() -> None:
    burn = evaluate(AVAIL, SUBJECT, windows(), Counts(100_000, 25))  # 25 of 100 allowed
    assert burn.consumed == Decimal("0.25") and burn.remaining == Decimal("0.75")


def test_alert_lifecycle_open_refresh_resolve() -> None:
    firing = evaluate(AVAIL, SUBJECT, windows(h1=(1000, 20), m5=(100, 3)), Counts(100_000, 40))
    opened = transition([firing], None, now=NOW, started=lambda b: NOW - 20 * M)
    assert opened is not None and opened.kind == AlertKind.SLO_BURN and opened.status == "open"
    assert opened.severity == "critical" and opened.scope.feature == "chat" and opened.scope.tenant_id is None
    assert opened.first_seen == NOW - 20 * M and opened.opened_at == NOW
    assert opened.details is not None
    assert opened.details["rule"] == "fast" and opened.details["budget_consumed"] == "0.4000"
    assert opened.details["budget_remaining"] == "0.6000" and opened.details["burn_rate_1h"] == "20.0000"
    ticket = evaluate(AVAIL, SUBJECT, windows(d3=(72000, 80), h6=(6000, 7)), Counts(100_000, 41))
    again = transition([ticket], opened, now=NOW + M)
    assert again is not None and again.alert_id == opened.alert_id and again.last_seen == NOW + M
    assert again.severity == "critical"  # not downgraded while open
    calm = evaluate(AVAIL, SUBJECT, windows(), Counts(100_000, 41))
    resolved = transition([calm], again, now=NOW + 2 * M)
    assert resolved is not None and resolved.status == "resolved" and resolved.alert_id == opened.alert_id
    assert transition([calm], resolved, now=NOW + 3 * M) is None


def test_page_level_burn_of_a_tenant_proposes_a_throttle_for_approval() -> None:
    per_tenant = Subject("avail", "chat", "acme")
    firing = evaluate(AVAIL, per_tenant, windows(h1=(1000, 20), m5=(100, 3)), Counts(100_000, 40))
    alert = transition([firing], None, now=NOW)
    assert alert is not None
    actions = decide_actions(alert, [], DEFAULT_POLICIES, now=NOW)
    assert [a.decision for a in actions] == [Outcome.PENDING]
    assert actions[0].policy is not None and actions[0].policy.policy_id == "slo-fast-burn-throttle"
    assert actions[0].directive is not None and actions[0].directive.scope.compact() == {"tenant_id": "acme",
                                                                                        "feature": "chat"}
    # re-published a minute later: already waiting for an SRE, nothing new
    again = transition([firing], alert, now=NOW + M)
    assert again is not None
    assert decide_actions(again, [actions[0].directive], DEFAULT_POLICIES, now=NOW + M) == []
    # a feature-wide burn is notified, not acted on (the shim enforces tenant-scoped throttles)
    wide = transition([evaluate(AVAIL, SUBJECT, windows(h1=(1000, 20), m5=(100, 3)), Counts(100_000, 40))], None,
                      now=NOW)
    assert wide is not None
    assert [a.decision for a in decide_actions(wide, [], DEFAULT_POLICIES, now=NOW)] == [Outcome.NOTED]


def test_incident_start_is_first_minute_of_the_burning_run() -> None:
    minutes = {NOW - i * M: Counts(100, 0) for i in range(1, 61)}
    for i in range(1, 13):  # the last 12 minutes burn at 100x
        minutes[NOW - i * M] = Counts(100, 10)
    minutes[NOW - 5 * M] = Counts(100, 1)  # a quieter minute inside the incident (10x: over budget)
    burn = evaluate(AVAIL, SUBJECT, window_counts(minutes, NOW), Counts(6000, 111))
    assert burn.rule is not None and burn.rule.name == "fast"
    assert incident_start(minutes, burn, now=NOW) == NOW - 12 * M


def test_latency_sli_uses_ttft_for_streamed_calls() -> None:
    slo = SLO(slo_id="lat", kind="latency", target=0.9, latency_ms=1000, ttft_ms=200)
    assert slo.classify(status="ok", latency_ms=5000, ttft_ms=100, stream=True) is False
    assert slo.classify(status="ok", latency_ms=500, ttft_ms=300, stream=True) is True
    assert slo.classify(status="ok", latency_ms=1500, ttft_ms=None, stream=True) is True
    assert slo.classify(status="error", latency_ms=10, ttft_ms=None, stream=False) is None
    only_ttft = SLO(slo_id="t", kind="latency", target=0.9, ttft_ms=200)
    assert only_ttft.classify(status="ok", latency_ms=9000, ttft_ms=None, stream=False) is None


def _row(ts: datetime, status: str) -> tuple[object, ...]:
    values = dict.fromkeys(EVENT_COLUMNS)
    values |= {"event_type": "llm_call", "ts": ts, "feature": "chat", "tenant_id": "acme", "status": status,
               "latency_ms": 10.0, "ttft_ms": None, "stream": 0}
    return tuple(values[name] for name in EVENT_COLUMNS)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5 * 24 * 60), st.booleans()), min_size=1, max_size=80),
       st.lists(st.integers(1, 400) | st.integers(5_000, 50_000), min_size=1, max_size=8))  # and quiet gaps
def test_event_time_window_sums_equal_sums_from_scratch(calls: list[tuple[int, bool]], steps: list[int]) -> None:
    """Replay's running sums (rows arriving in any order, time advancing minute by minute) equal
    the window sums computed from the per-minute counts at every evaluation."""
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    tracker = EventTimeSLOs(load_slos("slos: [{slo_id: a, kind: availability, feature: chat, target: 0.99, "
                                      "window_days: 2}]"))
    at = t0
    chunks = [calls[i::len(steps)] for i in range(len(steps))]
    for step, chunk in zip(steps, chunks, strict=True):
        tracker.add([_row(t0 + timedelta(seconds=61 * off), "error" if bad else "ok") for off, bad in chunk])
        at += timedelta(minutes=step)
        tracker.advance(at)
        subject = Subject("a", "chat", None)
        if subject in tracker.sums:
            expected = window_counts(tracker.minutes[subject], tracker.at or at, (*WINDOWS, timedelta(days=2)))
            assert tracker.sums[subject] == expected
    assert COL["ttft_ms"] == EVENT_COLUMNS.index("ttft_ms")


def test_a_century_of_quiet_event_time_is_crossed_at_once_and_counting_goes_on_after_it() -> None:
    slos = load_slos("slos: [{slo_id: a, kind: availability, feature: chat, target: 0.99, window_days: 2}]")
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    tracker = EventTimeSLOs(slos)
    tracker.add([_row(t0, "ok")])
    assert tracker.advance(t0 + timedelta(days=36_500)) == []  # minute by minute, 52 million steps
    later = t0 + timedelta(days=36_500)
    tracker.add([_row(later + timedelta(seconds=s), "error") for s in range(0, 600, 5)])
    alerts = tracker.advance(later + timedelta(minutes=11))
    assert [(a.kind, a.status) for a in alerts][:1] == [("slo_burn", "open")]


def test_rules_follow_the_workbook_table() -> None:
    assert [(r.name, r.factor, r.long, r.short) for r in RULES] == [
        ("fast", Decimal("14.4"), H, 5 * M), ("slow", Decimal(6), 6 * H, 30 * M),
        ("ticket", Decimal(1), 72 * H, 6 * H)]


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"slos": ' + '{"a": ' * 50_000 + "1" + "}" * 50_001,
                                  "slos:\n" + "".join(" " * i + "- \n" for i in range(1, 1200))])
def test_a_deeply_nested_slo_file_is_refused_before_it_is_parsed(text: str) -> None:
    with pytest.raises(ValueError, match="SLO: nested deeper than 32 levels"):
        load_slos(text)
