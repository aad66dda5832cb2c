"""Event contract: what a product service publishes on ``flyball.events.v1``.

One UTF-8 JSON object per Kafka message, keyed by ``tenant_id``.

Versioning rules:
- ``schema_version`` is the *major* version (currently 1). A message with another major
  version is rejected (dead-lettered) with a reason naming the field; consumers never guess.
- Minor evolution is additive: a newer producer may send fields this version does not know.
  Those are not dropped and not fatal: they are moved into ``attributes`` (prefixed with
  ``x.``) so that nothing a producer sent is lost.
- Field names never change meaning within a major version.

Token semantics follow OpenTelemetry GenAI: ``input_tokens`` includes cached reads and cache
writes (both are subsets of it); ``reasoning_tokens`` is a subset of ``output_tokens``.
"""

from __future__ import annotations

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
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1
MAX_TOKENS = 100_000_000  # a single call above this is a bug, not traffic
MAX_LATENCY_MS = 24 * 3600 * 1000
MAX_FUTURE = timedelta(minutes=5)
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_VALUE = 1024

_UUID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def _utc(value: datetime, info: ValidationInfo) -> datetime:
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp out of range when converted to UTC") from None
    now = (info.context or {}).get("now") if info.context else None
    if now is not None and value > now + MAX_FUTURE:
        raise ValueError(f"timestamp is more than {MAX_FUTURE} in the future")
    return value


Name = Annotated[str, Field(min_length=1, max_length=256)]
OptName = Annotated[str, Field(max_length=256)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS, strict=True)]
Millis = Annotated[float, Field(ge=0, le=MAX_LATENCY_MS, allow_inf_nan=False)]
EventTime = Annotated[AwareDatetime, AfterValidator(_utc)]


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


