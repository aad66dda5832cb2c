"""Unit tests for the event contract decoder (``flyball.schemas.events``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flyball.schemas import (
    Feedback,
    InvalidEvent,
    LLMCall,
    Retrieval,
    SafetyTrigger,
    ToolCall,
    parse_event,
    to_wire,
)
from flyball.schemas.events import MAX_ATTRIBUTE_VALUE, MAX_ATTRIBUTES, MAX_LATENCY_MS, MAX_TOKENS

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
EVENT_ID = "0b6c3f7e-2f1a-4f61-9d8e-6a2b9c1d0f11"

PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def llm_call(**overrides: Any) -> dict[str, Any]:
    event = {
        "schema_version": 1, "event_type": "llm_call", "event_id": EVENT_ID,
        "ts": "2026-01-01T12:00:00+00:00", "tenant_id": "acme", "feature": "support-bot",
        "service": "checkout", "provider": "openai", "model": "gpt-4o-mini",
        "input_tokens": 1200, "output_tokens": 300, "cache_read_tokens": 1000,
        "cache_write_tokens": 0, "reasoning_tokens": 0, "latency_ms": 850.5, "ttft_ms": 120.0,
        "status": "ok", "retries": 0, "stream": True,
    }
    event.update(overrides)
    return event


VALID_EVENTS = {
    "llm_call": (LLMCall, llm_call()),
    "tool_call": (ToolCall, {
        "event_type": "tool_call", "event_id": EVENT_ID, "ts": "2026-01-01T12:00:00Z",
        "tenant_id": "acme", "tool_name": "sql", "status": "error", "latency_ms": 12.5,
        "error_type": "Timeout",
    }),
    "safety_trigger": (SafetyTrigger, {
        "event_type": "safety_trigger", "event_id": EVENT_ID, "ts": "2026-01-01T12:00:00Z",
        "tenant_id": "acme", "filter_name": "pii-guard", "category": "pii", "action": "redacted",
        "severity": "high",
    }),
    "retrieval": (Retrieval, {
        "event_type": "retrieval", "event_id": EVENT_ID, "ts": "2026-01-01T12:00:00Z",
        "tenant_id": "acme", "index_name": "kb", "status": "ok", "results_count": 7,
        "latency_ms": 33.0,
    }),
    "feedback": (Feedback, {
        "event_type": "feedback", "event_id": EVENT_ID, "ts": "2026-01-01T12:00:00Z",
        "tenant_id": "acme", "score": -0.5, "target_event_id": str(uuid.UUID(int=7)),
    }),
}


def reason_of(raw: bytes | str | dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, **kwargs)
    return info.value.reason


# ------------------------------------------------------------------ accepted events


@pytest.mark.parametrize("event_type", sorted(VALID_EVENTS))
def test_valid_event_is_accepted_as_its_model_and_round_trips(event_type: str) -> None:
    model, raw = VALID_EVENTS[event_type]
    event = parse_event(orjson.dumps(raw))
    assert isinstance(event, model)
    assert parse_event(orjson.dumps(to_wire(event))) == event


def test_bytes_str_and_dict_inputs_parse_to_equal_models() -> None:
    raw = llm_call()
    assert parse_event(raw) == parse_event(orjson.dumps(raw)) == parse_event(orjson.dumps(raw).decode())


def test_ts_with_offset_is_converted_to_utc() -> None:
    event = parse_event(llm_call(ts="2026-01-01T14:00:00+02:00"))
    assert event.ts == NOW
    assert event.ts.utcoffset() == timedelta(0)


def test_ts_up_to_five_minutes_in_the_future_is_accepted() -> None:
    event = parse_event(llm_call(ts="2026-01-01T12:05:00Z"), now=NOW)
    assert event.ts == NOW + timedelta(minutes=5)


def test_unknown_extra_fields_are_kept_as_prefixed_attributes() -> None:
    event = parse_event(llm_call(gpu="h100", region_hint={"a": 1}, attributes={"plan": "pro"}))
    assert event.attributes == {"plan": "pro", "x.gpu": "h100", "x.region_hint": "{'a': 1}"}


# ------------------------------------------------------------------ rejected events


@pytest.mark.parametrize(("overrides", "field"), [
    ({"input_tokens": -1}, "input_tokens"),
    ({"output_tokens": True}, "output_tokens"),
    ({"latency_ms": float("inf")}, "latency_ms"),
    ({"latency_ms": float("nan")}, "latency_ms"),
    ({"event_id": EVENT_ID.upper()}, "event_id"),
    ({"ts": "2026-01-01T12:00:00"}, "ts"),
    ({"tenant_id": "t" * 257}, "tenant_id"),
    ({"attributes": {"note": "x" * (MAX_ATTRIBUTE_VALUE + 1)}}, "attributes"),
    ({"attributes": {f"k{i}": i for i in range(MAX_ATTRIBUTES + 1)}}, "attributes"),
])
def test_invalid_field_is_rejected_with_a_reason_naming_it(overrides: dict[str, Any], field: str) -> None:
    assert reason_of(llm_call(**overrides)).startswith(f"{field}:")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity"])
def test_non_finite_latency_in_json_text_is_rejected(literal: bytes) -> None:
    raw = orjson.dumps(llm_call(latency_ms=0)).replace(b'"latency_ms":0', b'"latency_ms":' + literal)
    assert literal in raw
    assert reason_of(raw).startswith("latency_ms:")


def test_unknown_event_type_is_rejected() -> None:
    assert reason_of(llm_call(event_type="llm_kall")) == "event_type: unknown value 'llm_kall'"


def test_missing_event_type_is_rejected() -> None:
    raw = llm_call()
    del raw["event_type"]
    assert reason_of(orjson.dumps(raw)).startswith("event_type: missing")


@pytest.mark.parametrize("as_bytes", [False, True])
def test_schema_version_2_is_rejected(as_bytes: bool) -> None:
    raw = llm_call(schema_version=2)
    assert reason_of(orjson.dumps(raw) if as_bytes else raw).startswith("schema_version:")


def test_schema_version_true_is_not_version_1() -> None:
    # schema_version is an int; a JSON boolean is a producer bug, like a boolean token count
    assert reason_of(orjson.dumps(llm_call(schema_version=True))).startswith("schema_version:")


def test_ts_more_than_five_minutes_in_the_future_is_rejected_when_now_is_given() -> None:
    raw = llm_call(ts="2026-01-01T12:05:01Z")
    assert reason_of(raw, now=NOW).startswith("ts:")
    assert parse_event(raw).ts == NOW + timedelta(minutes=5, seconds=1)  # replay: no clock check


def test_ts_that_overflows_when_converted_to_utc_is_rejected_not_raised() -> None:
    # 0001-01-01T00:00+01:00 is 0000-12-31T23:00Z, which Python's datetime cannot hold
    assert reason_of(orjson.dumps(llm_call(ts="0001-01-01T00:00:00+01:00"))).startswith("ts:")


def test_cache_tokens_exceeding_input_tokens_are_rejected() -> None:
    reason = reason_of(llm_call(input_tokens=100, cache_read_tokens=60, cache_write_tokens=41))
    assert "cache_read_tokens + cache_write_tokens exceed input_tokens" in reason


def test_reasoning_tokens_exceeding_output_tokens_are_rejected() -> None:
    assert "reasoning_tokens exceed output_tokens" in reason_of(llm_call(output_tokens=10, reasoning_tokens=11))


def test_oversize_unknown_field_is_rejected_naming_it() -> None:
    assert "x.blob" in reason_of(llm_call(blob="y" * (MAX_ATTRIBUTE_VALUE + 1)))


def test_invalid_attributes_are_not_silently_replaced_when_extra_fields_exist() -> None:
    # without an extra field this is rejected; an extra field must not turn it into {}
    assert reason_of(llm_call(attributes=["a", "b"])).startswith("attributes:")
    assert reason_of(llm_call(attributes=["a", "b"], gpu="h100")).startswith("attributes:")


# ------------------------------------------------------------------ properties

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10)


@PROPERTY
@given(st.binary(max_size=512))
def test_any_bytes_are_parsed_or_rejected_never_raised(raw: bytes) -> None:
    try:
        parse_event(raw, now=NOW)
    except InvalidEvent as exc:
        assert exc.reason


@PROPERTY
@given(st.sampled_from(sorted(llm_call())), JSON_VALUES)
def test_any_value_in_any_field_is_parsed_or_rejected_never_raised(name: str, value: Any) -> None:
    raw = orjson.dumps(llm_call(**{name: value}))
    try:
        parse_event(raw, now=NOW)
    except InvalidEvent as exc:
        assert exc.reason


OFFSETS = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
NAMES = st.text(min_size=1, max_size=40)
ATTRIBUTE_VALUES = (st.text(max_size=50) | st.integers(-(2**63), 2**63 - 1) | st.booleans()
                    | st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def valid_llm_calls(draw: st.DrawFn) -> dict[str, Any]:
    input_tokens = draw(st.integers(0, MAX_TOKENS))
    cache_read = draw(st.integers(0, input_tokens))
    cache_write = draw(st.integers(0, input_tokens - cache_read))
    output_tokens = draw(st.integers(0, MAX_TOKENS))
    ts = draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=OFFSETS))
    return {
        "schema_version": 1, "event_type": "llm_call", "event_id": str(draw(st.uuids())),
        "ts": ts.isoformat(), "tenant_id": draw(NAMES), "feature": draw(st.text(max_size=40)),
        "provider": draw(NAMES), "model": draw(NAMES),
        "input_tokens": input_tokens, "output_tokens": output_tokens,
        "cache_read_tokens": cache_read, "cache_write_tokens": cache_write,
        "reasoning_tokens": draw(st.integers(0, output_tokens)),
        "latency_ms": draw(st.floats(0, MAX_LATENCY_MS)),
        "ttft_ms": draw(st.none() | st.floats(0, MAX_LATENCY_MS)),
        "status": draw(st.sampled_from(["ok", "error", "timeout", "rate_limited", "filtered", "cancelled"])),
        "retries": draw(st.integers(0, 1000)), "stream": draw(st.booleans()),
        "attributes": draw(st.dictionaries(st.text(max_size=30), ATTRIBUTE_VALUES, max_size=8)),
    }


@PROPERTY
@given(valid_llm_calls())
def test_generated_valid_llm_calls_are_accepted_and_round_trip(raw: dict[str, Any]) -> None:
    event = parse_event(orjson.dumps(raw))
    assert event == parse_event(raw)
    assert parse_event(orjson.dumps(to_wire(event))) == event
    assert event.ts == datetime.fromisoformat(raw["ts"]).astimezone(UTC)
