"""Unit tests for the per-batch core (``flyball.stream_processors.pipeline``)."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from flyball.schemas import AlertKind, Scope
from flyball.stream_processors.pipeline import EVENT_COLUMNS, MAX_UNPRICED_ALERTS, BatchResult, Pipeline
from flyball.stream_processors.pricing import load_catalog

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
BOOK = load_catalog(json.dumps({"format": "flyball.prices/1", "prices": [
    {"provider": "openai", "model": "gpt-4o-mini", "effective_from": "2025-01-01T00:00:00+00:00",
     "input": "0.00000015", "output": "0.0000006", "cache_read": "0.000000075"},
]}))


def event_id(n: int) -> str:
    return str(uuid.UUID(int=n + 1))


def llm_call(n: int, **overrides: Any) -> bytes:
    event = {"schema_version": 1, "event_type": "llm_call", "event_id": event_id(n), "ts": NOW.isoformat(), "tenant_id": "acme",
             "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1200, "output_tokens": 300,
             "cache_read_tokens": 1000}
    event.update(overrides)
    return orjson.dumps(event)


def rows(result: BatchResult) -> list[dict[str, Any]]:
    return [dict(zip(EVENT_COLUMNS, row, strict=True)) for row in result.rows]


def pipeline() -> Pipeline:
    return Pipeline(lambda: BOOK)


def test_invalid_bytes_are_dead_lettered_with_original_bytes_and_reason() -> None:
    result = pipeline().process([b"{not json", llm_call(1)], now=NOW)
    assert [(d.raw, d.reason.startswith("event:")) for d in result.dead] == [(b"{not json", True)]
    assert len(result.rows) == 1


def test_dead_letter_reason_names_the_invalid_field() -> None:
    result = pipeline().process([llm_call(1, input_tokens=-5)], now=NOW)
    assert result.rows == []
    assert result.dead[0].reason.startswith("input_tokens:")


def test_event_too_far_in_the_future_is_dead_lettered_live_but_kept_in_replay() -> None:
    raw = llm_call(1, ts=(NOW + timedelta(minutes=10)).isoformat())
    assert len(pipeline().process([raw], now=NOW).dead) == 1
    assert len(pipeline().process([raw], now=None).rows) == 1


def test_duplicate_event_ids_in_one_batch_are_counted_not_stored() -> None:
    result = pipeline().process([llm_call(1), llm_call(1), llm_call(2)], now=NOW)
    assert result.duplicates == 1
    assert [r["event_id"] for r in rows(result)] == [event_id(1), event_id(2)]


def test_duplicate_event_ids_across_batches_are_counted_not_stored() -> None:
    pipe = pipeline()
    pipe.process([llm_call(1)], now=NOW)
    result = pipe.process([llm_call(1)], now=NOW)
    assert (result.duplicates, result.rows) == (1, [])


def test_row_carries_exact_decimal_cost_and_price_version() -> None:
    # 200 * 0.00000015 + 1000 * 0.000000075 + 300 * 0.0000006 = 0.000285
    (row,) = rows(pipeline().process([llm_call(1)], now=NOW))
    assert (row["cost_usd"], row["price_version"], row["unpriced"]) == (
        Decimal("0.000285"), "openai/gpt-4o-mini@2025-01-01T00:00:00Z", 0)
    assert isinstance(row["cost_usd"], Decimal)


def test_row_costs_sum_exactly() -> None:
    result = pipeline().process([llm_call(n) for n in range(1, 11)], now=NOW)
    assert sum(r["cost_usd"] for r in rows(result)) == Decimal("0.00285")


def test_non_llm_event_is_stored_at_zero_cost() -> None:
    raw = orjson.dumps({"schema_version": 1, "event_type": "tool_call", "event_id": event_id(1), "ts": NOW.isoformat(),
                        "tenant_id": "acme", "tool_name": "sql"})
    (row,) = rows(pipeline().process([raw], now=NOW))
    assert (row["tool_name"], row["cost_usd"], row["unpriced"]) == ("sql", Decimal(0), 0)


def test_unpriced_model_row_has_null_cost_and_unpriced_flag() -> None:
    (row,) = rows(pipeline().process([llm_call(1, model="mystery-1")], now=NOW))
    assert (row["cost_usd"], row["price_version"], row["unpriced"]) == (None, "", 1)


def test_unpriced_model_alerts_once_per_provider_and_model_across_batches() -> None:
    pipe = pipeline()
    first = pipe.process([llm_call(1, model="mystery-1"), llm_call(2, model="mystery-1")], now=NOW)
    second = pipe.process([llm_call(3, model="mystery-1"), llm_call(4, model="mystery-2")], now=NOW)
    alerts = first.alerts + second.alerts
    assert [(a.kind, a.scope) for a in alerts] == [
        (AlertKind.UNPRICED_MODEL, Scope(provider="openai", model="mystery-1")),
        (AlertKind.UNPRICED_MODEL, Scope(provider="openai", model="mystery-2")),
    ]


def test_a_new_unpriced_model_on_every_call_raises_a_bounded_number_of_alerts_then_says_so_once() -> None:
    # a model field of high cardinality (a deployment id, a bug) must not become an alert per call
    pipe = pipeline()
    n = MAX_UNPRICED_ALERTS + 300
    first = pipe.process([llm_call(i, model=f"deploy-{i}") for i in range(n)], now=NOW)
    second = pipe.process([llm_call(n + 1, model="deploy-new")], now=NOW)
    unpriced = [a for a in first.alerts + second.alerts if a.kind == AlertKind.UNPRICED_MODEL]
    one_by_one = [a for a in unpriced if a.scope.model]
    assert len(one_by_one) == MAX_UNPRICED_ALERTS
    (overflow,) = [a for a in unpriced if not a.scope.model]
    assert overflow.scope == Scope(provider="openai") and f"more than {MAX_UNPRICED_ALERTS}" in overflow.summary
    assert len(first.rows) == n and all(row["unpriced"] == 1 for row in rows(first))  # every event kept


def test_event_whose_ts_overflows_in_utc_is_dead_lettered_not_crashing_the_batch() -> None:
    result = pipeline().process([llm_call(1, ts="0001-01-01T00:00:00+01:00"), llm_call(2)], now=NOW)
    assert [d.reason.split(":")[0] for d in result.dead] == ["ts"]
    assert len(result.rows) == 1


def tool_call(n: int, ts: datetime, status: str = "ok", tool: str = "sql") -> bytes:
    return orjson.dumps({"schema_version": 1, "event_type": "tool_call", "event_id": event_id(n), "ts": ts.isoformat(), "tenant_id": "acme",
                         "tool_name": tool, "status": status, "latency_ms": 100.0})


def test_failing_tool_raises_one_tool_failure_alert_naming_the_tool_and_its_events() -> None:
    pipe = pipeline()
    start = NOW - timedelta(minutes=130)  # past the failure shares' two hours of cold start
    normal = [tool_call(i, start + timedelta(seconds=i)) for i in range(7800)]
    for i in range(0, len(normal), 500):
        assert [a for a in pipe.process(normal[i:i + 500], now=None).alerts] == []
    failing = [tool_call(10_000 + i, NOW + timedelta(seconds=i), status="error" if i % 2 else "ok") for i in range(40)]
    alerts = [a for i in range(0, 40, 5) for a in pipe.process(failing[i:i + 5], now=None).alerts]
    assert [(a.kind, a.scope, a.status) for a in alerts[:1]] == [(AlertKind.TOOL_FAILURE, Scope(tool_name="sql"), "open")]
    assert set(alerts[0].sample_event_ids) <= {event_id(10_000 + i) for i in range(1, 40, 2)}
    assert len({a.alert_id for a in alerts}) == 1


def test_feature_level_spike_is_not_reported_while_the_tenant_level_one_is_open() -> None:
    pipe = pipeline()
    start = NOW - timedelta(minutes=90)
    calm = [llm_call(i, ts=(start + timedelta(seconds=5 * i)).isoformat(), feature="chat") for i in range(1080)]
    pipe.process(calm, now=None)
    spike = [llm_call(10_000 + i, ts=(NOW + timedelta(seconds=i)).isoformat(), feature="chat", input_tokens=900_000,
                      cache_read_tokens=0, output_tokens=50_000) for i in range(30)]
    alerts = pipe.process(spike, now=None).alerts
    kinds = {(a.kind, tuple(sorted(a.scope.compact()))) for a in alerts}
    assert (AlertKind.COST_SPIKE, ("tenant_id",)) in kinds and (AlertKind.TOKEN_SPIKE, ("tenant_id",)) in kinds
    assert all(a.scope.feature is None for a in alerts)


def test_replay_and_live_batching_give_the_same_alert_ids() -> None:
    start = NOW - timedelta(minutes=130)
    events = [tool_call(i, start + timedelta(seconds=i)) for i in range(7800)]
    events += [tool_call(10_000 + i, NOW + timedelta(seconds=i), status="error") for i in range(30)]
    whole, small = pipeline(), pipeline()
    a = {x.alert_id for x in whole.process(events, now=None).alerts}
    b = {x.alert_id for i in range(0, len(events), 7) for x in small.process(events[i:i + 7], now=None).alerts}
    assert a and a == b


def test_a_replica_taking_over_a_tenant_adopts_its_baselines_and_catches_its_spike_at_once() -> None:
    """After a rebalance the new owner of a tenant's partition adopts the old owner's history for
    that tenant (``Detectors.adopt``), so a token spike right after the move is judged against
    90 minutes of calm, where a replica without it is in cold start and says nothing."""
    def calm(tenant: str, base: int) -> list[bytes]:
        return [llm_call(base + i, tenant_id=tenant, feature="chat", ts=(NOW - timedelta(minutes=90) +
                                                                          timedelta(seconds=5 * i)).isoformat())
                for i in range(1079)]
    spike = [llm_call(10_000 + i, tenant_id="moved", feature="chat", input_tokens=40_000,
                      ts=(NOW + timedelta(seconds=i)).isoformat()) for i in range(30)]

    def token_spikes(result: BatchResult) -> set[str]:
        return {a.scope.key() for a in result.alerts if a.kind == AlertKind.TOKEN_SPIKE}

    old = pipeline()
    old.process(calm("moved", 1_000) + calm("stays", 2_000), now=None)
    assert token_spikes(pipeline().process(spike, now=None)) == set()  # cold start: the control

    new = pipeline()
    taken = new.detectors.adopt(orjson.loads(orjson.dumps(old.detectors.snapshot())), lambda t: t == "moved")
    assert taken >= 4  # cost and tokens, per tenant and per tenant+feature
    assert "stays" not in new.detectors.tokens.state and "stays" not in new.detectors.cost.state
    assert "tenant_id=moved" in token_spikes(new.process(spike, now=None))

    # the old owner saw the spike too: its open alert is its own to resolve, not adopted; and a
    # replica with its own series for the tenant keeps them
    old.process(spike, now=None)
    assert old.detectors.tokens.is_open("moved")
    fresh = pipeline()
    fresh.detectors.adopt(old.detectors.snapshot(), lambda t: True)
    assert "moved" in fresh.detectors.tokens.state and not fresh.detectors.tokens.is_open("moved")
    assert new.detectors.adopt(old.detectors.snapshot(), lambda t: True) == sum(
        1 for det in (old.detectors.cost, old.detectors.tokens, old.detectors.cost_feature,
                      old.detectors.tokens_feature) for k in det.state if k.startswith("stays")) + sum(
        1 for k in old.detectors.safety.state if k[0] == "stays")  # a feature's calls are its safety exposure


def test_a_runaway_request_alerts_at_the_call_that_crossed_its_limit_not_at_its_last_in_the_batch() -> None:
    # a replay batch can hold minutes of one request: the alert's event time is the call that
    # took it over its limit (what the live worker, with small batches, would have seen)
    loop = [llm_call(i, ts=(NOW + timedelta(seconds=10 * i)).isoformat(), feature="agent", request_id="loop-1")
            for i in range(40)]
    alerts = [a for a in pipeline().process(loop, now=None).alerts if a.kind == AlertKind.RUNAWAY_LOOP]
    assert len(alerts) == 1
    limit = math.ceil(float(alerts[0].threshold))
    assert alerts[0].opened_at == NOW + timedelta(seconds=10 * (limit - 1)) < NOW + timedelta(seconds=390)


def test_two_safety_bursts_in_one_replay_batch_are_two_alerts_published_in_order() -> None:
    # two bursts 10 minutes apart in one batch: the first alert, quiet for resolve_s when the
    # second burst begins, resolves there, and its resolution goes out before the second alert
    # opens (the control plane keys alerts by kind and scope: a resolution after the new
    # opening would start the revert of the new alert's remediation), as small batches publish them
    whole, live, later = quiet_chat_with_bursts(0, 14)
    replayed = [(a.alert_id, a.status) for a in whole.process(later, now=None).alerts
                if a.kind == AlertKind.SAFETY_BURST]
    streamed = [(a.alert_id, a.status) for i in range(0, len(later), 3) for a in live.process(later[i:i + 3], now=None).alerts
                if a.kind == AlertKind.SAFETY_BURST]
    opened = [aid for aid, status in replayed if status == "open"]
    assert len(set(opened)) == 2
    first, second = opened[0], opened[-1]
    assert replayed.index((first, "resolved")) < replayed.index((second, "open"))
    firsts = [x for i, x in enumerate(streamed) if x not in streamed[:i]]  # updates re-publish "open"
    assert firsts[:3] == [(first, "open"), (first, "resolved"), (second, "open")]


def test_a_feature_token_spike_in_a_long_replay_batch_is_not_hidden_by_its_tenants_later_alert() -> None:
    # a tenant's busy feature and a quiet one; the quiet one's calls grow 12x. Its own spike shows
    # within minutes; the tenant's (diluted by the busy feature) later. Replay hands the half hour
    # over in one batch: the feature's windows must be judged before the tenant's later ones, as
    # the live worker's small batches judge them, not after a tenant alert opened late in the batch
    def call(n: int, ts: datetime, feature: str, tokens: int) -> bytes:
        return llm_call(n, ts=ts.isoformat(), feature=feature, input_tokens=tokens, cache_read_tokens=0)

    start = NOW - timedelta(hours=6)
    history = [call(i, start + timedelta(seconds=5 * i), "search", 1000 + 37 * i % 400) for i in range(4320)]
    history += [call(10_000 + i, start + timedelta(seconds=30 * i + 2), "chat", 900 + 53 * i % 600) for i in range(720)]
    later = [call(20_000 + i, NOW + timedelta(seconds=5 * i), "search", 1000 + 37 * i % 400) for i in range(360)]
    later += [call(30_000 + i, NOW + timedelta(seconds=30 * i + 2), "chat", 12 * (900 + 53 * i % 600)) for i in range(60)]
    later.sort(key=_ts)
    whole, live = fed_alike(history, 50)
    spike = AlertKind.TOKEN_SPIKE
    replayed = [a for a in whole.process(later, now=None).alerts if a.kind == spike]
    streamed = [a for i in range(0, len(later), 5) for a in live.process(later[i:i + 5], now=None).alerts
                if a.kind == spike]
    features = {a.opened_at for a in replayed if a.scope.feature == "chat"}
    assert features and min(features) < NOW + timedelta(minutes=5)  # type: ignore[operator]
    assert {a.alert_id for a in replayed} == {a.alert_id for a in streamed}


def safety_trigger(n: int, ts: datetime) -> bytes:
    return orjson.dumps({"schema_version": 1, "event_type": "safety_trigger", "event_id": event_id(n), "ts": ts.isoformat(),
                         "tenant_id": "acme", "feature": "chat", "filter_name": "guard", "category": "jailbreak"})


def quiet_chat_with_bursts(*minutes: int) -> tuple[Pipeline, Pipeline, list[bytes]]:
    """Two pipelines fed the same six hours of a quiet feature (a call every 20 s, a trigger every
    400 calls) in small batches, and its next half hour: a burst of 4 triggers in 4 minutes at
    each of ``minutes`` after NOW."""
    start = NOW - timedelta(hours=6)
    history = [llm_call(i, ts=(start + timedelta(seconds=20 * i)).isoformat(), feature="chat") for i in range(1080)]
    history += [safety_trigger(5_000 + i, start + timedelta(seconds=20 * 400 * i + 7)) for i in range(3)]
    later = [llm_call(10_000 + i, ts=(NOW + timedelta(seconds=20 * i)).isoformat(), feature="chat") for i in range(90)]
    later += [safety_trigger(20_000 + 100 * b + i, NOW + timedelta(minutes=m, seconds=60 * i + 3))
              for b, m in enumerate(minutes) for i in range(4)]
    later.sort(key=_ts)
    whole, live = fed_alike(history, 10)
    return whole, live, later


def _ts(raw: bytes) -> str:
    return str(orjson.loads(raw)["ts"])


def fed_alike(history: list[bytes], batch: int) -> tuple[Pipeline, Pipeline]:
    """Two pipelines fed the same ``history``, in event-time order, in batches of ``batch`` lines:
    one to take the next events in one replay batch, one to take them in small batches."""
    history = sorted(history, key=_ts)
    whole, live = pipeline(), pipeline()
    for pipe in (whole, live):
        for i in range(0, len(history), batch):
            pipe.process(history[i:i + batch], now=None)
    return whole, live


def test_a_safety_burst_in_a_long_replay_batch_is_judged_where_it_happened() -> None:
    # a quiet feature (a call every 20 s, a trigger every 400 calls) has a burst of 4 triggers in
    # 4 minutes and then 26 quiet minutes. Replay hands the half hour over in one batch: its
    # triggers must be judged on the spans ending at their own windows with the calls made up to
    # them, as the live worker's small batches judge them, not at the batch's last window
    whole, live, later = quiet_chat_with_bursts(0)
    replayed = [a for a in whole.process(later, now=None).alerts if a.kind == AlertKind.SAFETY_BURST]
    streamed = [a for i in range(0, len(later), 3) for a in live.process(later[i:i + 3], now=None).alerts
                if a.kind == AlertKind.SAFETY_BURST]
    assert replayed and replayed[0].opened_at is not None and replayed[0].opened_at < NOW + timedelta(minutes=5)
    assert {a.alert_id for a in replayed} == {a.alert_id for a in streamed}
