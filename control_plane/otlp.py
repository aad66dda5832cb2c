"""OTLP/HTTP trace ingest: GenAI spans in, flyball events out (no I/O here).

A request body (protobuf or JSON, optionally gzip) is decoded with ``opentelemetry-proto``;
every span that describes a model call (``gen_ai.operation.name`` of an inference operation,
or a span with ``gen_ai.request.model`` and no operation) becomes an ``llm_call`` through
:func:`flyball.schemas.otel.from_otel`, and every ``execute_tool`` span a ``tool_call``. Other
spans (HTTP, database, agent and workflow spans) are accepted and ignored, so an application
can send all its traces. A GenAI span that does not make a valid event is rejected: it goes to
the dead-letter topic with its reason and is counted in the OTLP partial-success answer.

Tenant and feature come from span attributes, then resource attributes, under the names in
:class:`OtlpOptions` (``flyball.tenant_id`` and ``flyball.feature`` by default). A key bound to
one tenant fills in a missing tenant and may not write another tenant's spans.

The ``event_id`` is a UUIDv5 of the trace and span ids, so an exporter's retry of the same
spans is deduplicated downstream like any repeated event. Message content (prompts,
completions, tool arguments and results) is dropped before mapping: events carry counts,
never text.
"""

from __future__ import annotations

import base64
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from flyball.schemas import InvalidEvent, parse_event, to_wire
from flyball.schemas.otel import ERROR_TYPE, GEN_AI_OPERATION_NAME, GEN_AI_REQUEST_MODEL, from_otel

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
# the namespace of span-derived event ids: uuid5(OTLP_NAMESPACE, "<trace id hex>/<span id hex>")
OTLP_NAMESPACE: Final = uuid.UUID("5f0c7a52-6b1e-4d43-9a55-0e8f3c1d7b21")
LLM_OPERATIONS: Final = frozenset({"chat", "text_completion", "generate_content", "embeddings", "completion"})
TOOL_OPERATION: Final = "execute_tool"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
SERVICE_NAME: Final = "service.name"
ENVIRONMENT_NAMES: Final = ("deployment.environment.name", "deployment.environment")
# attributes that carry message content; never stored, never dead-lettered
_CONTENT_KEYS: Final = frozenset({
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.prompt",
    "gen_ai.completion", "gen_ai.tool.call.arguments", "gen_ai.tool.call.result", "gen_ai.tool.definitions",
    "gen_ai.retrieval.documents", "gen_ai.retrieval.query.text", "llm.prompts", "llm.completions",
    "traceloop.entity.input", "traceloop.entity.output", "input.value", "output.value",
})
_CONTENT_PREFIXES: Final = ("gen_ai.prompt.", "gen_ai.completion.", "llm.input_messages.", "llm.output_messages.")
_KEPT_UNDER_CONTENT_PREFIX: Final = frozenset({"gen_ai.prompt.name", "gen_ai.prompt.version"})
MAX_REASONS: Final = 5  # distinct reasons quoted in the partial-success message


class OtlpRequestError(ValueError):
    """A request that cannot be decoded at all; ``status`` is the HTTP answer (400, 413, 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class OtlpOptions:
    tenant_attributes: tuple[str, ...] = ("flyball.tenant_id",)
    feature_attributes: tuple[str, ...] = ("flyball.feature",)
    max_body_bytes: int = 8 * 1024 * 1024  # compressed and decompressed


@dataclass(slots=True)
class Mapped:
    """What one request becomes: events keyed by tenant, dead letters, and counts."""

    events: list[tuple[bytes, bytes]] = field(default_factory=list)  # (tenant key, event JSON)
    dead: list[bytes] = field(default_factory=list)  # DLQ records (JSON)
    reasons: list[str] = field(default_factory=list)
    ignored: int = 0

    @property
    def rejected(self) -> int:
        return len(self.dead)


# ------------------------------------------------------------------ decoding
def media_type(content_type: str | None) -> str:
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind in (PROTOBUF, "application/protobuf"):
        return PROTOBUF
    if kind == JSON:
        return JSON
    raise OtlpRequestError(415, f"Content-Type: {content_type or 'missing'!s} is not supported "
                                f"(send {PROTOBUF} or {JSON})")


def decompress(body: bytes, content_encoding: str | None, *, max_bytes: int) -> bytes:
    """The request body without its ``Content-Encoding`` (identity or gzip), at most ``max_bytes``."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise OtlpRequestError(415, f"Content-Encoding: {encoding!r} is not supported (send gzip or none)")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise OtlpRequestError(400, f"body: not valid gzip ({exc})") from None
    if len(out) > max_bytes:
        raise OtlpRequestError(413, f"body: more than {max_bytes} bytes once decompressed")
    if not inflater.eof:
        raise OtlpRequestError(400, "body: truncated gzip stream")
    return out


