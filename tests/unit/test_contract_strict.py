"""Where money or identity is concerned the event contract guesses nothing: duplicate keys,
the nil UUID, a missing ``schema_version`` or ``output_tokens`` are refused with a reason
naming the field, by the models and by the worker's fast decoder alike."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from flyball.schemas import InvalidEvent, parse_event
from flyball.stream_processors.decode import decode_event

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def event(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"schema_version": 1, "event_type": "llm_call", "event_id": str(uuid.uuid4()),
                            "ts": NOW.isoformat(), "tenant_id": "acme", "provider": "openai",
                            "model": "gpt-4o-mini", "input_tokens": 1200, "output_tokens": 300}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


DECODERS = [pytest.param(lambda raw: parse_event(raw, now=NOW), id="models"),
            pytest.param(lambda raw: decode_event(raw, now=NOW), id="worker")]


def reason_of(decode: Any, raw: bytes) -> str:
    with pytest.raises(InvalidEvent) as info:
        decode(raw)
    return info.value.reason


@pytest.mark.parametrize("decode", DECODERS)
def test_a_repeated_top_level_key_is_refused_naming_it(decode: Any) -> None:
    body = orjson.dumps(event())
    raw = body[:-1] + b',"output_tokens":0}'  # a second value for a priced field
    assert reason_of(decode, raw).startswith("output_tokens: key appears more than once")


@pytest.mark.parametrize("decode", DECODERS)
def test_a_repeated_key_inside_attributes_is_refused(decode: Any) -> None:
    raw = orjson.dumps(event(attributes={"a": 1})).replace(b'"a":1', b'"a":1,"a":2')
    assert reason_of(decode, raw).startswith("a: key appears more than once")


@pytest.mark.parametrize("decode", DECODERS)
def test_a_repeated_key_written_with_spaces_is_refused(decode: Any) -> None:
    raw = orjson.dumps(event()).replace(b'"tenant_id":"acme"', b'"tenant_id" : "acme", "tenant_id" : "evil"')
    assert reason_of(decode, raw).startswith("tenant_id: key appears more than once")


@pytest.mark.parametrize("decode", DECODERS)
def test_a_quoted_colon_inside_a_value_is_not_a_repeated_key(decode: Any) -> None:
    raw = orjson.dumps(event(feature='a":b', attributes={'k":': 'v":'}))
    assert decode(raw).feature == 'a":b'


@pytest.mark.parametrize("decode", DECODERS)
def test_the_nil_uuid_is_not_an_event_id(decode: Any) -> None:
    raw = orjson.dumps(event(event_id="00000000-0000-0000-0000-000000000000"))
    assert reason_of(decode, raw).startswith("event_id: the nil UUID")


@pytest.mark.parametrize("decode", DECODERS)
def test_an_llm_call_without_output_tokens_is_refused(decode: Any) -> None:
    reason = reason_of(decode, orjson.dumps(event(output_tokens=None)))
    assert reason.startswith("output_tokens:") and "required" in reason.lower()


@pytest.mark.parametrize("decode", DECODERS)
def test_an_event_without_schema_version_is_refused(decode: Any) -> None:
    tool = {"schema_version": None, "event_type": "tool_call", "tool_name": "sql", "provider": None, "model": None,
            "input_tokens": None, "output_tokens": None}
    for body in (event(schema_version=None), event(**tool)):
        assert reason_of(decode, orjson.dumps(body)).startswith("schema_version: missing")


def test_a_dict_without_schema_version_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="^schema_version: missing"):
        parse_event(event(schema_version=None))


@pytest.mark.parametrize("decode", DECODERS)
def test_a_complete_event_is_still_accepted(decode: Any) -> None:
    assert decode(orjson.dumps(event())).output_tokens == 300
