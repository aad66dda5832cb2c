"""Event contract: what a product service publishes on ``flyball.events.v1``.

One UTF-8 JSON object per Kafka message, keyed by ``tenant_id``. Five kinds share one
envelope: ``llm_call``, ``tool_call``, ``safety_trigger``, ``retrieval``, ``feedback``.

Versioning rules:

- ``schema_version`` is the *major* version (currently 1). A message with another major
  version (or a non-integer one) is rejected (dead-lettered) with a reason naming the field;
  consumers never guess.
- Minor evolution is additive only: a newer producer may send fields this version does not
  know. Those are not dropped and not fatal: they are moved into ``attributes`` under the key
  ``x.<field>`` (objects and arrays as their text), within the same size bounds as
  ``attributes`` itself, so nothing a producer sent is lost and an old worker keeps working.
- A field never changes name, type or meaning within a major version; a new field always has
  a default that means "not reported", so every version-1 event stays valid forever.
- Where money or identity is concerned nothing is guessed: ``schema_version`` is required on
  every event and ``output_tokens`` on an ``llm_call`` (a missing one would be priced as zero);
  the nil UUID is not an ``event_id``; a JSON object with a key twice is refused, since parsers
  disagree on which value wins. Each goes to the DLQ with a reason naming the field.
- Removing a field, narrowing a type, or adding a required field is a new major version
  (``flyball.events.v2``), published alongside v1 during a migration.

Token semantics follow OpenTelemetry GenAI: ``input_tokens`` includes cached reads and cache
writes (both are subsets of it); ``reasoning_tokens`` is a subset of ``output_tokens``.

Privacy: events carry no prompt or completion text. ``prompt_hash`` and ``user_id_hash`` are
hex digests (the shim hashes a raw ``user_id`` before it leaves the process); ``prompt_chars``
and ``completion_chars`` are lengths.

Validation runs in Rust (pydantic-core constraints) except two Python checks per event:
``_after`` (UTC normalisation, the clock-skew bound, unknown-field folding, cross-field
invariants) and ``_microseconds`` on ``ts``. The worker validates every event, so keep it that way.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

SCHEMA_VERSION = 1
MAX_TOKENS = 100_000_000  # a single call above this is a bug, not traffic
MAX_LATENCY_MS = 24 * 3600 * 1000
MAX_FUTURE = timedelta(minutes=5)
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_KEY = 128
MAX_ATTRIBUTE_VALUE = 1024
MAX_NAME = 256
EXTRA_PREFIX = "x."
NIL_UUID = "00000000-0000-0000-0000-000000000000"
# The plausible range of an event time (and of any time the API is asked about): earlier or
# later is a bug or an attack, and outside what ClickHouse's DateTime64 stores faithfully.
MIN_TIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2200, 1, 1, tzinfo=UTC)


def plausible(value: datetime) -> datetime:
    """``value`` if within [MIN_TIME, MAX_TIME) (a naive one read as UTC), else ValueError."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not MIN_TIME <= aware < MAX_TIME:
        raise ValueError(f"outside the plausible range {MIN_TIME.year}-{MAX_TIME.year - 1}")
    return value


PlausibleTime = Annotated[datetime, AfterValidator(plausible)]

_UUID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