def decode_request(body: bytes, kind: str) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    if kind == PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise OtlpRequestError(400, f"body: not a valid ExportTraceServiceRequest ({exc})") from None
        return request
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OtlpRequestError(400, f"body: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise OtlpRequestError(400, "body: a JSON object (ExportTraceServiceRequest) is expected")
    try:
        json_format.ParseDict(_ids_to_base64(data), request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise OtlpRequestError(400, f"body: not a valid ExportTraceServiceRequest ({exc})") from None
    return request


_ID_FIELDS: Final = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _ids_to_base64(data: dict[str, Any]) -> dict[str, Any]:
    """OTLP/JSON writes trace and span ids as hex, where proto3 JSON expects base64."""
    for rs in _dicts(data.get("resourceSpans", data.get("resource_spans"))):
        for ss in _dicts(rs.get("scopeSpans", rs.get("scope_spans"))):
            for span in _dicts(ss.get("spans")):
                _fix_ids(span)
                for link in _dicts(span.get("links")):
                    _fix_ids(link)
    return data


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        yield from (v for v in value if isinstance(v, dict))


def _fix_ids(obj: dict[str, Any]) -> None:
    for name in _ID_FIELDS:
        value = obj.get(name)
        if isinstance(value, str) and value:
            try:
                obj[name] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                raise OtlpRequestError(400, f"body: {name} {value[:40]!r} is not hex") from None


def encode_response(mapped: Mapped, kind: str) -> bytes:
    response = ExportTraceServiceResponse()
    if mapped.rejected:
        response.partial_success.rejected_spans = mapped.rejected
        response.partial_success.error_message = "; ".join(mapped.reasons[:MAX_REASONS])
    if kind == PROTOBUF:
        encoded: bytes = response.SerializeToString()  # protobuf has no type information here
        return encoded
    return orjson.dumps(json_format.MessageToDict(response))


# ------------------------------------------------------------------ mapping
def value_of(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attributes_of(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in kvs}


def is_content(key: str) -> bool:
    if key in _CONTENT_KEYS:
        return True
    return key.startswith(_CONTENT_PREFIXES) and key not in _KEPT_UNDER_CONTENT_PREFIX


def kind_of(attrs: Mapping[str, Any]) -> str | None:
    """``llm_call``, ``tool_call``, or None for a span flyball does not map."""
    operation = attrs.get(GEN_AI_OPERATION_NAME)
    if operation is None:
        return "llm_call" if GEN_AI_REQUEST_MODEL in attrs else None
    operation = str(operation)
    if operation in LLM_OPERATIONS:
        return "llm_call"
    if operation == TOOL_OPERATION and GEN_AI_TOOL_NAME in attrs:
        return "tool_call"
    return None


def _first(names: tuple[str, ...], *sources: Mapping[str, Any]) -> Any:
    for source in sources:
        for name in names:
            value = source.get(name)
            if value not in (None, ""):
                return value
    return None


def event_id_of(span: Span) -> str:
    if span.trace_id and span.span_id:
        return str(uuid.uuid5(OTLP_NAMESPACE, f"{span.trace_id.hex()}/{span.span_id.hex()}"))
    return str(uuid.uuid5(OTLP_NAMESPACE, span.SerializeToString(deterministic=True).hex()))


def map_request(request: ExportTraceServiceRequest, options: OtlpOptions, *, now: datetime,
                bound_tenant: str | None = None) -> Mapped:
    """Every span of a request through :func:`map_span`."""
    out = Mapped()
    for rs in request.resource_spans:
        resource = attributes_of(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                map_span(span, resource, options, out, now=now, bound_tenant=bound_tenant)
    return out


def map_span(span: Span, resource: Mapping[str, Any], options: OtlpOptions, out: Mapped, *, now: datetime,
             bound_tenant: str | None = None) -> None:
    kept = {k: v for k, v in attributes_of(span.attributes).items() if not is_content(k)}
    if isinstance(kept.get(ERROR_TYPE), str):
        kept[ERROR_TYPE] = _class_name(kept[ERROR_TYPE])
    kind = kind_of(kept)
    if kind is None:
        out.ignored += 1
        return
    attrs = dict(kept)
    tenant = _first(options.tenant_attributes, attrs, resource)
    feature = _first(options.feature_attributes, attrs, resource)
    for name in (*options.tenant_attributes, *options.feature_attributes, "flyball.tenant_id", "flyball.feature"):
        attrs.pop(name, None)
    reason = None
    if bound_tenant is not None:
        if tenant is None:
            tenant = bound_tenant
        elif str(tenant) != bound_tenant:
            reason = f"{options.tenant_attributes[0]}: this key is bound to a different tenant"
    defaults: dict[str, Any] = {"event_id": event_id_of(span)}
    if tenant is not None:
        defaults["tenant_id"] = str(tenant)
    if feature is not None:
        defaults["feature"] = str(feature)
    service = resource.get(SERVICE_NAME)
    if isinstance(service, str) and service:
        defaults["service"] = service
    environment = _first(ENVIRONMENT_NAMES, resource)
    if isinstance(environment, str):
        defaults["environment"] = environment
    error = span.status.code == Status.STATUS_CODE_ERROR
    data = from_otel(attrs, start_time_ns=span.start_time_unix_nano or None,
                     end_time_ns=span.end_time_unix_nano or None,
                     trace_id=span.trace_id.hex() or None, span_id=span.span_id.hex() or None,
                     parent_span_id=span.parent_span_id.hex() or None, error=error, **defaults)
    if kind == "tool_call":
        data = _tool_call(data, attrs)
    if reason is None:
        if tenant is None:
            reason = (f"tenant_id: missing (set span or resource attribute "
                      f"{' or '.join(options.tenant_attributes)})")
        else:
            try:
                event = parse_event(data, now=now)
            except InvalidEvent as exc:
                reason = exc.reason
            else:
                out.events.append((event.tenant_id.encode(), orjson.dumps(to_wire(event))))
                return
    out.reasons.append(f"span {span.span_id.hex() or '?'}: {reason}")
    out.dead.append(orjson.dumps({"reason": reason, "original": span_json(span, kept, resource),
                                  "dead_lettered_at": now.isoformat(), "source": "otlp"}))


def _class_name(error_type: str) -> str:
    """``<class 'openai.RateLimitError'>`` (str of a class, as some instrumentations write) -> its name."""
    if error_type.startswith("<class '") and error_type.endswith("'>"):
        return error_type[8:-2]
    return error_type


def _tool_call(data: dict[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("schema_version", "event_id", "ts", "tenant_id", "feature", "service", "environment", "trace_id", "span_id",
            "parent_span_id", "latency_ms", "status", "error_type", "attributes")
    out = {k: data[k] for k in keep if k in data}
    out["event_type"] = "tool_call"
    out["tool_name"] = attrs[GEN_AI_TOOL_NAME]
    if ERROR_TYPE in attrs:
        out["error_type"] = str(attrs[ERROR_TYPE])
    attributes = {k: v for k, v in dict(out.get("attributes") or {}).items() if k != GEN_AI_TOOL_NAME}
    if attributes:
        out["attributes"] = attributes
    else:
        out.pop("attributes", None)
    return out


def span_json(span: Span, attrs: Mapping[str, Any], resource: Mapping[str, Any]) -> dict[str, Any]:
    """The span as a dead letter keeps it: ids in hex, content attributes already dropped."""
    return {"name": span.name, "traceId": span.trace_id.hex(), "spanId": span.span_id.hex(),
            "parentSpanId": span.parent_span_id.hex(), "startTimeUnixNano": str(span.start_time_unix_nano),
            "endTimeUnixNano": str(span.end_time_unix_nano), "status": {"code": int(span.status.code)},
            "attributes": {k: v for k, v in attrs.items() if isinstance(v, (str, int, float, bool, list))},
            "resource": {k: v for k, v in resource.items() if not is_content(k)}}
