"""Release comparison (pure): the always-valid test, the verdicts, the joins, the alert."""

from __future__ import annotations

import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from flyball.schemas import AlertKind
from flyball.schemas.events import Feedback, LLMCall, ToolCall
from flyball.stream_processors.releases import ReleaseComparator, ReleaseParams, msprt

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


def _id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def call(rng: random.Random, t: float, version: str, *, status: str = "ok", tokens: int = 1000,
         feature: str = "bot", request_id: str = "", latency: float = 800.0, tenant: str = "acme") -> LLMCall:
    return LLMCall(schema_version=1, event_id=_id(rng), ts=T0 + timedelta(seconds=t), tenant_id=tenant, feature=feature,
                   provider="openai", model="gpt-4o-mini", prompt_version=version, input_tokens=tokens,
                   output_tokens=100, latency_ms=latency, status=status, request_id=request_id)


def traffic(rng: random.Random, seconds: int, *, share: float, start: int, fail_old: float, fail_new: float,
            cost_new: float = 1.0, rate: float = 2.0, after: int = 0) -> list[tuple[Any, float | None]]:
    """``rate`` calls/s on v1; from ``start`` a share goes to v2 (the candidate)."""
    out: list[tuple[Any, float | None]] = []
    t = float(after)
    while t < after + seconds:
        t += rng.expovariate(rate)
        new = t >= start and rng.random() < share
        fail = fail_new if new else fail_old
        status = "error" if rng.random() < fail else "ok"
        cost = 0.001 * rng.lognormvariate(0, 0.4) * (cost_new if new else 1.0)
        out.append((call(rng, t, "v2" if new else "v1", status=status), cost))
    return out


def run(comparator: ReleaseComparator, events: list[tuple[Any, float | None]], batch_s: float = 5.0) -> list[Any]:
    alerts: list[Any] = []
    batch: list[tuple[Any, float | None]] = []
    edge = None
    for event, cost in events:
        t = event.ts
        if edge is not None and t >= edge and batch:
            alerts += comparator.observe(batch)
            alerts += comparator.advance(batch[-1][0].ts)
            batch = []
        if not batch:
            edge = t + timedelta(seconds=batch_s)
        batch.append((event, cost))
    if batch:
        alerts += comparator.observe(batch)
        alerts += comparator.advance(batch[-1][0].ts)
    return alerts


def test_msprt_false_alarm_rate_stays_bounded_under_continuous_looks() -> None:
    """Under H0 (the difference equals delta), looking after every observation must not
    reject more often than alpha; a fixed-horizon test looked at as often does."""
    rng = random.Random(7)
    alpha, delta, tau2 = 0.05, 0.0, 1.0
    rejected = naive = 0
    runs = 400
    for _ in range(runs):
        total = 0.0
        hit = hit_naive = False
        for n in range(1, 301):
            total += rng.gauss(0.0, 1.0)
            mean, var = total / n, 1.0 / n
            p, _, _ = msprt(mean, var, delta, tau2, alpha)
            hit = hit or p <= alpha
            hit_naive = hit_naive or mean / math.sqrt(var) > 1.645
        rejected += hit
        naive += hit_naive
    assert rejected / runs <= alpha + 0.02
    assert naive / runs > 3 * alpha  # why the sequential test is needed at all


def test_msprt_interval_covers_and_p_value_is_one_at_or_below_the_null() -> None:
    p, lo, hi = msprt(0.5, 0.01, 0.1, 0.04, 0.01)
    assert lo < 0.5 < hi
    assert msprt(0.05, 0.01, 0.1, 0.04, 0.01)[0] == 1.0


def test_clean_canary_raises_nothing_and_is_promoted() -> None:
    rng = random.Random(1)
    comp = ReleaseComparator(ReleaseParams(promote_min_calls=300))
    alerts = run(comp, traffic(rng, 3600, share=0.3, start=600, fail_old=0.02, fail_new=0.02))
    assert not [a for a in alerts if a.kind == AlertKind.VERSION_REGRESSION]
    reports = comp.report()
    assert [r["verdict"] for r in reports] == ["promote"]
    assert reports[0]["old_version"] == "v1" and reports[0]["new_version"] == "v2"


