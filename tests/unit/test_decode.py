"""The worker's fast decoder never disagrees with the pydantic contract.

``stream_processors/decode.py`` may only *refuse* what it is unsure of (the models then
decide); whatever it accepts, the models must accept with the very same field values. These
tests throw generated hostile events at both and compare.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from flyball.schemas import InvalidEvent, parse_event
from flyball.schemas.events import KINDS
from flyball.schemas.events import Envelope
from flyball.stream_processors.decode import FAST_KINDS, _fast, decode_event
from flyball.stream_processors.simulate import simulate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def fields_of(event: Any) -> dict[str, Any]:
    """Every field of a decoded event, a pydantic model or a fast Struct alike."""
    if isinstance(event, Envelope):
        return {"event_type": event.event_type, **dict(event)}
    return {"event_type": event.event_type, **msgspec.structs.asdict(event)}


def _model_defaults(model: type) -> dict[str, Any]:
    out = {}
    for name, f in model.model_fields.items():
        if name == "event_type":
            continue
        out[name] = f.get_default(call_default_factory=True) if not f.is_required() else "<required>"
    return out


def _struct_defaults(struct: type) -> dict[str, Any]:
    info = msgspec.inspect.type_info(struct)
    return {f.name: ("<required>" if f.required else
                     (f.default if f.default is not msgspec.NODEFAULT else f.default_factory()))
            for f in info.fields}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_mirror_has_exactly_the_models_fields_and_defaults(kind: str) -> None:
    assert _struct_defaults(FAST_KINDS[kind]) == _model_defaults(KINDS[kind])
    assert FAST_KINDS[kind].event_type == kind


def _valid(kind: str, rnd: st.DataObject) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema_version": 1, "event_type": kind, "event_id": str(uuid.UUID(int=rnd.draw(st.integers(0, 2**128 - 1)), version=4)),
        "ts": (NOW - timedelta(seconds=rnd.draw(st.integers(0, 10**6)))).isoformat(), "tenant_id": "acme",
        "feature": "chat",
    }
    if kind == "llm_call":
        base |= {"provider": "openai", "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 200,
                 "cache_read_tokens": 100, "cache_write_tokens": 50, "reasoning_tokens": 20, "latency_ms": 900.5,
                 "ttft_ms": 120.0, "status": "ok"}
    elif kind == "tool_call":
        base |= {"tool_name": "search", "latency_ms": 12.0, "status": "error"}
    elif kind == "safety_trigger":
        base |= {"filter_name": "pii-guard", "category": "pii", "action": "redacted", "score": 0.5}
    elif kind == "retrieval":
        base |= {"index_name": "docs", "results_count": 0, "top_k": 5, "top_score": 0.1}
    else:
        base |= {"score": 1.0, "label": "thumbs_up"}
    return base


# values that probe every rule: types, bounds, patterns, lengths, unicode, formats
HOSTILE: list[Any] = [
    None, True, False, 0, 1, -1, 1.0, 0.5, -0.0, 100, 101, 1000, 1001, 1_000_000, 1_000_001,
    100_000_000, 100_000_001, 1_000_000_000, 1_000_000_001, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63),
    -(2**63) - 1, 2**64, 2**70, 1e308, -1e308, 86_400_000, 86_400_000.5, float("nan"), float("inf"),
    float("-inf"), "", " ", "x", "ok", "error", "OK", "12", "1.5", "true", "null", "x" * 64, "x" * 65,
    "x" * 256, "x" * 257, "é" * 256, "é" * 257, "\U0001f600" * 64, "\U0001f600" * 65, "a\n", "\n", "\x00",
    "a\x7f", "\x85", "\u009f", "a\\nb", "©",
    "0123456789abcdef", "0123456789ABCDEF", "0123456789abcdef\n", "0123456789abcdef" * 2,
    "0123456789abcdef" * 2 + "\n", "0123456789abcdef" * 8, "0123456789abcdef" * 8 + "0",
    "1b4e28ba-2fa1-41d2-883f-0016d3cca427", "1B4E28BA-2FA1-41D2-883F-0016D3CCA427",
    "1b4e28ba-2fa1-41d2-883f-0016d3cca427\n", "1b4e28ba2fa141d2883f0016d3cca427",
    "2026-11-26T11:00:00Z", "2026-11-26T11:00:00+00:00", "2026-11-26T11:00:00.123456789Z",
    "2026-11-26T11:00:00.1234567Z", "2026-11-26T11:00:00.5+05:30", "2026-11-26T11:00:00-23:59",
    "2026-11-26T11:00:00+24:00", "2026-11-26 11:00:00Z", "2026-11-26t11:00:00z", "2026-11-26T11:00:00",
    "2026-11-26T11:00Z", "2026-11-26T24:00:00Z", "2026-11-26T23:59:60Z", "2026-02-29T11:00:00Z",
    "2024-02-29T11:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-11-26",
    "2026-11-26T11:00:00.Z", "2026-11-26T11:00:00,5Z", "+2026-11-26T11:00:00Z", "2026-11-26T11:00:00+0100",
    "2026-11-26T11:00:00+01", "20261126T110000Z", "2026-11-26T12:06:00Z", "2026-11-26T11:00:00 Z",
    [], [1], {}, {"a": 1}, {"a": None}, {"a": [1]}, {"a": "x" * 1025}, {"a": "x" * 1024}, {"k" * 129: 1},
    {"k" * 128: 1}, {"a": 2**63}, {"a": 2**63 - 1}, {"a": 1e308}, {"a": float("inf")}, {"a": True},
    {f"k{i}": i for i in range(65)}, {f"k{i}": i for i in range(64)},
    "flagged", "blocked", "input", "", "critical", "llm_call", "tool_call", "feedback",
]
FIELDS = sorted({name for m in KINDS.values() for name in m.model_fields} | {"unknown_field", "x", "attributes"})


def _dump(obj: dict[str, Any], ascii_: bool) -> bytes:
    # json.dumps writes NaN/Infinity for non-finite floats: hostile, not valid JSON; both must refuse
    return json.dumps(obj, ensure_ascii=ascii_).encode("utf-8", "surrogatepass")


def _outcome(fn: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", fields_of(fn(raw, now=NOW))
    except InvalidEvent as exc:
        return "invalid", exc.reason


def _assert_the_models_verdict(raw: bytes) -> None:
    """What the fast path accepts, the models accept with the same values; and ``decode_event``
    gives the models' verdict (and DLQ reason) on every input."""
    fast = _fast(raw, NOW)
    slow = _outcome(lambda r, now: parse_event(r, now=now), raw)
    if fast is not None:
        assert slow == ("ok", fields_of(fast)), raw
    assert _outcome(decode_event, raw) == slow


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fast_path_accepts_only_what_the_models_accept_with_the_same_values(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(sorted(KINDS)))
    event = _valid(kind, data)
    for _ in range(data.draw(st.integers(0, 3))):
        name = data.draw(st.sampled_from(FIELDS))
        if data.draw(st.booleans()) and name in event:
            del event[name]
        else:
            event[name] = data.draw(st.sampled_from(HOSTILE))
    _assert_the_models_verdict(_dump(event, data.draw(st.booleans())))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_arbitrary_bytes_give_the_models_verdict(raw: bytes) -> None:
    _assert_the_models_verdict(raw)