# names (tenants, features, models, tools, ...) end up in Kafka keys, CSV exports, metric labels
# and the console: a control character in one is a bug or an attack, never a name
_PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]*$"  # no Unicode Cc (C0, DEL, C1)
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME, pattern=_PRINTABLE)]
OptName = Annotated[str, Field(max_length=MAX_NAME, pattern=_PRINTABLE)]
ShortName = Annotated[str, Field(max_length=64, pattern=_PRINTABLE)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS, strict=True)]
Count = Annotated[int, Field(ge=0, le=1_000_000_000, strict=True)]
Millis = Annotated[float, Field(ge=0, le=MAX_LATENCY_MS, allow_inf_nan=False)]
EventId = Annotated[str, Field(pattern=_UUID_RE)]
OptEventId = Annotated[str, Field(pattern=r"^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?$")]
TraceId = Annotated[str, Field(pattern=r"^(?:[0-9a-f]{32})?$", description="W3C trace-id: 32 lowercase hex, or empty")]
SpanId = Annotated[str, Field(pattern=r"^(?:[0-9a-f]{16})?$", description="W3C span-id: 16 lowercase hex, or empty")]
HexDigest = Annotated[str, Field(pattern=r"^(?:[0-9a-f]{16,128})?$", description="lowercase hex digest, or empty")]
AttributeKey = Annotated[str, Field(max_length=MAX_ATTRIBUTE_KEY)]
AttributeValue = (
    bool
    | Annotated[int, Field(ge=-(2**63), lt=2**63, strict=True)]
    | Annotated[float, Field(allow_inf_nan=False)]
    | Annotated[str, Field(max_length=MAX_ATTRIBUTE_VALUE)]
)
Attributes = Annotated[dict[AttributeKey, AttributeValue], Field(max_length=MAX_ATTRIBUTES)]


class EventType(StrEnum):
    LLM_CALL = "llm_call"
    TOOL_CALL = "tool_call"
    SAFETY_TRIGGER = "safety_trigger"
    RETRIEVAL = "retrieval"
    FEEDBACK = "feedback"


