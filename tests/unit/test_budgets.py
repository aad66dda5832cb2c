"""Unit tests for budget accounting (``flyball.stream_processors.budgets``): running totals per
tenant, thresholds once per period, seeding after an ownership change, closed periods."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from flyball.schemas import AlertKind
from flyball.stream_processors.budgets import (
    Budget,
    BudgetError,
    BudgetTracker,
    Period,
    make_budget,
    period_bounds,
)

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
COLUMNS = ("event_id", "ts", "tenant_id", "feature", "cost_usd")


def row(cost: str | None, *, tenant: str = "acme", feature: str = "chat", ts: datetime = NOW,
        event_id: str | None = None) -> tuple[object, ...]:
    return (event_id or str(uuid.uuid4()), ts, tenant, feature, None if cost is None else Decimal(cost))


def tracker(*budgets: Budget, **kw: object) -> BudgetTracker:
    listed = tuple(budgets)
    return BudgetTracker(lambda: listed, **kw)  # type: ignore[arg-type]


def test_thresholds_fire_once_each_at_the_crossing_event() -> None:
    t = tracker(make_budget(tenant_id="acme", limit_usd="10"))
    assert t.observe([row("4.99")], COLUMNS, now=NOW) == []
    first = t.observe([row("0.01"), row("2")], COLUMNS, now=NOW)  # 5.00 -> 50 %; 7.00 below 80 %
    assert [(a.metric, a.observed, a.severity) for a in first] == [("budget_monthly_pct_50", "5", "info")]
    second = t.observe([row("1"), row("2"), row("5")], COLUMNS, now=NOW)  # 8 -> 80 %, 10 -> 100 %
    assert [(a.metric, a.observed, a.severity) for a in second] == [
        ("budget_monthly_pct_80", "8", "warning"), ("budget_monthly_pct_100", "10", "critical")]
    assert all(a.kind == AlertKind.BUDGET_THRESHOLD and a.scope.tenant_id == "acme" for a in first + second)
    assert t.observe([row("100")], COLUMNS, now=NOW) == []  # once per period per threshold


def test_a_new_period_starts_from_zero_and_alerts_again() -> None:
    t = tracker(make_budget(tenant_id="acme", limit_usd="1", period="daily", thresholds=[100]))
    a1 = t.observe([row("1")], COLUMNS, now=NOW)
    a2 = t.observe([row("0.5", ts=NOW + timedelta(days=1))], COLUMNS, now=NOW + timedelta(days=1))
    a3 = t.observe([row("0.5", ts=NOW + timedelta(days=1))], COLUMNS, now=NOW + timedelta(days=1))
    assert len(a1) == 1 and a2 == [] and len(a3) == 1
    assert a1[0].alert_id != a3[0].alert_id


def test_feature_budget_counts_only_its_feature_and_tenant_budget_counts_all() -> None:
    tenant = make_budget(tenant_id="acme", limit_usd="10", thresholds=[100])
    feature = make_budget(tenant_id="acme", feature="search", limit_usd="3", thresholds=[100])
    t = tracker(tenant, feature)
    alerts = t.observe([row("2", feature="chat"), row("2", feature="search"), row("1", feature="search"),
                        row("9", tenant="globex")], COLUMNS, now=NOW)
    assert [a.scope.compact() for a in alerts] == [{"tenant_id": "acme", "feature": "search"}]
    assert t.total(tenant, NOW) == Decimal(5) and t.total(feature, NOW) == Decimal(3)


def test_unpriced_events_do_not_move_a_budget() -> None:
    b = make_budget(tenant_id="acme", limit_usd="1")
    t = tracker(b)
    t.observe([row(None), row("0.1")], COLUMNS, now=NOW)
    assert t.total(b, NOW) == Decimal("0.1")


def test_alert_id_is_deterministic_so_a_replayed_crossing_is_the_same_alert() -> None:
    b = make_budget(tenant_id="acme", limit_usd="1", thresholds=[100])
    ids = [tracker(b).observe([row("1")], COLUMNS, now=NOW)[0].alert_id for _ in range(2)]
    assert ids[0] == ids[1]


def test_new_owner_seeds_from_stored_spend_excluding_the_batch_and_skips_passed_thresholds() -> None:
    b = make_budget(tenant_id="acme", limit_usd="10")
    batch = [row("1", event_id=str(uuid.uuid4())), row("2", event_id=str(uuid.uuid4()))]
    calls: list[frozenset[str]] = []

    def seed(budget: Budget, start: datetime, end: datetime, exclude: frozenset[str]) -> Decimal:
        calls.append(exclude)
        assert (start, end) == period_bounds(Period.MONTHLY, NOW)
        return Decimal("6")  # stored by the previous owner (already past 50 %)

    t = tracker(b, seed=seed)
    alerts = t.observe(batch, COLUMNS, now=NOW)  # 6 + 1 + 2 = 9: 80 % crossed here, 50 % not re-sent
    assert [a.metric for a in alerts] == ["budget_monthly_pct_80"]
    assert calls == [frozenset(str(r[0]) for r in batch)]
    assert t.total(b, NOW) == Decimal(9)


def test_tenant_idle_here_longer_than_reseed_idle_is_re_read() -> None:
    b = make_budget(tenant_id="acme", limit_usd="100")
    stored = {"total": Decimal(0)}
    t = tracker(b, seed=lambda *_: stored["total"], reseed_idle=timedelta(seconds=1))
    t.observe([row("1")], COLUMNS, now=NOW)
    t.observe([row("1")], COLUMNS, now=NOW + timedelta(milliseconds=500))  # busy: local total kept
    assert t.total(b, NOW) == Decimal(2)
    stored["total"] = Decimal(50)  # another replica owned the partition meanwhile
    t.observe([row("1")], COLUMNS, now=NOW + timedelta(seconds=5))
    assert t.total(b, NOW) == Decimal(51)


def test_events_of_a_period_closed_beyond_lateness_raise_no_alert() -> None:
    b = make_budget(tenant_id="acme", limit_usd="1", period="daily", thresholds=[100])
    t = tracker(b, lateness=timedelta(hours=2))
    yesterday = NOW - timedelta(days=1)
    assert t.observe([row("5", ts=yesterday)], COLUMNS, now=NOW) == []  # closed at 00:00 + 2 h < 12:00
    t2 = tracker(b, lateness=timedelta(hours=13))
    assert len(t2.observe([row("5", ts=yesterday)], COLUMNS, now=NOW)) == 1  # still within lateness


def test_replay_without_now_counts_in_event_time() -> None:
    b = make_budget(tenant_id="acme", limit_usd="1", thresholds=[100])
    alerts = tracker(b).observe([row("1", ts=datetime(2020, 1, 1, tzinfo=UTC))], COLUMNS, now=None)
    assert alerts[0].first_seen == datetime(2020, 1, 1, tzinfo=UTC)


def test_month_bounds_handle_december_and_leap_february() -> None:
    assert period_bounds(Period.MONTHLY, datetime(2025, 12, 31, 23, tzinfo=UTC)) == (
        datetime(2025, 12, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
    assert period_bounds(Period.MONTHLY, datetime(2028, 2, 10, tzinfo=UTC))[1] == datetime(2028, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"tenant_id": "", "limit_usd": "1"}, "tenant_id"),
    ({"tenant_id": "a", "limit_usd": "-1"}, "limit_usd"),
    ({"tenant_id": "a", "limit_usd": "NaN"}, "limit_usd"),
    ({"tenant_id": "a", "limit_usd": "x"}, "limit_usd"),
    ({"tenant_id": "a", "limit_usd": "1", "period": "weekly"}, "period"),
    ({"tenant_id": "a", "limit_usd": "1", "thresholds": []}, "thresholds"),
    ({"tenant_id": "a", "limit_usd": "1", "thresholds": [50.5]}, "thresholds"),
    ({"tenant_id": "a", "limit_usd": "1", "feature": ""}, "feature"),
])
def test_bad_budget_is_refused_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(BudgetError, match=f"^{field}:"):
        make_budget(**kwargs)


def test_pipeline_appends_budget_alerts_after_pricing_and_flags_late_rows() -> None:
    import orjson

    from flyball.control_plane.runtime import load_prices
    from flyball.stream_processors.pipeline import EVENT_COLUMNS, Pipeline

    book = load_prices(None)
    budget = make_budget(tenant_id="acme", limit_usd="0.01", thresholds=[100])
    pipe = Pipeline(lambda: book, budgets=tracker(budget), lateness=timedelta(hours=1))

    def raw(ts: datetime) -> bytes:  # gpt-4o: 1000 in + 100 out = $0.0035
        return orjson.dumps({"schema_version": 1, "event_type": "llm_call", "event_id": str(uuid.uuid4()), "ts": ts.isoformat(),
                             "tenant_id": "acme", "provider": "openai", "model": "gpt-4o",
                             "input_tokens": 1000, "output_tokens": 100})

    out = pipe.process([raw(NOW - timedelta(minutes=5)) for _ in range(3)] + [raw(NOW - timedelta(hours=3))],
                       now=NOW)
    budget_alerts = [a for a in out.alerts if a.kind == AlertKind.BUDGET_THRESHOLD]
    assert [a.observed for a in budget_alerts] == ["0.0105"]  # the third call crosses $0.01
    late = [dict(zip(EVENT_COLUMNS, r, strict=True))["late"] for r in out.rows]
    assert late == [0, 0, 0, 1]


def test_seeds_are_asked_for_and_observe_uses_the_answers() -> None:
    b = make_budget(tenant_id="acme", limit_usd="10", thresholds=[50, 100])
    t = BudgetTracker(lambda: (b,), asks=True)
    rows = [row("4")]
    wanted = t.wanted(rows, COLUMNS, now=NOW)
    assert [(r.budget.budget_id, r.exclude) for r in wanted] == [(b.budget_id, frozenset({str(rows[0][0])}))]
    alerts = t.observe(rows, COLUMNS, now=NOW, seeds={wanted[0].key: Decimal("2")})
    assert [a.metric for a in alerts] == ["budget_monthly_pct_50"]  # 2 stored + 4 = 6 of 10
    assert t.wanted([row("1")], COLUMNS, now=NOW) == []  # fresh: nothing to ask


def test_a_tracker_that_asks_refuses_to_account_without_the_answer() -> None:
    b = make_budget(tenant_id="acme", limit_usd="10")
    t = BudgetTracker(lambda: (b,), asks=True)
    with pytest.raises(LookupError):
        t.observe([row("4")], COLUMNS, now=NOW, seeds={})
