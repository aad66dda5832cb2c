"""The OpenTelemetry GenAI mapping (``flyball.schemas.otel``): a span from an instrumented
app becomes an ``llm_call`` event, and an event becomes span attributes, both ways."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as semconv
from opentelemetry.trace import Status, StatusCode

from flyball.schemas import InvalidEvent, LLMCall, parse_event
from flyball.schemas import otel

EVENT_ID = "0b6c3f7e-2f1a-4f61-9d8e-6a2b9c1d0f11"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
START_NS = int(NOW.timestamp() * 1e9)


@pytest.mark.parametrize("name", [
    "GEN_AI_PROVIDER_NAME",
    "GEN_AI_OPERATION_NAME",
    "GEN_AI_REQUEST_MODEL",
    "GEN_AI_RESPONSE_MODEL",
    "GEN_AI_USAGE_INPUT_TOKENS",
    "GEN_AI_USAGE_OUTPUT_TOKENS",
    "GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS",
    "GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS",
    "GEN_AI_USAGE_REASONING_OUTPUT_TOKENS",
    "GEN_AI_REQUEST_STREAM",
    "GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK",
    "GEN_AI_RESPONSE_FINISH_REASONS",
    "GEN_AI_SYSTEM",
])
def test_attribute_names_are_the_semantic_conventions_names(name: str) -> None:
    assert getattr(otel, name) == getattr(semconv, name)


def openai_span_attributes(**overrides: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300, "gen_ai.usage.cache_read.input_tokens": 1000,
        "gen_ai.usage.reasoning.output_tokens": 100, "gen_ai.request.stream": True,
        "gen_ai.response.time_to_first_chunk": 0.25, "gen_ai.response.finish_reasons": ("stop",),
        "server.address": "api.openai.com", "gen_ai.request.temperature": 0.2,
    }
    attrs.update(overrides)
    return attrs


def test_a_real_sdk_span_converts_to_an_llm_call_event() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("handle request") as parent:
        span = tracer.start_span("chat gpt-4o", attributes=openai_span_attributes(), start_time=START_NS)
        span.end(end_time=START_NS + 850_000_000)
    [finished, _] = exporter.get_finished_spans()
    event = otel.event_from_span(finished, tenant_id="acme", event_id=EVENT_ID, service="checkout")
    ctx = finished.context
    assert (event.provider, event.model, event.response_model, event.operation) == (
        "openai", "gpt-4o", "gpt-4o-2024-08-06", "chat")
    assert (event.input_tokens, event.output_tokens, event.cache_read_tokens, event.reasoning_tokens) == (
        1200, 300, 1000, 100)
    assert (event.ts, event.latency_ms, event.ttft_ms, event.stream, event.finish_reason) == (
        NOW, 850.0, 250.0, True, "stop")
    assert event.trace_id == f"{ctx.trace_id:032x}" and event.span_id == f"{ctx.span_id:016x}"
    assert event.parent_span_id == f"{parent.get_span_context().span_id:016x}"
    assert event.attributes == {"server.address": "api.openai.com", "gen_ai.request.temperature": 0.2}
    assert event.status == "ok"


def test_an_error_span_maps_its_error_type_to_a_status() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span = provider.get_tracer("app").start_span("chat", attributes=openai_span_attributes(**{
        "error.type": "RateLimitError", "flyball.tenant_id": "acme"}), start_time=START_NS)
    span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=START_NS + 300_000_000)
    event = otel.event_from_span(exporter.get_finished_spans()[0], event_id=EVENT_ID)
    assert (event.status, event.error_type, event.tenant_id) == ("rate_limited", "RateLimitError", "acme")


@pytest.mark.parametrize(("error_type", "status"), [
    ("timeout", "timeout"), ("APITimeoutError", "timeout"), ("504", "timeout"), ("429", "rate_limited"),
    ("RateLimitError", "rate_limited"), ("ContentFilterError", "filtered"), ("CancelledError", "cancelled"),
    ("500", "error"), ("ValueError", "error"), ("", "ok"),
])
def test_status_from_error_type(error_type: str, status: str) -> None:
    assert otel.status_from_error_type(error_type) == status


def test_deprecated_names_are_read_and_current_names_win() -> None:
    data = otel.from_otel({"gen_ai.system": "anthropic", "gen_ai.request.model": "claude",
                           "gen_ai.usage.prompt_tokens": 10, "gen_ai.usage.completion_tokens": 5,
                           "gen_ai.usage.output_tokens": 7}, tenant_id="acme", event_id=EVENT_ID, ts=NOW)
    event = parse_event(data)
    assert isinstance(event, LLMCall)
    assert (event.provider, event.input_tokens, event.output_tokens) == ("anthropic", 10, 7)


def test_anthropic_style_input_count_without_cache_is_corrected() -> None:
    data = otel.from_otel({"gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude",
                           "gen_ai.usage.input_tokens": 20, "gen_ai.usage.cache_read.input_tokens": 1000,
                           "gen_ai.usage.cache_creation.input_tokens": 200}, tenant_id="acme", event_id=EVENT_ID, ts=NOW)
    assert data["input_tokens"] == 1220


def test_a_span_without_a_tenant_is_rejected_naming_the_field() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.get_tracer("app").start_span("chat", attributes=openai_span_attributes()).end()
    with pytest.raises(InvalidEvent, match="tenant_id"):
        otel.event_from_span(exporter.get_finished_spans()[0], event_id=EVENT_ID)


def test_an_event_round_trips_through_span_attributes() -> None:
    event = parse_event({
        "schema_version": 1, "event_type": "llm_call", "event_id": EVENT_ID, "ts": NOW.isoformat(), "tenant_id": "acme",
        "feature": "bot", "service": "checkout", "provider": "anthropic", "model": "claude-sonnet",
        "response_model": "claude-sonnet-20250101", "route": "primary", "fallback_position": 1,
        "prompt_id": "answer", "prompt_version": "v3", "input_tokens": 1500, "output_tokens": 200,
        "cache_read_tokens": 1000, "cache_write_tokens": 300, "reasoning_tokens": 50, "latency_ms": 900.0,
        "ttft_ms": 150.0, "stream": True, "status": "timeout", "error_type": "APITimeoutError", "retries": 2,
        "cache_hit": False, "user_id_hash": "ab" * 32, "finish_reason": "max_tokens",
        "attributes": {"plan": "pro"},
    })
    assert isinstance(event, LLMCall)
    attrs = otel.to_otel(event)
    assert attrs["gen_ai.provider.name"] == "anthropic" and attrs["gen_ai.usage.input_tokens"] == 1500
    assert attrs["gen_ai.response.time_to_first_chunk"] == 0.15 and attrs["error.type"] == "APITimeoutError"
    assert attrs["flyball.tenant_id"] == "acme" and attrs["flyball.route"] == "primary"
    back = parse_event(otel.from_otel(attrs, ts=event.ts, latency_ms=event.latency_ms))
    assert back == event
