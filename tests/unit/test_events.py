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
        "schema_version": 1, "event_type": "tool_call", "event_id": EVENT_ID, "ts": "2026-01-01T12:00:00Z",
        "tenant_id": "acme", "tool_name": "sql", "status": "error", "latency_ms": 12.5,
        "error_type": "Timeout",
    }),
    "safety_trigger": (SafetyTrigger, {
        "schema_version": 1, "event_type": "safety_trigger", "event_id": EVENT_ID, "ts": "2026-01-01T12:00:00Z",
        "tenant_id": "acme", "filter_name": "pii-guard", "category": "pii", "action": "redacted",
        "severity": "high",
    }),
    "retrieval": (Retrieval, {
        "schema_version": 1, "event_type": "retrieval", "event_id": EVENT_ID, "ts": "2026-01-01T12:00:00Z",
        "tenant_id": "acme", "index_name": "kb", "status": "ok", "results_count": 7,
        "latency_ms": 33.0,
    }),
    "feedback": (Feedback, {
        "schema_version": 1, "event_type": "feedback", "event_id": EVENT_ID, "ts": "2026-01-01T12:00:00Z",
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


@pytest.mark.parametrize(("field", "value"), [
    ("tenant_id", "acme\x00"), ("model", "gpt-4o\n"), ("feature", "chat\x7f"), ("provider", "open\x85ai"),
    ("service", "\x1b[31mred"),
])
def test_a_control_character_in_a_name_is_rejected_naming_the_field(field: str, value: str) -> None:
    for raw in (llm_call(**{field: value}), orjson.dumps(llm_call(**{field: value}))):
        assert reason_of(raw) == (f"{field}: contains a control character (U+0000-U+001F, U+007F-U+009F), "
                                  "which a name may not")


def test_names_with_any_other_character_and_attributes_with_control_characters_are_accepted() -> None:
    event = parse_event(llm_call(tenant_id="café ©", feature="チャット", attributes={"note": "line 1\nline 2\x00"}))
    assert (event.tenant_id, event.feature, event.attributes["note"]) == ("café ©", "チャット", "line 1\nline 2\x00")


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
# a name is any text without a control character (Unicode Cc), which the models refuse
NAME_TEXT = st.characters(blacklist_categories=("Cc", "Cs"))
NAMES = st.text(NAME_TEXT, min_size=1, max_size=40)
ATTRIBUTE_VALUES = (st.text(max_size=50) | st.integers(-(2**63), 2**63 - 1) | st.booleans()
                    | st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def valid_llm_calls(draw: st.DrawFn) -> dict[str, Any]:
    input_tokens = draw(st.integers(0, MAX_TOKENS))
    cache_read = draw(st.integers(0, input_tokens))
    cache_write = draw(st.integers(0, input_tokens - cache_read))
    output_tokens = draw(st.integers(0, MAX_TOKENS))
    ts = draw(st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2100, 1, 1), timezones=OFFSETS))
    return {
        "schema_version": 1, "event_type": "llm_call", "event_id": str(draw(st.uuids())),
        "ts": ts.isoformat(), "tenant_id": draw(NAMES), "feature": draw(st.text(NAME_TEXT, max_size=40)),
        "provider": draw(NAMES), "model": draw(NAMES),
        "input_tokens": input_tokens, "output_tokens": output_tokens,
        "cache_read_tokens": cache_read, "cache_write_tokens": cache_write,
        "reasoning_tokens": draw(st.integers(0, output_tokens)),
        "latency_ms": (latency := draw(st.floats(0, MAX_LATENCY_MS))),
        "ttft_ms": draw(st.none() | st.floats(0, latency)),
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


# ------------------------------------------------------------------ the full envelope and llm_call

TRACE_ID, SPAN_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "b7ad6b7169203331"
USER_HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def test_every_documented_llm_call_field_is_accepted_and_kept() -> None:
    raw = llm_call(
        shim_version="0.2.0", environment="staging", request_id="req-9", trace_id=TRACE_ID, span_id=SPAN_ID,
        parent_span_id=PARENT_ID, operation="chat", response_model="gpt-4o-mini-2024-07-18", route="primary",
        fallback_position=1, prompt_id="support-answer", prompt_version="v7", prompt_hash=USER_HASH[:32],
        prompt_chars=5120, completion_chars=900, finish_reason="stop", status="rate_limited",
        error_type="RateLimitError", retries=2, cache_hit=True, user_id_hash=USER_HASH,
    )
    event = parse_event(orjson.dumps(raw))
    assert isinstance(event, LLMCall)
    wire = to_wire(event)
    for key, value in raw.items():
        if key != "ts":
            assert wire[key] == value, key
    assert event.attributes == {}


@pytest.mark.parametrize(("overrides", "field"), [
    ({"trace_id": "4BF92F3577B34DA6A3CE929D0E0E4736"}, "trace_id"),
    ({"trace_id": "abc"}, "trace_id"),
    ({"span_id": "00f067aa0ba902b7ff"}, "span_id"),
    ({"parent_span_id": "xyz"}, "parent_span_id"),
    ({"user_id_hash": "alice@example.com"}, "user_id_hash"),
    ({"prompt_hash": "not hex"}, "prompt_hash"),
    ({"fallback_position": -1}, "fallback_position"),
    ({"retries": 1001}, "retries"),
    ({"prompt_chars": -5}, "prompt_chars"),
    ({"input_tokens": MAX_TOKENS + 1}, "input_tokens"),
    ({"status": "exploded"}, "status"),
    ({"cache_hit": "maybe"}, "cache_hit"),
    ({"ttft_ms": 900.0, "latency_ms": 850.5}, "ttft_ms"),
    ({"shim_version": "v" * 65}, "shim_version"),
    ({"attributes": {"k" * 129: 1}}, "attributes"),
    ({"attributes": {"n": float("inf")}}, "attributes"),
    ({"attributes": {"nested": {"a": 1}}}, "attributes"),
])
def test_out_of_contract_field_is_rejected_naming_it(overrides: dict[str, Any], field: str) -> None:
    assert reason_of(llm_call(**overrides)).startswith(f"{field}:")


def test_oversize_attribute_value_reason_names_the_attribute_once() -> None:
    reason = reason_of(llm_call(attributes={"note": "x" * (MAX_ATTRIBUTE_VALUE + 1)}))
    assert reason.startswith("attributes: 'note':") and reason.count("'note'") == 1


def test_unknown_fields_count_toward_the_attribute_limit() -> None:
    extras = {f"f{i}": i for i in range(MAX_ATTRIBUTES - 1)}
    assert len(parse_event(llm_call(attributes={"a": 1}, **extras)).attributes) == MAX_ATTRIBUTES
    assert reason_of(llm_call(attributes={"a": 1, "b": 2}, **extras)).startswith("attributes:")


def test_unknown_fields_are_not_dumped_at_the_top_level() -> None:
    wire = to_wire(parse_event(llm_call(gpu="h100")))
    assert "gpu" not in wire and wire["attributes"] == {"x.gpu": "h100"}


def test_unknown_fields_survive_a_round_trip_through_the_wire() -> None:
    event = parse_event(llm_call(gpu="h100", shards=4))
    assert parse_event(orjson.dumps(to_wire(event))) == event


def test_feedback_target_must_be_an_event_id() -> None:
    raw = dict(VALID_EVENTS["feedback"][1], target_event_id="last one")
    assert reason_of(raw).startswith("target_event_id:")


@pytest.mark.parametrize(("event_type", "overrides", "field"), [
    ("retrieval", {"results_count": -1}, "results_count"),
    ("retrieval", {"top_score": float("nan")}, "top_score"),
    ("feedback", {"score": 1001}, "score"),
    ("safety_trigger", {"action": "ignored"}, "action"),
    ("safety_trigger", {"stage": "middle"}, "stage"),
    ("tool_call", {"tool_name": ""}, "tool_name"),
])
def test_other_kinds_reject_out_of_contract_fields(event_type: str, overrides: dict[str, Any], field: str) -> None:
    raw = dict(VALID_EVENTS[event_type][1], **overrides)
    assert reason_of(raw).startswith(f"{field}:")


def test_empty_retrieval_is_a_valid_ok_event() -> None:
    event = parse_event(dict(VALID_EVENTS["retrieval"][1], results_count=0, top_k=5))
    assert isinstance(event, Retrieval) and (event.status, event.results_count) == ("ok", 0)


def test_invalid_utf8_is_rejected_with_a_reason() -> None:
    assert reason_of(b'{"event_type": "\xff"}').startswith("event")


# ------------------------------------------------------------------ JSON Schema export


def test_committed_json_schemas_match_the_models() -> None:
    from pathlib import Path

    from flyball.schemas.jsonschema import render, schemas

    committed = Path(__file__).resolve().parents[2] / "schemas" / "json"
    expected = schemas()
    assert sorted(p.name for p in committed.glob("*.json")) == sorted(expected), \
        "run `flyball schemas export schemas/json`"
    for name, schema in expected.items():
        assert (committed / name).read_text() == render(schema), f"{name} is stale: run `flyball schemas export schemas/json`"


def test_flyball_schemas_export_writes_every_kind_with_the_contract_fields(tmp_path: Any) -> None:
    from flyball.control_plane.cli import main

    assert main(["schemas", "export", str(tmp_path)]) == 0
    schema = orjson.loads((tmp_path / "llm_call.v1.schema.json").read_bytes())
    props = schema["properties"]
    assert {"event_id", "ts", "tenant_id", "trace_id", "parent_span_id", "shim_version", "route",
            "fallback_position", "prompt_id", "prompt_version", "cache_hit", "user_id_hash", "ttft_ms"} <= set(props)
    assert set(schema["required"]) == {"schema_version", "event_id", "ts", "tenant_id", "provider", "model", "output_tokens"}
    union = orjson.loads((tmp_path / "event.v1.schema.json").read_bytes())
    assert union["discriminator"]["propertyName"] == "event_type"


HEX = "0123456789abcdef"


@st.composite
def valid_events_of_any_kind(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(VALID_EVENTS)))
    raw = dict(VALID_EVENTS[kind][1])
    raw.update(
        event_id=str(draw(st.uuids())),
        tenant_id=draw(NAMES), feature=draw(st.text(NAME_TEXT, max_size=40)), service=draw(st.text(NAME_TEXT, max_size=40)),
        trace_id=draw(st.just("") | st.text(HEX, min_size=32, max_size=32)),
        span_id=draw(st.just("") | st.text(HEX, min_size=16, max_size=16)),
        parent_span_id=draw(st.just("") | st.text(HEX, min_size=16, max_size=16)),
        attributes=draw(st.dictionaries(st.text(max_size=30), ATTRIBUTE_VALUES, max_size=8)),
        **draw(st.dictionaries(st.from_regex(r"\Azz[a-z]{1,10}\Z"), ATTRIBUTE_VALUES, max_size=3)),
    )
    return raw


@PROPERTY
@given(valid_events_of_any_kind())
def test_generated_valid_events_of_every_kind_are_accepted_and_round_trip(raw: dict[str, Any]) -> None:
    event = parse_event(orjson.dumps(raw))
    assert parse_event(orjson.dumps(to_wire(event))) == event
    assert all(event.attributes[f"x.{k}"] == raw[k] or isinstance(raw[k], float)
               for k in raw if k.startswith("zz"))


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-01-01T11:00:00.123456Z", datetime(2026, 1, 1, 11, 0, 0, 123456, tzinfo=UTC)),
    ("2026-01-01T11:00:00.1234565Z", datetime(2026, 1, 1, 11, 0, 0, 123457, tzinfo=UTC)),
    ("2026-01-01T11:00:00.12345649999Z", datetime(2026, 1, 1, 11, 0, 0, 123456, tzinfo=UTC)),  # the 7th digit decides
    ("2026-01-01T11:00:00.123456789+02:00", datetime(2026, 1, 1, 9, 0, 0, 123457, tzinfo=UTC)),
    ("2025-12-31T23:59:59.9999995Z", datetime(2026, 1, 1, tzinfo=UTC)),  # carries into the next year
    ("2026-01-01T11:00:00.1+05:59", datetime(2026, 1, 1, 5, 1, 0, 100000, tzinfo=UTC)),  # offset digits: no rounding
])
def test_ts_beyond_microseconds_is_rounded_half_up_as_the_fast_decoder_reads_it(text: str, expected: datetime) -> None:
    import msgspec

    body = {"schema_version": 1, "event_type": "tool_call", "event_id": str(uuid.uuid4()), "ts": text, "tenant_id": "a", "tool_name": "t"}
    assert parse_event(orjson.dumps(body)).ts == expected
    assert parse_event(body).ts == expected
    assert msgspec.json.decode(orjson.dumps(text), type=datetime).astimezone(UTC) == expected  # what msgspec reads
