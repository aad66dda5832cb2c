"""OTLP request decoding and span mapping (``control_plane/otlp.py``): pure, no broker."""

from __future__ import annotations

import gzip
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from flyball.control_plane.otlp import (
    JSON,
    PROTOBUF,
    OtlpOptions,
    OtlpRequestError,
    decode_request,
    decompress,
    encode_response,
    map_request,
    media_type,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

NOW = datetime(2026, 1, 1, 12, 5, tzinfo=UTC)
TRACE, SPAN = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"


def _value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, list):
        return {"arrayValue": {"values": [_value(x) for x in v]}}
    return {"stringValue": v}


def body(attrs: dict[str, Any], resource: dict[str, Any] | None = None, *, span_id: str = SPAN,
         status: int = 0) -> bytes:
    return orjson.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": k, "value": _value(v)} for k, v in (resource or {}).items()]},
        "scopeSpans": [{"spans": [{
            "traceId": TRACE, "spanId": span_id, "name": "chat", "startTimeUnixNano": "1767268800000000000",
            "endTimeUnixNano": "1767268801500000000", "status": {"code": status},
            "attributes": [{"key": k, "value": _value(v)} for k, v in attrs.items()]}]}]}]})


CHAT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude",
        "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 10}


def mapped(attrs: dict[str, Any], resource: dict[str, Any] | None = None, options: OtlpOptions | None = None,
           **kw: Any) -> Any:
    return map_request(decode_request(body(attrs, resource), JSON), options or OtlpOptions(), now=NOW, **kw)


def test_json_hex_ids_and_protobuf_decode_to_the_same_request() -> None:
    request = decode_request(body(CHAT), JSON)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id.hex() == TRACE and span.span_id.hex() == SPAN
    assert decode_request(request.SerializeToString(), PROTOBUF) == request


def test_a_chat_span_becomes_an_llm_call_with_a_stable_id_and_tenant_key() -> None:
    out = mapped({**CHAT, "gen_ai.usage.cache_read.input_tokens": 150, "gen_ai.usage.cache_write.input_tokens": 20,
                  "gen_ai.prompt.version": "v7", "gen_ai.prompt.0.content": "secret", "gen_ai.prompt.name": "p"},
                 {"flyball.tenant_id": "acme", "service.name": "svc", "deployment.environment": "dev"})
    assert out.rejected == 0 and out.ignored == 0
    (key, value), = out.events
    event = orjson.loads(value)
    assert key == b"acme"
    assert event["event_id"] == str(uuid.uuid5(uuid.UUID("5f0c7a52-6b1e-4d43-9a55-0e8f3c1d7b21"), f"{TRACE}/{SPAN}"))
    assert (event["service"], event["environment"], event["latency_ms"]) == ("svc", "dev", 1500.0)
    # Anthropic-style input count (excludes the cache) is corrected as the mapping documents
    assert (event["input_tokens"], event["cache_read_tokens"], event["cache_write_tokens"]) == (270, 150, 20)
    assert (event["prompt_id"], event["prompt_version"]) == ("p", "v7")
    assert "secret" not in value.decode()
    again = mapped({**CHAT, "gen_ai.usage.cache_read.input_tokens": 150, "gen_ai.usage.cache_write.input_tokens": 20,
                    "gen_ai.prompt.version": "v7", "gen_ai.prompt.name": "p"},
                   {"flyball.tenant_id": "acme", "service.name": "svc", "deployment.environment": "dev"})
    assert again.events == out.events  # an exporter's retry yields the same event (and event_id)


def test_span_attributes_win_over_resource_and_names_are_configurable() -> None:
    options = OtlpOptions(tenant_attributes=("app.tenant",), feature_attributes=("app.feature", "flyball.feature"))
    out = mapped({**CHAT, "app.tenant": "span-t", "flyball.feature": "f2"}, {"app.tenant": "res-t",
                                                                             "app.feature": "f1"}, options)
    event = orjson.loads(out.events[0][1])
    assert (event["tenant_id"], event["feature"]) == ("span-t", "f2")  # any span name before the resource
    assert "app.tenant" not in event["attributes"]


def test_invalid_and_foreign_spans() -> None:
    out = mapped({**CHAT, "gen_ai.usage.output_tokens": -1}, {"flyball.tenant_id": "acme"})
    assert out.rejected == 1 and out.events == []
    record = orjson.loads(out.dead[0])
    assert record["reason"].startswith("output_tokens") and record["original"]["spanId"] == SPAN
    assert out.reasons[0].startswith(f"span {SPAN}: output_tokens")
    no_tenant = mapped(CHAT)
    assert no_tenant.rejected == 1 and "flyball.tenant_id" in no_tenant.reasons[0]
    other = mapped(CHAT, {"flyball.tenant_id": "globex"}, bound_tenant="acme")
    assert other.rejected == 1 and "different tenant" in other.reasons[0]
    bound = mapped(CHAT, bound_tenant="acme")
    assert bound.rejected == 0 and orjson.loads(bound.events[0][1])["tenant_id"] == "acme"
    for foreign in ({"http.request.method": "GET"}, {"gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "x"}):
        ignored = mapped(foreign, {"flyball.tenant_id": "acme"})
        assert (ignored.ignored, ignored.rejected, ignored.events) == (1, 0, [])


def test_error_status_and_tool_spans() -> None:
    out = map_request(decode_request(body({**CHAT, "error.type": "<class 'openai.APITimeoutError'>"},
                                          {"flyball.tenant_id": "a"}, status=2), JSON), OtlpOptions(), now=NOW)
    event = orjson.loads(out.events[0][1])
    assert (event["status"], event["error_type"]) == ("timeout", "openai.APITimeoutError")
    tool = mapped({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}, {"flyball.tenant_id": "a"})
    event = orjson.loads(tool.events[0][1])
    assert (event["event_type"], event["tool_name"], event["status"]) == ("tool_call", "search", "ok")


def test_partial_success_response_in_both_encodings() -> None:
    out = mapped({**CHAT, "gen_ai.usage.output_tokens": -1}, {"flyball.tenant_id": "acme"})
    answer = ExportTraceServiceResponse.FromString(encode_response(out, PROTOBUF))
    assert answer.partial_success.rejected_spans == 1 and "output_tokens" in answer.partial_success.error_message
    assert orjson.loads(encode_response(out, JSON))["partialSuccess"]["rejectedSpans"] == "1"
    assert encode_response(mapped(CHAT, {"flyball.tenant_id": "a"}), JSON) == b"{}"


def test_bodies_that_cannot_be_read_get_the_right_status() -> None:
    assert media_type("application/x-protobuf") == PROTOBUF and media_type("application/json; charset=utf-8") == JSON
    with pytest.raises(OtlpRequestError) as exc:
        media_type("text/plain")
    assert exc.value.status == 415
    assert decompress(gzip.compress(b"abc"), "gzip", max_bytes=3) == b"abc"
    for data, encoding, status in ((gzip.compress(b"a" * 4), "gzip", 413), (b"not gzip", "gzip", 400),
                                   (gzip.compress(b"abc")[:-6], "gzip", 400), (b"x", "br", 415)):
        with pytest.raises(OtlpRequestError) as exc:
            decompress(data, encoding, max_bytes=3)
        assert exc.value.status == status
    for raw, kind in ((b"[1]", JSON), (b"{bad", JSON), (b"\x0a\xff", PROTOBUF),
                      (orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}), JSON)):
        with pytest.raises(OtlpRequestError) as exc:
            decode_request(raw, kind)
        assert exc.value.status == 400 and exc.value.message.startswith("body:")