class Envelope(BaseModel):
    """Fields every event carries. Unknown extra fields are kept in ``attributes``."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=False)

    schema_version: Annotated[int, Field(strict=True, ge=1, le=1)] = 1
    event_id: Annotated[str, Field(pattern=_UUID_RE)]
    ts: EventTime
    tenant_id: Name
    feature: OptName = ""
    service: OptName = ""
    environment: OptName = "production"
    request_id: OptName = ""
    trace_id: OptName = ""
    span_id: OptName = ""
    parent_span_id: OptName = ""
    shim_version: OptName = ""
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _keep_unknown_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = cls.model_fields
        extra = [k for k in data if k not in known]
        if not extra:
            return data
        data = dict(data)
        given = data.get("attributes")
        if given is not None and not isinstance(given, dict):
            return data  # let validation reject the malformed attributes, naming the field
        attrs = dict(given or {})
        for key in extra:
            value = data.pop(key)
            if isinstance(value, (str, float, bool)) or (isinstance(value, int) and -(2**63) <= value < 2**63):
                attrs[f"x.{key}"] = value
            else:
                attrs[f"x.{key}"] = str(value)[:MAX_ATTRIBUTE_VALUE]
        data["attributes"] = attrs
        return data

    @field_validator("attributes")
    @classmethod
    def _bounded_attributes(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_ATTRIBUTES:
            raise ValueError(f"at most {MAX_ATTRIBUTES} attributes")
        for key, item in value.items():
            if len(key) > 128:
                raise ValueError("attribute key longer than 128 characters")
            if isinstance(item, str) and len(item) > MAX_ATTRIBUTE_VALUE:
                raise ValueError(f"attribute {key!r} longer than {MAX_ATTRIBUTE_VALUE} characters")
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"attribute {key!r} is not a finite number")
        return value


class LLMCall(Envelope):
    event_type: Literal["llm_call"] = "llm_call"
    provider: Name
    model: Name
    response_model: OptName = ""
    input_tokens: Tokens = 0
    output_tokens: Tokens = 0
    cache_read_tokens: Tokens = 0
    cache_write_tokens: Tokens = 0
    reasoning_tokens: Tokens = 0
    latency_ms: Millis = 0.0
    ttft_ms: Millis | None = None
    status: CallStatus = CallStatus.OK
    error_type: OptName = ""
    retries: Annotated[int, Field(ge=0, le=1000, strict=True)] = 0
    stream: bool = False

    @model_validator(mode="after")
    def _token_subsets(self) -> LLMCall:
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError(
                "cache_read_tokens + cache_write_tokens exceed input_tokens "
                "(input_tokens includes cached reads and cache writes)"
            )
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError("reasoning_tokens exceed output_tokens (they are a subset of it)")
        return self


class ToolCall(Envelope):
    event_type: Literal["tool_call"] = "tool_call"
    tool_name: Name
    status: CallStatus = CallStatus.OK
    latency_ms: Millis = 0.0
    error_type: OptName = ""


class SafetyTrigger(Envelope):
    event_type: Literal["safety_trigger"] = "safety_trigger"
    filter_name: Name
    category: Name
    action: Literal["blocked", "redacted", "flagged"] = "flagged"
    severity: Literal["low", "medium", "high", "critical"] = "medium"


class Retrieval(Envelope):
    event_type: Literal["retrieval"] = "retrieval"
    index_name: Name
    status: CallStatus = CallStatus.OK
    results_count: Annotated[int, Field(ge=0, le=1_000_000, strict=True)] = 0
    latency_ms: Millis = 0.0


class Feedback(Envelope):
    event_type: Literal["feedback"] = "feedback"
    score: Annotated[float, Field(ge=-1_000, le=1_000, allow_inf_nan=False)]
    target_event_id: OptName = ""


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


def describe(exc: ValidationError) -> str:
    """A one-line reason naming each failing field, for DLQ records and logs."""
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union")))
        # the discriminated union puts the event type first in the location; drop it
        head, _, tail = loc.partition(".")
        if head in set(EventType):
            loc = tail
        msg = err["msg"]
        if err["type"] == "union_tag_not_found":
            loc, msg = "event_type", "missing (one of: " + ", ".join(EventType) + ")"
        elif err["type"] == "union_tag_invalid":
            loc, msg = "event_type", f"unknown value {err['input'].get('event_type')!r}" if isinstance(err["input"], dict) else msg
        parts.append(f"{loc or 'event'}: {msg}")
    return "; ".join(parts)


def parse_event(raw: bytes | str | dict[str, Any], *, now: datetime | None = None) -> Event:
    """Validate one wire event. Raises :class:`InvalidEvent` with a readable reason."""
    ctx = {"now": now} if now is not None else None
    try:
        if isinstance(raw, dict):
            return EVENT_ADAPTER.validate_python(_check_version(raw), context=ctx)
        if isinstance(raw, (bytes, bytearray)):
            raw = bytes(raw).decode("utf-8")
        return EVENT_ADAPTER.validate_json(raw, context=ctx)
    except UnicodeDecodeError:
        raise InvalidEvent("event: not valid UTF-8") from None
    except ValidationError as exc:
        raise InvalidEvent(_version_reason(exc) or describe(exc)) from None


def _check_version(data: dict[str, Any]) -> dict[str, Any]:
    version = data.get("schema_version", 1)
    if type(version) is not int or version != SCHEMA_VERSION:
        raise InvalidEvent(f"schema_version: unsupported major version {version!r} (this consumer reads 1)")
    return data


def _version_reason(exc: ValidationError) -> str | None:
    for err in exc.errors(include_url=False):
        if err["loc"] and err["loc"][-1] == "schema_version":
            return f"schema_version: unsupported major version {err.get('input')!r} (this consumer reads 1)"
    return None


def to_wire(event: Envelope) -> dict[str, Any]:
    """The JSON-ready dict of an event, as it goes on the wire."""
    return event.model_dump(mode="json", exclude_defaults=False)
