"""The worker's event decoder: a fast path for the common event, pydantic for everything else.

The pydantic models in ``schemas/events.py`` are the contract, and they decide every event this
module is not sure about. Validating with them costs about 12 us per ``llm_call`` on this
machine, the largest single share of the worker's per-event CPU; msgspec decodes the same
fields, with the same bounds, in about 3 us. So :func:`decode_event` first tries a msgspec
mirror of the models that is deliberately *narrower* than them:

- unknown top-level fields are refused (pydantic folds them into ``attributes``);
- no lax coercion: ``"12"`` for a number or ``"true"`` for a boolean is refused;
- ``attributes`` values must already be of an allowed type and size;
- any cross-field invariant, clock-skew or range check that fails is refused.

A ``ts`` with more than 6 fractional digits is rounded to the microsecond by msgspec; the
models round it the same way (``schemas/events.py``, ``_microseconds``).

A refusal is never a verdict: the event then goes through :func:`flyball.schemas.parse_event`,
which accepts it (folding, coercing) or rejects it with the reason that goes to the DLQ. So
the fast path can only ever accept an event the models accept, and must then produce the same
values; ``tests/unit/test_decode.py`` checks both on generated hostile input, and checks that
the mirror has exactly the models' fields and defaults (a field added to a model but not here
fails that test rather than silently taking the slow path or, worse, being dropped).

The decoded objects are msgspec Structs with the models' attribute names (``event_type`` is
a class attribute), not pydantic instances: the pipeline reads attributes and dispatches on
``event_type``, so it treats both alike.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, Union

import msgspec
from flyball.schemas import parse_event
from flyball.schemas.events import (
    MAX_ATTRIBUTE_KEY,
    MAX_ATTRIBUTE_VALUE,
    MAX_ATTRIBUTES,
    MAX_FUTURE,
    MAX_LATENCY_MS,
    MAX_NAME,
    MAX_TIME,
    MAX_TOKENS,
    MIN_TIME,
    NIL_UUID,
    CallStatus,
)
from msgspec import Meta, Struct

# The same bounds as the models. Patterns end in \Z, not $: msgspec runs Python's re.search,
# where $ also matches before a trailing newline, which pydantic's (Rust) regex does not.
_Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME)]
_OptName = Annotated[str, Meta(max_length=MAX_NAME)]
_Short = Annotated[str, Meta(max_length=64)]
_Tokens = Annotated[int, Meta(ge=0, le=MAX_TOKENS)]
_Count = Annotated[int, Meta(ge=0, le=1_000_000_000)]
_Millis = Annotated[float, Meta(ge=0, le=MAX_LATENCY_MS)]
_Finite = Annotated[float, Meta(ge=-1.7976931348623157e308, le=1.7976931348623157e308)]
_Retries = Annotated[int, Meta(ge=0, le=1000)]
_Hex = Annotated[str, Meta(pattern=r"^(?:[0-9a-f]{16,128})?\Z")]
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_EventId = Annotated[str, Meta(pattern=rf"^{_UUID}\Z")]
_OptEventId = Annotated[str, Meta(pattern=rf"^(?:{_UUID})?\Z")]
_TraceId = Annotated[str, Meta(pattern=r"^(?:[0-9a-f]{32})?\Z")]
_SpanId = Annotated[str, Meta(pattern=r"^(?:[0-9a-f]{16})?\Z")]
_Ts = Annotated[datetime, Meta(tz=True)]
# a control character (U+0000-U+001F, U+007F-U+009F) as a JSON escape, a raw DEL or a raw C1 in
# UTF-8 (C2 80-9F); a false match (an escaped backslash before "n") only sends the event to the models
_CONTROL = re.compile(rb"\\(?:[btnfr]|u00[0189][0-9a-fA-F]|u007[fF])|\x7f|\xc2[\x80-\x9f]")


class _Envelope(Struct, kw_only=True, forbid_unknown_fields=True, tag_field="event_type", gc=False):
    # gc=False: a batch creates 20k of these; none can be part of a reference cycle
    schema_version: Annotated[int, Meta(ge=1, le=1)]
    event_id: _EventId
    ts: _Ts
    tenant_id: _Name
    feature: _OptName = ""
    service: _OptName = ""
    environment: _OptName = "production"
    shim_version: _Short = ""
    shim_instance: _Short = ""
    request_id: _OptName = ""
    trace_id: _TraceId = ""
    span_id: _SpanId = ""
    parent_span_id: _SpanId = ""
    attributes: dict[str, Any] = {}


class FastLLMCall(_Envelope, tag="llm_call", kw_only=True, gc=False):
    event_type: ClassVar[str] = "llm_call"
    operation: _Short = "chat"
    provider: _Name
    model: _Name
    response_model: _OptName = ""
    route: _OptName = ""
    fallback_position: Annotated[int, Meta(ge=0, le=100)] = 0
    prompt_id: _OptName = ""
    prompt_version: _Short = ""
    prompt_hash: _Hex = ""
    prompt_chars: _Count | None = None
    completion_chars: _Count | None = None
    input_tokens: _Tokens = 0
    output_tokens: _Tokens
    cache_read_tokens: _Tokens = 0
    cache_write_tokens: _Tokens = 0
    cache_write_1h_tokens: _Tokens = 0
    cache_write_12h_tokens: _Tokens = 0
    reasoning_tokens: _Tokens = 0
    service_tier: _Short = ""
    latency_ms: _Millis = 0.0
    ttft_ms: _Millis | None = None
    stream: bool = False
    status: CallStatus = CallStatus.OK
    error_type: _OptName = ""
    finish_reason: _Short = ""
    retries: _Retries = 0
    cache_hit: bool = False
    user_id_hash: _Hex = ""


class FastToolCall(_Envelope, tag="tool_call", kw_only=True, gc=False):
    event_type: ClassVar[str] = "tool_call"
    tool_name: _Name
    status: CallStatus = CallStatus.OK
    latency_ms: _Millis = 0.0
    error_type: _OptName = ""
    retries: _Retries = 0


class FastSafetyTrigger(_Envelope, tag="safety_trigger", kw_only=True, gc=False):
    event_type: ClassVar[str] = "safety_trigger"
    filter_name: _Name
    category: _Name
    action: Literal["blocked", "redacted", "flagged"] = "flagged"
    severity: Literal["low", "medium", "high", "critical"] = "medium"
    stage: Literal["", "input", "output", "tool", "retrieval"] = ""
    score: Annotated[float, Meta(ge=0, le=1)] | None = None


class FastRetrieval(_Envelope, tag="retrieval", kw_only=True, gc=False):
    event_type: ClassVar[str] = "retrieval"
    index_name: _Name
    status: CallStatus = CallStatus.OK
    results_count: Annotated[int, Meta(ge=0, le=1_000_000)] = 0
    top_k: Annotated[int, Meta(ge=0, le=1_000_000)] | None = None
    top_score: _Finite | None = None
    latency_ms: _Millis = 0.0
    error_type: _OptName = ""


class FastFeedback(_Envelope, tag="feedback", kw_only=True, gc=False):
    event_type: ClassVar[str] = "feedback"
    score: Annotated[float, Meta(ge=-1_000, le=1_000)]
    label: _Short = ""
    target_event_id: _OptEventId = ""
    user_id_hash: _Hex = ""


FAST_KINDS: dict[str, type[_Envelope]] = {
    "llm_call": FastLLMCall, "tool_call": FastToolCall, "safety_trigger": FastSafetyTrigger,
    "retrieval": FastRetrieval, "feedback": FastFeedback,
}
_DECODER = msgspec.json.Decoder(Union[tuple(FAST_KINDS.values())])  # noqa: UP007 - a union built from the table
_INT64 = 2**63


def id_key(event_id: str) -> int:
    """A validated event id (a lowercase UUID) as the 128-bit int it spells: what the in-memory
    id tables keep (44 bytes an id, against 85 for the string)."""
    return int(event_id.replace("-", ""), 16)


def _fast(raw: bytes, now: datetime | None) -> Any:
    """The event, or None when the fast path is not sure (the models then decide)."""
    try:
        event = _DECODER.decode(raw)
        keys = _KEYS.decode(raw)
    except (msgspec.MsgspecError, ValueError):  # ValueError: invalid UTF-8 inside a string
        return None
    if not _keys_unique(raw, keys):
        return None
    # a control character in a name is refused by the models; JSON carries one escaped, or raw
    # as DEL or C2 80-9F, so three byte scans (``find``: under half the cost of ``in`` on bytes)
    # leave almost every event on the fast path
    if (raw.find(b"\\") >= 0 or raw.find(b"\x7f") >= 0 or raw.find(b"\xc2") >= 0) and _CONTROL.search(raw):
        return None
    if event.event_id == NIL_UUID:
        return None
    ts = event.ts
    if ts.tzinfo is not UTC:
        try:
            ts = ts.astimezone(UTC)
        except OverflowError:
            return None
        event.ts = ts
    if (now is not None and ts > now + MAX_FUTURE) or not MIN_TIME <= ts < MAX_TIME:
        return None
    attributes = event.attributes
    if attributes and not _plain(attributes):
        return None
    if event.event_type == "llm_call" and (
            event.cache_read_tokens + event.cache_write_tokens > event.input_tokens
            or event.reasoning_tokens > event.output_tokens
            or event.cache_write_1h_tokens + event.cache_write_12h_tokens > event.cache_write_tokens
            or (event.ttft_ms is not None and event.latency_ms and event.ttft_ms > event.latency_ms)):
        return None
    return event


# A repeated key is refused (the models name it); msgspec, like most parsers, keeps the last
# value. Decoding the document once more as plain objects gives the number of distinct keys;
# ``":`` occurs once per key written without space before its colon, and more often only if
# a string contains ``\":``. So with no space before any colon, that count equals the
# distinct keys exactly when no key repeats; anything else is left to the models.
# The Struct decode has already succeeded, so every top-level value but ``attributes`` is a
# scalar: the distinct keys are the top level's and the attributes' (deeper keys only make the
# count larger, and the models decide).
# Compact JSON (what the shim and most encoders send) has no whitespace byte at all, which one
# pass of ``bytes.translate`` shows in about half the time of the regex search it then spares.
_KEYS = msgspec.json.Decoder(dict[str, Any])
_SPACED_COLON = re.compile(rb'"[ \t\r\n]+:')
_WHITESPACE = b" \t\r\n"


def _keys_unique(raw: bytes, keys: dict[str, Any]) -> bool:
    attributes = keys.get("attributes")
    distinct = len(keys)
    if attributes is not None:
        if type(attributes) is not dict:
            return False
        distinct += len(attributes)
    if raw.count(b'":') != distinct:
        return False
    return len(raw.translate(None, _WHITESPACE)) == len(raw) or _SPACED_COLON.search(raw) is None


def _plain(attributes: dict[str, Any]) -> bool:
    if len(attributes) > MAX_ATTRIBUTES:
        return False
    for key, value in attributes.items():
        if len(key) > MAX_ATTRIBUTE_KEY:
            return False
        kind = type(value)
        if kind is str:
            if len(value) > MAX_ATTRIBUTE_VALUE:
                return False
        elif kind is int:
            if not -_INT64 <= value < _INT64:
                return False
        elif kind is float:
            if not math.isfinite(value):
                return False
        elif kind is not bool:
            return False
    return True


def decode_event(raw: bytes, *, now: datetime | None = None) -> Any:
    """Validate one wire event: a fast Struct when the fast path is sure, else whatever
    :func:`parse_event` returns. Raises :class:`~flyball.schemas.InvalidEvent` with the
    models' reason."""
    event = _fast(raw, now) if type(raw) is bytes else None
    if event is None:
        return parse_event(raw, now=now)
    return event