@pytest.mark.parametrize("raw", [
    # duplicate keys: both take the last one
    (b'{"event_type":"tool_call","event_id":"1b4e28ba-2fa1-41d2-883f-0016d3cca427","ts":"2026-11-26T11:00:00Z",'
    b'"tenant_id":"a","tenant_id":"b","tool_name":"t"}'),
    # lone surrogates, escaped and raw
    (b'{"event_type":"tool_call","event_id":"1b4e28ba-2fa1-41d2-883f-0016d3cca427","ts":"2026-11-26T11:00:00Z",'
    b'"tenant_id":"\\ud800","tool_name":"t"}'),
    (b'{"event_type":"tool_call","event_id":"1b4e28ba-2fa1-41d2-883f-0016d3cca427","ts":"2026-11-26T11:00:00Z",'
    b'"tenant_id":"\xed\xa0\x80","tool_name":"t"}'),
    # a number too large for any integer type, in attributes and in a token count
    (b'{"event_type":"llm_call","event_id":"1b4e28ba-2fa1-41d2-883f-0016d3cca427","ts":"2026-11-26T11:00:00Z",'
    b'"tenant_id":"a","provider":"p","model":"m","attributes":{"n":123456789012345678901234567890}}'),
    (b'{"event_type":"llm_call","event_id":"1b4e28ba-2fa1-41d2-883f-0016d3cca427","ts":"2026-11-26T11:00:00Z",'
    b'"tenant_id":"a","provider":"p","model":"m","input_tokens":123456789012345678901234567890}'),
    (b'{"event_type":"llm_call","event_id":"1b4e28ba-2fa1-41d2-883f-0016d3cca427","ts":"2026-11-26T11:00:00Z",'
    b'"tenant_id":"a","provider":"p","model":"m","latency_ms":1e999}'),
    # trailing data, BOM, whitespace
    (b'{"event_type":"tool_call","event_id":"1b4e28ba-2fa1-41d2-883f-0016d3cca427","ts":"2026-11-26T11:00:00Z",'
    b'"tenant_id":"a","tool_name":"t"} x'),
    (b'\xef\xbb\xbf{"event_type":"tool_call","event_id":"1b4e28ba-2fa1-41d2-883f-0016d3cca427",'
    b'"ts":"2026-11-26T11:00:00Z","tenant_id":"a","tool_name":"t"}'),
    (b' \n{"event_type":"tool_call","event_id":"1b4e28ba-2fa1-41d2-883f-0016d3cca427",'
    b'"ts":"2026-11-26T11:00:00Z","tenant_id":"a","tool_name":"t"}\n '),
    # a fraction of a second beyond microseconds (msgspec rounds it, the models truncate): compact,
    # spaced, with an offset, ts not the only "ts" key, and the ts key escaped
    (b'{"event_type":"tool_call","event_id":"1b4e28ba-2fa1-41d2-883f-0016d3cca427",'
    b'"ts":"2026-11-25T23:59:59.999999999Z","tenant_id":"a","tool_name":"t"}'),
    (b'{"event_type": "tool_call", "event_id": "1b4e28ba-2fa1-41d2-883f-0016d3cca427", '
    b'"ts": "2026-11-26T11:00:00.1234565+02:00", "tenant_id": "a", "tool_name": "t"}'),
    (b'{"event_type":"tool_call","event_id":"1b4e28ba-2fa1-41d2-883f-0016d3cca427","attributes":{"ts":"x"},'
    b'"ts":"2026-11-26T11:00:00.1234565Z","tenant_id":"a","tool_name":"t"}'),
    (b'{"event_type":"tool_call","event_id":"1b4e28ba-2fa1-41d2-883f-0016d3cca427","feature":"ts",'
    b'"\\u0074s":"2026-11-26T11:00:00.1234565Z","tenant_id":"a","tool_name":"t"}'),
    # event_type not first, and event_type twice
    (b'{"tenant_id":"a","tool_name":"t","event_id":"1b4e28ba-2fa1-41d2-883f-0016d3cca427",'
    b'"ts":"2026-11-26T11:00:00Z","event_type":"tool_call"}'),
    (b'{"event_type":"llm_call","tenant_id":"a","tool_name":"t","event_id":"1b4e28ba-2fa1-41d2-883f-0016d3cca427",'
    b'"ts":"2026-11-26T11:00:00Z","event_type":"tool_call"}'),
])
def test_edge_cases_give_the_models_verdict(raw: bytes) -> None:
    _assert_the_models_verdict(raw)