def test_error_regression_rolls_back_critical_with_evidence_and_resolves_after_the_pin() -> None:
    rng = random.Random(2)
    comp = ReleaseComparator()
    events = traffic(rng, 1800, share=0.2, start=600, fail_old=0.02, fail_new=0.15)
    # the pin: from 1800 s on, every call is v1 again
    events += traffic(rng, 900, share=0.0, start=10**9, fail_old=0.02, fail_new=0.0, after=1800)
    alerts = [a for a in run(comp, events) if a.kind == AlertKind.VERSION_REGRESSION]
    assert alerts, "a 7.5x failure rate on 20% of 2 calls/s must be caught"
    first = alerts[0]
    assert first.status == "open" and first.severity == "critical" and first.verdict == "rollback"
    assert first.scope.compact() == {"feature": "bot", "version_field": "prompt_version", "old_version": "v1",
                                     "new_version": "v2"}
    assert first.opened_at is not None and first.opened_at < T0 + timedelta(seconds=1800)
    metrics = {m["metric"]: m for m in first.evidence["comparison"]["metrics"]}
    failure = metrics["failure_rate"]
    assert failure["regression"] and failure["new"] > failure["old"] and failure["n_new"] > 20
    assert failure["interval"][0] > failure["min_effect"]
    assert alerts[-1].status == "resolved" and alerts[-1].alert_id == first.alert_id


def test_cost_regression_is_a_warning() -> None:
    rng = random.Random(3)
    comp = ReleaseComparator()
    alerts = [a for a in run(comp, traffic(rng, 2400, share=0.3, start=600, fail_old=0.0, fail_new=0.0,
                                           cost_new=1.6)) if a.kind == AlertKind.VERSION_REGRESSION]
    assert alerts and alerts[0].severity == "warning" and alerts[0].metric == "cost_per_call"


def test_a_tiny_difference_on_huge_traffic_is_not_a_regression() -> None:
    rng = random.Random(4)
    comp = ReleaseComparator()
    alerts = run(comp, traffic(rng, 3000, share=0.5, start=300, fail_old=0.02, fail_new=0.021, cost_new=1.03,
                               rate=40.0), batch_s=30.0)
    assert not [a for a in alerts if a.kind == AlertKind.VERSION_REGRESSION]


def test_rollout_compares_against_the_incumbents_last_hour() -> None:
    """The incumbent stops taking traffic (a full rollout): the baseline is its history."""
    rng = random.Random(5)
    comp = ReleaseComparator()
    alerts = run(comp, traffic(rng, 2400, share=1.0, start=1200, fail_old=0.01, fail_new=0.2))
    regression = [a for a in alerts if a.kind == AlertKind.VERSION_REGRESSION]
    assert regression and regression[0].severity == "critical"
    comparison = regression[0].evidence["comparison"]
    assert comparison["calls_old"] == 0  # nothing live to compare with: the incumbent's history was


def test_tool_failures_and_feedback_join_their_calls_whatever_the_order() -> None:
    rng = random.Random(6)
    comp = ReleaseComparator()
    events: list[tuple[Any, float | None]] = []
    t = 0.0
    while t < 3000:
        t += rng.expovariate(2.0)
        new = t >= 600 and rng.random() < 0.3
        rid = _id(rng)
        fail = rng.random() < (0.4 if new else 0.02)
        tool = ToolCall(schema_version=1, event_id=_id(rng), ts=T0 + timedelta(seconds=t), tenant_id="acme", feature="bot",
                        request_id=rid, tool_name="sql", status="error" if fail else "ok")
        c = call(rng, t + 0.1, "v2" if new else "v1", request_id=rid)
        fb = Feedback(schema_version=1, event_id=_id(rng), ts=T0 + timedelta(seconds=t + 1), tenant_id="acme", feature="bot",
                      score=rng.gauss(0.5, 0.2), target_event_id=c.event_id)
        events += [(tool, None), (c, 0.001), (fb, None)]  # the tool call arrives before its model call
    alerts = [a for a in run(comp, events) if a.kind == AlertKind.VERSION_REGRESSION]
    assert alerts
    metrics = {m["metric"]: m for m in alerts[0].evidence["comparison"]["metrics"]}
    assert metrics["tool_failure_rate"]["regression"]
    assert metrics["feedback_mean"]["n_new"] > 15 and not metrics["feedback_mean"]["regression"]


