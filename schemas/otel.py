"""Mapping between ``llm_call`` events and OpenTelemetry GenAI span attributes.

An app already instrumented with OpenTelemetry (semantic conventions for generative AI,
``gen_ai.*``) can turn each finished span into a flyball event with :func:`from_otel`, and
flyball can describe an event as span attributes with :func:`to_otel`.

=======================================  ====================================================
OpenTelemetry attribute                  flyball ``llm_call`` field
=======================================  ====================================================
``gen_ai.operation.name``                ``operation``
``gen_ai.provider.name``                 ``provider`` (deprecated ``gen_ai.system`` is read too)
``gen_ai.request.model``                 ``model``
``gen_ai.response.model``                ``response_model``
``gen_ai.usage.input_tokens``            ``input_tokens`` (deprecated ``gen_ai.usage.prompt_tokens`` read)
``gen_ai.usage.output_tokens``           ``output_tokens`` (deprecated ``gen_ai.usage.completion_tokens`` read)
``gen_ai.usage.cache_read.input_tokens``       ``cache_read_tokens``
``gen_ai.usage.cache_creation.input_tokens``   ``cache_write_tokens`` (newer name ``gen_ai.usage.cache_write.input_tokens`` read too)
``gen_ai.usage.reasoning.output_tokens``       ``reasoning_tokens``
``gen_ai.request.stream``                ``stream``
``gen_ai.response.time_to_first_chunk``  ``ttft_ms`` (seconds in OpenTelemetry, ms in flyball)
``gen_ai.response.finish_reasons``       ``finish_reason`` (the first one)
``gen_ai.prompt.name``                   ``prompt_id``
``gen_ai.prompt.version``                ``prompt_version``
``openai.response.service_tier``        ``service_tier`` (normalised: ``default`` -> '', ``fast`` -> ``priority``;
                                         also ``gen_ai.openai.response.service_tier``; a ``flyball.service_tier``
                                         attribute wins)
``error.type``                           ``error_type`` and ``status`` (see :func:`status_from_error_type`)
span start / end time                    ``ts`` / ``latency_ms``
span trace id, span id, parent span id   ``trace_id``, ``span_id``, ``parent_span_id``
``flyball.<field>``                      any other flyball field (``tenant_id``, ``feature``,
                                         ``route``, ``fallback_position``, ``user_id_hash``, ...)
=======================================  ====================================================

Token semantics: the conventions say ``gen_ai.usage.input_tokens`` SHOULD include cached
tokens, as flyball's ``input_tokens`` does. Some instrumentations of Anthropic report
Anthropic's own ``input_tokens`` (which excludes cache reads and writes); when the cache
counts are larger than the input count, :func:`from_otel` treats the input count as such
and adds them. Any other span attribute is kept in ``attributes`` (scalars only, bounded).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from .events import MAX_ATTRIBUTE_KEY, MAX_ATTRIBUTE_VALUE, MAX_ATTRIBUTES, SCHEMA_VERSION, CallStatus, LLMCall
from .usage import normalize_service_tier

GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_SYSTEM: Final = "gen_ai.system"  # deprecated name of gen_ai.provider.name
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_PROMPT_TOKENS: Final = "gen_ai.usage.prompt_tokens"  # deprecated
GEN_AI_USAGE_COMPLETION_TOKENS: Final = "gen_ai.usage.completion_tokens"  # deprecated
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS: Final = "gen_ai.usage.cache_write.input_tokens"  # newer name of the above
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_PROMPT_NAME: Final = "gen_ai.prompt.name"
GEN_AI_PROMPT_VERSION: Final = "gen_ai.prompt.version"
ERROR_TYPE: Final = "error.type"
OPENAI_RESPONSE_SERVICE_TIER: Final = "openai.response.service_tier"
GEN_AI_OPENAI_RESPONSE_SERVICE_TIER: Final = "gen_ai.openai.response.service_tier"  # older semconv name
FLYBALL_PREFIX: Final = "flyball."

# gen_ai key -> flyball field, for plain one-to-one fields
_DIRECT: Final = {
    GEN_AI_OPERATION_NAME: "operation",
    GEN_AI_PROVIDER_NAME: "provider",
    GEN_AI_REQUEST_MODEL: "model",
    GEN_AI_RESPONSE_MODEL: "response_model",
    GEN_AI_USAGE_INPUT_TOKENS: "input_tokens",
    GEN_AI_USAGE_OUTPUT_TOKENS: "output_tokens",
    GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: "cache_read_tokens",
    GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: "cache_write_tokens",
    GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: "reasoning_tokens",
    GEN_AI_REQUEST_STREAM: "stream",
    GEN_AI_PROMPT_NAME: "prompt_id",
    GEN_AI_PROMPT_VERSION: "prompt_version",
}
_DEPRECATED: Final = {
    GEN_AI_SYSTEM: GEN_AI_PROVIDER_NAME,
    GEN_AI_USAGE_PROMPT_TOKENS: GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_COMPLETION_TOKENS: GEN_AI_USAGE_OUTPUT_TOKENS,
    # not deprecated: the conventions' newer name; read like an alias when the older is absent
    GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS: GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
}
_SERVICE_TIER_KEYS: Final = (OPENAI_RESPONSE_SERVICE_TIER, GEN_AI_OPENAI_RESPONSE_SERVICE_TIER)
_SPECIAL: Final = {GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK, GEN_AI_RESPONSE_FINISH_REASONS, ERROR_TYPE, *_SERVICE_TIER_KEYS}
# flyball fields carried by span facts, not by flyball.* attributes
_FROM_SPAN: Final = {"event_type", "ts", "latency_ms", "trace_id", "span_id", "parent_span_id", "attributes",
                     "status", "error_type", "ttft_ms", "finish_reason", "schema_version"}


def status_from_error_type(error_type: str) -> CallStatus:
    """The ``CallStatus`` an ``error.type`` value (exception class name or HTTP status) means."""
    text = error_type.lower()
    if not text:
        return CallStatus.OK
    if "timeout" in text or text in ("408", "504"):
        return CallStatus.TIMEOUT
    if "ratelimit" in text or "rate_limit" in text or text == "429":
        return CallStatus.RATE_LIMITED
    if "contentfilter" in text or "content_filter" in text or "safety" in text:
        return CallStatus.FILTERED
    if "cancel" in text:
        return CallStatus.CANCELLED
    return CallStatus.ERROR


def to_otel(event: LLMCall) -> dict[str, Any]:
    """Span attributes for an ``llm_call`` (flyball-only fields under ``flyball.``)."""
    attrs: dict[str, Any] = {}
    for key, name in _DIRECT.items():
        value = getattr(event, name)
        if value != "":  # an unreported string field is left out, as instrumentations do
            attrs[key] = value
    if event.ttft_ms is not None:
        attrs[GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = event.ttft_ms / 1000
    if event.finish_reason:
        attrs[GEN_AI_RESPONSE_FINISH_REASONS] = [event.finish_reason]
    if event.error_type:
        attrs[ERROR_TYPE] = event.error_type
    mapped = set(_DIRECT.values()) | _FROM_SPAN
    for name in LLMCall.model_fields:
        if name not in mapped:
            value = getattr(event, name)
            if value is not None and value != "":
                attrs[FLYBALL_PREFIX + name] = str(value) if not isinstance(value, (bool, int, float, str)) else value
    attrs[FLYBALL_PREFIX + "status"] = str(event.status)
    for key, value in event.attributes.items():
        attrs.setdefault(key, value)
    return attrs


def from_otel(attributes: Mapping[str, Any], *, start_time_ns: int | None = None, end_time_ns: int | None = None,
              trace_id: int | str | None = None, span_id: int | str | None = None,
              parent_span_id: int | str | None = None, error: bool = False,
              **defaults: Any) -> dict[str, Any]:
    """A wire-format ``llm_call`` dict from a GenAI span's attributes and facts.

    ``defaults`` fill flyball fields the span does not carry (``tenant_id``, ``event_id``,
    ``service``, ...); ``flyball.*`` attributes win over them. Validate the result with
    ``parse_event`` (or use :func:`event_from_otel`)."""
    out: dict[str, Any] = {"event_type": "llm_call", "schema_version": SCHEMA_VERSION, **defaults}
    extra: dict[str, Any] = {}
    for key, value in attributes.items():
        if key in _DIRECT or key in _DEPRECATED or key in _SPECIAL:
            continue
        if key.startswith(FLYBALL_PREFIX):
            out[key[len(FLYBALL_PREFIX):]] = value
        else:
            extra[key] = value
    for old, new in _DEPRECATED.items():
        if old in attributes and new not in attributes:
            out[_DIRECT[new]] = attributes[old]
    for key, name in _DIRECT.items():
        if key in attributes:
            out[name] = attributes[key]
    ttft = attributes.get(GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK)
    if isinstance(ttft, (int, float)) and not isinstance(ttft, bool):
        out["ttft_ms"] = ttft * 1000
    reasons = attributes.get(GEN_AI_RESPONSE_FINISH_REASONS)
    if isinstance(reasons, (list, tuple)) and reasons:
        out["finish_reason"] = str(reasons[0])
    elif isinstance(reasons, str):
        out["finish_reason"] = reasons
    for key in _SERVICE_TIER_KEYS:  # the tier that served the call, as the instrumentation saw it
        if "service_tier" not in out and isinstance(attributes.get(key), str):
            out["service_tier"] = normalize_service_tier(attributes[key])
    error_type = attributes.get(ERROR_TYPE)
    if error_type:
        out["error_type"] = str(error_type)
        out.setdefault("status", str(status_from_error_type(str(error_type))))
    elif error:
        out.setdefault("status", str(CallStatus.ERROR))
    if (error_type or error) and "output_tokens" not in out:
        out["output_tokens"] = 0  # a failed call produced no output; a successful one must report its count
    inp, read, write = (out.get(k, 0) for k in ("input_tokens", "cache_read_tokens", "cache_write_tokens"))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in (inp, read, write)) and read + write > inp:
        out["input_tokens"] = inp + read + write  # Anthropic-style input count: excludes the cache
    if start_time_ns is not None:
        out["ts"] = datetime.fromtimestamp(start_time_ns / 1e9, UTC)
        if end_time_ns is not None and end_time_ns >= start_time_ns:
            out["latency_ms"] = (end_time_ns - start_time_ns) / 1e6
    for name, value in (("trace_id", trace_id), ("span_id", span_id), ("parent_span_id", parent_span_id)):
        if value:
            width = 32 if name == "trace_id" else 16
            out[name] = f"{value:0{width}x}" if isinstance(value, int) else str(value).lower()
    attrs = dict(out.get("attributes") or {})
    for key, value in extra.items():
        if len(attrs) >= MAX_ATTRIBUTES:
            break
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        if isinstance(value, str):
            value = value[:MAX_ATTRIBUTE_VALUE]
        if isinstance(value, (str, int, float, bool)) and len(key) <= MAX_ATTRIBUTE_KEY:
            attrs[key] = value
    if attrs:
        out["attributes"] = attrs
    return out


def event_from_span(span: Any, **defaults: Any) -> LLMCall:
    """An ``LLMCall`` from a finished OpenTelemetry SDK span (``ReadableSpan``), duck-typed.

    Raises ``InvalidEvent`` (from ``parse_event``) if the span lacks what an event needs,
    e.g. no ``tenant_id`` in ``flyball.tenant_id`` or ``defaults``."""
    from .events import parse_event

    context = getattr(span, "context", None)
    parent = getattr(span, "parent", None)
    status = getattr(span, "status", None)
    status_code = getattr(getattr(status, "status_code", None), "name", "")
    data = from_otel(
        dict(getattr(span, "attributes", None) or {}),
        start_time_ns=getattr(span, "start_time", None), end_time_ns=getattr(span, "end_time", None),
        trace_id=getattr(context, "trace_id", None), span_id=getattr(context, "span_id", None),
        parent_span_id=getattr(parent, "span_id", None), error=status_code == "ERROR", **defaults,
    )
    event = parse_event(data)
    assert isinstance(event, LLMCall)
    return event