def test_the_fast_path_takes_every_event_the_simulator_sends() -> None:
    """The point of the fast path: realistic traffic of every kind never needs the slow one."""
    sim = simulate("incidents", 3)
    raws = [body if isinstance(body, bytes) else json.dumps(body).encode() for _, body in sim.events[:5000]]
    kinds = set()
    for raw in raws:
        event = _fast(raw, None)
        assert event is not None, raw
        kinds.add(event.event_type)
        assert fields_of(event) == fields_of(parse_event(raw))
    assert kinds == set(KINDS) - {"feedback"} or kinds == set(KINDS)


@pytest.mark.parametrize("name", ["acme\x00", "acme\n", "acme\x7f", "acme\x9f", "acme\t"])
@pytest.mark.parametrize("ascii_", [True, False])
def test_a_control_character_in_a_name_is_refused_whether_escaped_or_raw(name: str, ascii_: bool) -> None:
    raw = _dump(_valid("llm_call", _Fixed()) | {"tenant_id": name}, ascii_)
    assert _fast(raw, None) is None
    with pytest.raises(InvalidEvent, match="^tenant_id: contains a control character"):
        decode_event(raw)


@pytest.mark.parametrize("name", ["café", "©", "a\\nb", "\U0001f600"])
@pytest.mark.parametrize("ascii_", [True, False])
def test_names_without_control_characters_stay_on_the_fast_path(name: str, ascii_: bool) -> None:
    raw = _dump(_valid("llm_call", _Fixed()) | {"tenant_id": name}, ascii_)
    event = _fast(raw, None)
    if "\\" in name:  # an escaped backslash before "n" looks like an escaped newline: the models decide
        assert event is None and decode_event(raw).tenant_id == name
    else:
        assert event is not None and event.tenant_id == name


class _Fixed:
    """Stands in for hypothesis' data object in ``_valid``: the smallest value of every draw."""

    def draw(self, strategy: Any) -> Any:
        return 0