def test_batching_moves_the_verdict_by_at_most_a_batch() -> None:
    """Replay and live cut batches differently; the verdict may only move by a batch or so."""
    events = traffic(random.Random(8), 2400, share=0.3, start=600, fail_old=0.02, fail_new=0.2)
    a = [x for x in run(ReleaseComparator(), events, batch_s=5.0) if x.kind == AlertKind.VERSION_REGRESSION]
    b = [x for x in run(ReleaseComparator(), events, batch_s=30.0) if x.kind == AlertKind.VERSION_REGRESSION]
    assert a and b and a[0].scope == b[0].scope
    assert a[0].opened_at is not None and b[0].opened_at is not None
    assert abs((a[0].opened_at - b[0].opened_at).total_seconds()) <= 35


def test_versions_snapshot_sets_each_version_beside_its_verdict_then_only_groups_with_new_traffic() -> None:
    rng = random.Random(7)
    comparator = ReleaseComparator(ReleaseParams())
    events = traffic(rng, 1800, share=0.5, start=600, fail_old=0.01, fail_new=0.5)
    run(comparator, events)
    last = events[-1][0].ts
    rows = {(r.dimension, r.version): r for r in comparator.versions(last)}
    v1, v2 = rows[("prompt_version", "v1")], rows[("prompt_version", "v2")]
    in_window = [e for e, _ in events if e.ts > last - timedelta(hours=1)]
    assert v1.calls + v2.calls == len(in_window) == rows[("model", "gpt-4o-mini")].calls
    assert v2.calls == sum(1 for e in in_window if e.prompt_version == "v2")
    assert math.isclose(v1.share + v2.share, 1.0) and rows[("model", "gpt-4o-mini")].share == 1.0
    assert (v1.role, v2.role, v1.comparison) == ("incumbent", "candidate", None)
    assert v2.comparison is not None and v2.comparison["verdict"] == "rollback"
    assert v2.comparison["old_version"] == "v1"
    assert comparator.versions(last) == []  # nothing new since the last snapshot


def test_a_version_that_is_part_of_the_features_usual_mix_is_no_release() -> None:
    """A feature that has always sent one call in fifty to a second, slower version (or two
    tenants' features of one name on different models): the second version first shows up after
    the incumbent's first 50 calls only because it had not been drawn yet. It is not a canary and
    raises nothing, however different it is; the same version starting after an hour of the
    incumbent alone, at the same share, is a release and rolls back."""
    rng = random.Random(12)
    mixed: list[tuple[Any, float | None]] = []
    for i in range(4 * 3600):  # 1 call/s for four hours, v2 every 50th call from the 60th
        slow = i >= 60 and i % 50 == 10
        mixed.append((call(rng, float(i), "v2" if slow else "v1", latency=4000.0 if slow else 800.0), 0.001))
    assert run(ReleaseComparator(), mixed) == []
    canary: list[tuple[Any, float | None]] = []
    for i in range(4 * 3600):
        slow = i >= 3600 and i % 50 == 10
        canary.append((call(rng, float(i), "v2" if slow else "v1", latency=4000.0 if slow else 800.0), 0.001))
    alerts = run(ReleaseComparator(), canary)
    assert alerts and alerts[0].kind == AlertKind.VERSION_REGRESSION and alerts[0].scope.new_version == "v2"


def test_another_tenants_feature_of_the_same_name_on_its_own_version_is_no_release() -> None:
    """Two tenants name a feature alike: one on v1 all along, the other joins after an hour on
    v2 (its own set-up; here half its calls and three times slower). The comparator groups the
    feature across tenants, but v2 never served a call the incumbent also served for that
    tenant: no comparison, nothing raised. The first tenant moving half its own calls to v2 is a
    release and rolls back."""
    rng = random.Random(21)
    other: list[tuple[Any, float | None]] = []
    for i in range(3 * 3600):
        other.append((call(rng, float(i), "v1", tenant="acme"), 0.001))
        if i >= 3600 and i % 10 == 0:
            other.append((call(rng, i + 0.5, "v2", tenant="globex", latency=2400.0), 0.001))
    assert run(ReleaseComparator(), other) == []
    release: list[tuple[Any, float | None]] = []
    for i in range(3 * 3600):
        slow = i >= 3600 and i % 2 == 0
        release.append((call(rng, float(i), "v2" if slow else "v1", tenant="acme", latency=2400.0 if slow else 800.0),
                        0.001))
    alerts = run(ReleaseComparator(), release)
    assert alerts and alerts[0].kind == AlertKind.VERSION_REGRESSION and alerts[0].scope.new_version == "v2"