class CallStatus(StrEnum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    FILTERED = "filtered"
    CANCELLED = "cancelled"


def _microseconds(value: Any, handler: ValidatorFunctionWrapHandler) -> datetime:
    """A ``ts`` text with more than 6 fractional digits (Go's and Java's nanosecond times have 9)
    is rounded to the microsecond, half up on the 7th digit, as the worker's fast decoder
    (msgspec, ``stream_processors/decode.py``) reads it; pydantic alone would truncate."""
    ts: datetime = handler(value)  # the handler of a datetime field returns one
    if type(value) is str and len(value) > 26 and value[19] == "." and value[20:27].isdigit() and value[26] >= "5":
        try:
            return ts + timedelta(microseconds=1)
        except OverflowError:
            raise ValueError("ts: timestamp out of range") from None
    return ts


class Envelope(BaseModel):
    """Fields every event carries. Unknown extra fields are kept in ``attributes``."""

    # extra="allow" lets pydantic-core collect unknown fields (in Rust); ``_after`` folds them
    # into ``attributes`` so a dump never carries them at the top level.
    model_config = ConfigDict(frozen=True, extra="allow", str_strip_whitespace=False)

    schema_version: Annotated[int, Field(strict=True, ge=1, le=1, description="major version (required)")]
    event_id: EventId = Field(description="UUID, lowercase, not the nil UUID: the idempotency key")
    ts: Annotated[AwareDatetime, WrapValidator(_microseconds)] = Field(
        description="event time, RFC 3339 with offset; stored as UTC, to the microsecond (rounded)")
    tenant_id: Name
    feature: OptName = ""
    service: OptName = ""
    environment: OptName = "production"
    shim_version: ShortName = ""
    shim_instance: ShortName = Field("", description="random id of the emitting shim process: live instances "
                                                     "per tenant share a throttle's rate")
    request_id: OptName = ""
    trace_id: TraceId = ""
    span_id: SpanId = ""
    parent_span_id: SpanId = ""
    attributes: Attributes = Field(default_factory=dict)

    @model_validator(mode="after")
    def _after(self, info: ValidationInfo) -> Envelope:
        fields = self.__dict__
        try:
            ts = self.ts.astimezone(UTC)
        except OverflowError:
            raise ValueError("ts: timestamp out of range when converted to UTC") from None
        fields["ts"] = ts
        if not MIN_TIME <= ts < MAX_TIME:
            raise ValueError(f"ts: {ts.isoformat()} is outside the plausible range {MIN_TIME.year}-{MAX_TIME.year - 1}")
        if self.event_id == NIL_UUID:
            raise ValueError("event_id: the nil UUID is not an id (every such event would dedupe into one)")
        context = info.context
        if context:
            now = context.get("now")
            if now is not None and ts > now + MAX_FUTURE:
                raise ValueError(f"ts: timestamp is more than {MAX_FUTURE} in the future")
        extra = self.__pydantic_extra__
        if extra:
            fields["attributes"] = _fold_extra(self.attributes, extra)
            self.__pydantic_extra__ = {}
        self._check()
        return self

    def _check(self) -> None:
        """Cross-field invariants of one kind; raise ``ValueError("field: message")``."""


def _fold_extra(attributes: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(attributes)
    for key, value in extra.items():
        name = EXTRA_PREFIX + key
        if not (isinstance(value, (str, bool)) or (isinstance(value, int) and -(2**63) <= value < 2**63)
                or (isinstance(value, float) and math.isfinite(value))):
            value = str(value)[: MAX_ATTRIBUTE_VALUE + 1]
        if len(name) > MAX_ATTRIBUTE_KEY:
            raise ValueError(f"attributes: unknown field name {name[:40]!r}... longer than {MAX_ATTRIBUTE_KEY}")
        if isinstance(value, str) and len(value) > MAX_ATTRIBUTE_VALUE:
            raise ValueError(f"attributes: {name!r} longer than {MAX_ATTRIBUTE_VALUE} characters")
        merged[name] = value
    if len(merged) > MAX_ATTRIBUTES:
        raise ValueError(f"attributes: at most {MAX_ATTRIBUTES} entries (unknown fields included)")
    return merged


class LLMCall(Envelope):
    """One call to a model provider (after the shim's own retries: ``retries`` counts them)."""

    event_type: Literal["llm_call"] = "llm_call"
    operation: ShortName = Field("chat", description="gen_ai.operation.name: chat, embeddings, ...")
    provider: Name
    model: Name = Field(description="the requested model")
    response_model: OptName = Field("", description="the model that answered, if reported")
    route: OptName = Field("", description="the router route or deployment the call went through")
    fallback_position: Annotated[int, Field(ge=0, le=100, strict=True)] = Field(
        0, description="0 = the first choice; n = the n-th fallback of the route")
    prompt_id: OptName = ""
    prompt_version: ShortName = ""
    prompt_hash: HexDigest = ""
    prompt_chars: Count | None = None
    completion_chars: Count | None = None
    input_tokens: Tokens = Field(0, description="includes cache_read_tokens and cache_write_tokens")
    output_tokens: Tokens = Field(description="required; includes reasoning_tokens")
    cache_read_tokens: Tokens = 0
    cache_write_tokens: Tokens = 0
    cache_write_1h_tokens: Tokens = Field(0, description="the part of cache_write_tokens written with a 1-hour TTL")
    cache_write_12h_tokens: Tokens = Field(
        0, description="the part of cache_write_tokens written with 12-hour retention (OpenAI)")
    reasoning_tokens: Tokens = 0
    service_tier: ShortName = Field("", description="provider service tier: batch, flex, priority; empty = standard")
    latency_ms: Millis = 0.0
    ttft_ms: Millis | None = Field(None, description="time to first token (streaming)")
    stream: bool = False
    status: CallStatus = CallStatus.OK
    error_type: OptName = ""
    finish_reason: ShortName = ""
    retries: Annotated[int, Field(ge=0, le=1000, strict=True)] = 0
    cache_hit: bool = Field(False, description="served from an application/semantic response cache")
    user_id_hash: HexDigest = ""

    def _check(self) -> None:
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError(
                "cache_read_tokens: cache_read_tokens + cache_write_tokens exceed input_tokens "
                "(input_tokens includes cached reads and cache writes)"
            )
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError("reasoning_tokens: reasoning_tokens exceed output_tokens (they are a subset of it)")
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise ValueError("cache_write_1h_tokens: exceed cache_write_tokens (they are a subset of it)")
        if self.cache_write_1h_tokens + self.cache_write_12h_tokens > self.cache_write_tokens:
            raise ValueError("cache_write_12h_tokens: cache_write_1h_tokens + cache_write_12h_tokens exceed "
                             "cache_write_tokens (they are subsets of it)")
        if self.ttft_ms is not None and self.latency_ms and self.ttft_ms > self.latency_ms:
            raise ValueError("ttft_ms: time to first token exceeds latency_ms")


class ToolCall(Envelope):
    event_type: Literal["tool_call"] = "tool_call"
    tool_name: Name
    status: CallStatus = CallStatus.OK
    latency_ms: Millis = 0.0
    error_type: OptName = ""
    retries: Annotated[int, Field(ge=0, le=1000, strict=True)] = 0


class SafetyTrigger(Envelope):
    event_type: Literal["safety_trigger"] = "safety_trigger"
    filter_name: Name
    category: Name = Field(description="pii, toxicity, prompt_injection, jailbreak, ...")
    action: Literal["blocked", "redacted", "flagged"] = "flagged"
    severity: Literal["low", "medium", "high", "critical"] = "medium"
    stage: Literal["", "input", "output", "tool", "retrieval"] = ""
    score: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None


class Retrieval(Envelope):
    """A RAG lookup: ``results_count == 0`` with ``status="ok"`` is an empty result."""

    event_type: Literal["retrieval"] = "retrieval"
    index_name: Name
    status: CallStatus = CallStatus.OK
    results_count: Annotated[int, Field(ge=0, le=1_000_000, strict=True)] = 0
    top_k: Annotated[int, Field(ge=0, le=1_000_000, strict=True)] | None = None
    top_score: Annotated[float, Field(allow_inf_nan=False)] | None = None
    latency_ms: Millis = 0.0
    error_type: OptName = ""


class Feedback(Envelope):
    """A user's verdict on a request (``request_id``) or on one event (``target_event_id``)."""

    event_type: Literal["feedback"] = "feedback"
    score: Annotated[float, Field(ge=-1_000, le=1_000, allow_inf_nan=False)]
    label: ShortName = Field("", description="e.g. thumbs_up, thumbs_down, 1-5")
    target_event_id: OptEventId = ""
    user_id_hash: HexDigest = ""


KINDS: dict[str, type[Envelope]] = {
    "llm_call": LLMCall, "tool_call": ToolCall, "safety_trigger": SafetyTrigger,
    "retrieval": Retrieval, "feedback": Feedback,
}
Event = Annotated[
    LLMCall | ToolCall | SafetyTrigger | Retrieval | Feedback,
    Field(discriminator="event_type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


class InvalidEvent(ValueError):
    """An event that cannot be accepted; ``reason`` names the offending field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_KIND_NAMES: frozenset[str] = frozenset(EventType)
_VALUE_ERROR = "Value error, "


_TYPE_MISMATCH = frozenset({"bool_type", "bool_parsing", "int_type", "int_parsing", "int_from_float", "float_type",
                            "float_parsing", "string_type", "string_unicode"})
_ATTRIBUTE_TYPES = "must be a string, an integer, a finite number or a boolean"


def describe(exc: ValidationError) -> str:
    """A one-line reason naming each failing field, for DLQ records and logs."""
    parts: list[str] = []
    seen: set[str] = set()
    errors = exc.errors(include_url=False)
    # an attribute value fails every member of its union: report the one constraint it broke,
    # or that its type is none of the allowed ones
    broken: dict[str, str] = {}
    for err in errors:
        path = [str(p) for p in err["loc"] if str(p) not in _KIND_NAMES]
        if len(path) > 2 and path[0] == "attributes" and err["type"] not in _TYPE_MISMATCH:
            broken.setdefault(path[1], err["msg"])
    for err in errors:
        loc_parts = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union"))]
        # the discriminated union puts the event type first in the location; drop it
        if loc_parts and loc_parts[0] in _KIND_NAMES:
            loc_parts = loc_parts[1:]
        msg = err["msg"]
        if err["type"] == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") == _PRINTABLE:
            msg = "contains a control character (U+0000-U+001F, U+007F-U+009F), which a name may not"
        elif err["type"] == "union_tag_not_found":
            loc_parts, msg = ["event_type"], "missing (one of: " + ", ".join(EventType) + ")"
        elif err["type"] == "union_tag_invalid":
            tag = err["input"].get("event_type") if isinstance(err["input"], dict) else None
            loc_parts, msg = ["event_type"], f"unknown value {tag!r}"
        elif not loc_parts and msg.startswith(_VALUE_ERROR):
            # model-level checks raise "field: message"
            field, sep, rest = msg[len(_VALUE_ERROR):].partition(": ")
            loc_parts, msg = ([field], rest) if sep else ([], msg[len(_VALUE_ERROR):])
        if loc_parts and loc_parts[0] == "attributes" and len(loc_parts) > 1:
            # one message per attribute, not one per member of the value union
            name = loc_parts[1]
            shown = repr(name) if len(name) <= 40 else repr(name[:40]) + "..."
            detail = broken.get(name, _ATTRIBUTE_TYPES if len(loc_parts) > 2 else msg)
            loc_parts, msg = ["attributes"], f"{shown}: {detail}"
        where = ".".join(loc_parts) or "event"
        key = f"{where}: {msg.partition(':')[0]}" if where == "attributes" else where
        if key in seen:
            continue
        seen.add(key)
        parts.append(f"{where}: {msg}")
        if len(parts) == 5:
            break
    return "; ".join(parts)


def parse_event(raw: bytes | str | dict[str, Any], *, now: datetime | None = None) -> Event:
    """Validate one wire event. Raises :class:`InvalidEvent` with a readable reason.

    ``now`` enables the clock-skew check (``ts`` at most five minutes ahead); replay and
    backfills leave it out."""
    ctx = {"now": now} if now is not None else None
    try:
        if isinstance(raw, dict):
            return EVENT_ADAPTER.validate_python(_check_version(raw), context=ctx)
        _refuse_duplicate_keys(raw)
        return EVENT_ADAPTER.validate_json(raw, context=ctx)
    except ValidationError as exc:
        raise InvalidEvent(_version_reason(exc) or _utf8_reason(exc) or describe(exc)) from None


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                break
            seen.add(key)
        shown = key if len(key) <= 40 and key.isprintable() else repr(key[:40])
        raise InvalidEvent(f"{shown}: key appears more than once in one JSON object "
                           "(parsers disagree on which value wins)")
    return obj


_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_unique_pairs)


def _refuse_duplicate_keys(raw: bytes | str) -> None:
    """Raise :class:`InvalidEvent` if any object of the document repeats a key. Anything else
    wrong with the text (not JSON, not UTF-8) is left to the models, which name it."""
    try:
        _STRICT_JSON.decode(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except InvalidEvent:
        raise
    except (ValueError, RecursionError):  # not JSON: the models say so, naming the position
        return


def _check_version(data: dict[str, Any]) -> dict[str, Any]:
    if "schema_version" not in data:
        raise InvalidEvent(_MISSING_VERSION)
    version = data["schema_version"]
    if type(version) is not int or version != SCHEMA_VERSION:
        raise InvalidEvent(f"schema_version: unsupported major version {version!r} (this consumer reads 1)")
    return data


_MISSING_VERSION = f"schema_version: missing (required; this consumer reads {SCHEMA_VERSION})"


def _version_reason(exc: ValidationError) -> str | None:
    for err in exc.errors(include_url=False):
        if err["loc"] and err["loc"][-1] == "schema_version":
            if err["type"] == "missing":
                return _MISSING_VERSION
            return f"schema_version: unsupported major version {err.get('input')!r} (this consumer reads 1)"
    return None


def _utf8_reason(exc: ValidationError) -> str | None:
    for err in exc.errors(include_url=False):
        if err["type"] == "json_invalid" and "utf-8" in err["msg"].lower():
            return "event: not valid UTF-8"
    return None


def to_wire(event: Envelope) -> dict[str, Any]:
    """The JSON-ready dict of an event, as it goes on the wire."""
    return event.model_dump(mode="json", exclude_defaults=False)