def test_a_version_field_of_high_cardinality_is_bounded_and_reported_once() -> None:
    """A shim that puts a new prompt_version on every call (a per-request hash, a bug) must not
    make the comparison track every value: each value would open a comparison that every call of
    the group then feeds, and each new value scans the group, which grows without end."""
    rng = random.Random(11)
    params = ReleaseParams(max_versions=20, max_candidates=4)
    comparator = ReleaseComparator(params)
    events = traffic(rng, 120, share=0.0, start=10**9, fail_old=0.0, fail_new=0.0)  # v1 established
    n = 500
    events += [(call(rng, 121 + i * 0.1, f"h{i}"), 0.001) for i in range(n)]
    run(comparator, events)
    open_now = [c for c in comparator.report() if c["verdict"] == "hold" and c["new_version"].startswith("h")]
    assert len(open_now) == 4  # max_candidates
    # v1 and 19 hashes are tracked; the other calls are not compared
    assert comparator.take_capped() == [{"tenant_id": None, "feature": "bot", "untracked_calls": n - 19,
                                         "uncompared_values": 19 - 4, "max_versions": 20, "max_candidates": 4}]
    assert comparator.take_capped() == []  # reported once
    last = events[-1][0].ts
    rows = comparator.versions(last)
    assert len([r for r in rows if r.dimension == "prompt_version"]) == 20
    assert sum(r.calls for r in rows if r.dimension == "prompt_version" and r.version.startswith("h")) == 19


def test_a_version_idle_for_the_baseline_hour_is_forgotten_and_its_return_is_compared() -> None:
    """v1 serves, a rollout to v2 is promoted, v1 is idle for over an hour: it no longer shows in
    the versions snapshot, and going back to v1 is a change like any other, compared against v2."""
    rng = random.Random(12)
    comparator = ReleaseComparator()
    events = [(call(rng, i * 0.5, "v1"), 0.001) for i in range(400)]  # 200 s of v1
    events += [(call(rng, 200 + i * 0.5, "v2"), 0.001) for i in range(9000)]  # 75 min of v2 only
    run(comparator, events)
    v2 = [c for c in comparator.report() if c["new_version"] == "v2"]
    assert v2 and v2[0]["verdict"] == "promote" and v2[0]["old_version"] == "v1"
    last = events[-1][0].ts
    assert {r.version for r in comparator.versions(last) if r.dimension == "prompt_version"} == {"v2"}
    back = [(call(rng, 4700 + i * 0.5, "v1", status="error" if i % 2 else "ok"), 0.001) for i in range(200)]
    alerts = run(comparator, back)
    v1 = [c for c in comparator.report() if c["new_version"] == "v1"]
    assert v1 and v1[0]["old_version"] == "v2"  # the return is compared against the incumbent now
    assert any(a.kind == AlertKind.VERSION_REGRESSION and a.scope.new_version == "v1" for a in alerts)


def test_a_feature_name_per_call_tracks_at_most_max_groups_and_says_so_once() -> None:
    """A request id sent as the feature: a group per call, each kept for the baseline hour."""
    rng = random.Random(13)
    comparator = ReleaseComparator(ReleaseParams(max_groups=50))
    events = [(call(rng, i * 0.1, "v1", feature=f"req-{i}"), 0.001) for i in range(400)]
    run(comparator, events)
    rows = comparator.versions(events[-1][0].ts)
    assert len({r.feature for r in rows}) == 50
    assert comparator.take_capped() == [{"max_groups": 50, "ungrouped_calls": 350}]
    assert comparator.take_capped() == []
