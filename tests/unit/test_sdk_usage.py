"""Usage, served tier, finish reason and error status read from the provider SDKs' own
response and error types (``openai``, ``anthropic``, ``google-genai``; test-only extras), and
from a real OpenTelemetry SDK span; priced against hand computations from published rates."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from anthropic.types import CacheCreation, Message, OutputTokensDetails, TextBlock
from anthropic.types import Usage as AnthropicUsage
from flyball.producers import service_tier_of, status_of, usage_of
from flyball.producers.adapters import finish_reason_of
from flyball.schemas import parse_event
from flyball.schemas.otel import event_from_span
from flyball.stream_processors.pricing import PriceBook, Usage, load_catalog, price
from google.genai import errors as genai_errors
from google.genai import types as gtypes
from openai.types.chat import ChatCompletion, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.completion_usage import CompletionTokensDetails, CompletionUsage, PromptTokensDetails
from openai.types.responses import Response

D = Decimal
NOW = datetime(2026, 6, 1, tzinfo=UTC)
LITELLM = Path(__file__).parent.parent / "data" / "litellm_subset.json"


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return load_catalog(LITELLM.read_bytes())


def as_usage(provider: str, model: str, response: object) -> Usage:
    u = usage_of(response)
    assert u is not None
    return Usage(provider, model, NOW, u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens,
                 u.reasoning_tokens, u.cache_write_1h_tokens, u.service_tier, u.cache_write_12h_tokens)


@pytest.mark.parametrize(("served", "rates"), [
    # gpt-5: flex $0.625 / $5 per 1M, cached $0.0625; batch is not a served tier on chat completions
    ("flex", (D("0.625e-6"), D("5e-6"), D("0.0625e-6"))),
    ("priority", (D("2.5e-6"), D("20e-6"), D("0.25e-6"))),
    ("default", (D("1.25e-6"), D("10e-6"), D("0.125e-6"))),
])
def test_chat_completion_service_tier_is_the_tier_billed(book: PriceBook, served: str,
                                                         rates: tuple[Decimal, Decimal, Decimal]) -> None:
    response = ChatCompletion(
        id="c", object="chat.completion", created=0, model="gpt-5-2025-08-07", service_tier=served,  # type: ignore[arg-type]
        choices=[Choice(index=0, finish_reason="length", message=ChatCompletionMessage(role="assistant", content="x"))],
        usage=CompletionUsage(prompt_tokens=3_000, completion_tokens=700, total_tokens=3_700,
                              prompt_tokens_details=PromptTokensDetails(cached_tokens=1_000, audio_tokens=40),
                              completion_tokens_details=CompletionTokensDetails(reasoning_tokens=500)))
    usage = usage_of(response)
    assert usage is not None and usage.extra == {"usage.prompt_tokens_details.audio_tokens": 40}
    assert finish_reason_of(response) == "length"
    assert service_tier_of(response) == ("" if served == "default" else served)
    inp, out, cached = rates
    assert price(as_usage("openai", "gpt-5", response), book).cost == 2_000 * inp + 1_000 * cached + 700 * out


def test_responses_service_tier_and_cache_write_details(book: PriceBook) -> None:
    response = Response.model_validate({
        "id": "r", "object": "response", "created_at": 0, "model": "gpt-5.6", "output": [], "status": "completed",
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "service_tier": "priority",
        "usage": {"input_tokens": 300_000, "output_tokens": 2_000, "total_tokens": 302_000,
                  "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 10_000,
                                           "cache_write_tokens_details": {"ttl_30m_tokens": 0,
                                                                          "ttl_12h_tokens": 10_000}},
                  "output_tokens_details": {"reasoning_tokens": 0}}})
    u = as_usage("openai", "gpt-5.6", response)
    assert (u.service_tier, u.cache_write_tokens, u.cache_write_12h_tokens) == ("priority", 10_000, 10_000)
    # gpt-5.6 priority above 272k input tokens: input $16 / 1M, output $60, 12-hour write $40
    assert price(u, book).cost == 290_000 * D("16e-6") + 10_000 * D("40e-6") + 2_000 * D("60e-6")


def test_anthropic_message_batch_tier_thinking_and_one_hour_writes(book: PriceBook) -> None:
    message = Message(
        id="m", type="message", role="assistant", content=[TextBlock(type="text", text="x")],
        model="claude-sonnet-4-6", stop_reason="max_tokens", stop_sequence=None,
        usage=AnthropicUsage(input_tokens=1_000, output_tokens=800, cache_read_input_tokens=4_000,
                             cache_creation_input_tokens=3_000, service_tier="batch", speed="fast",
                             inference_geo="us",
                             cache_creation=CacheCreation(ephemeral_1h_input_tokens=1_000,
                                                          ephemeral_5m_input_tokens=2_000),
                             output_tokens_details=OutputTokensDetails(thinking_tokens=300)))
    kept = usage_of(message)
    assert kept is not None and kept.extra == {"usage.speed": "fast", "usage.inference_geo": "us"}
    u = as_usage("anthropic", "claude-sonnet-4-6", message)
    assert (u.input_tokens, u.cache_write_1h_tokens, u.reasoning_tokens, u.service_tier) == (8_000, 1_000, 300, "batch")
    assert finish_reason_of(message) == "max_tokens"
    # claude-sonnet-4-6 batch: input $1.50 / 1M, output $7.50, read $0.15, 5-min write $1.875; LiteLLM lists no
    # batch 1-hour rate, so it is the 1-hour rate scaled like the batch input: $6 * 0.5 = $3
    expected = (1_000 * D("1.5e-6") + 4_000 * D("0.15e-6") + 2_000 * D("1.875e-6") + 1_000 * D("3e-6")
                + 800 * D("7.5e-6"))
    assert price(u, book).cost == expected


def test_gemini_finish_reason_tool_use_prompt_tokens_and_exact_provider(book: PriceBook) -> None:
    response = gtypes.GenerateContentResponse(
        candidates=[gtypes.Candidate(content=gtypes.Content(role="model", parts=[gtypes.Part(text="x")]),
                                     finish_reason=gtypes.FinishReason.MAX_TOKENS)],
        model_version="gemini-2.5-pro",
        usage_metadata=gtypes.GenerateContentResponseUsageMetadata(
            prompt_token_count=1_000, tool_use_prompt_token_count=500, candidates_token_count=100,
            thoughts_token_count=50, traffic_type=gtypes.TrafficType.ON_DEMAND_FLEX))
    u = as_usage("gemini", "gemini-2.5-pro", response)
    assert (u.input_tokens, u.output_tokens, u.reasoning_tokens, u.service_tier) == (1_500, 150, 50, "flex")
    assert finish_reason_of(response) == "MAX_TOKENS"
    priced = price(u, book)
    # Gemini API flex: input $0.625 / 1M, output $5
    assert priced.price_version.startswith("gcp.gemini/") and priced.cost == 1_500 * D("0.625e-6") + 150 * D("5e-6")
    vertex = price(Usage("vertex_ai", "gemini-2.5-pro", NOW, 1_000, 0), book)
    assert vertex.price_version.startswith("gcp.vertex_ai/")


@pytest.mark.parametrize(("error", "status"), [
    (genai_errors.ClientError(429, {"error": {"code": 429, "message": "q", "status": "RESOURCE_EXHAUSTED"}}),
     "rate_limited"),
    (genai_errors.ServerError(504, {"error": {"code": 504, "message": "t", "status": "DEADLINE_EXCEEDED"}}),
     "timeout"),
    (genai_errors.ServerError(503, {"error": {"code": 503, "message": "u", "status": "UNAVAILABLE"}}), "error"),
])
def test_google_genai_errors_carry_their_code_in_code(error: BaseException, status: str) -> None:
    assert status_of(error) == status


def test_unknown_usage_fields_are_kept_not_dropped() -> None:
    usage = usage_of({"usage": {"input_tokens": 10, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 0},
                                "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 12,
                                "server_tool_use": {"web_search_requests": 3}, "brand_new_tokens": 5}})
    assert usage is not None
    assert usage.extra == {"usage.server_tool_use.web_search_requests": 3, "usage.brand_new_tokens": 5}


def test_otel_span_service_tier_is_the_served_tier() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("chat gpt-5") as span:
        span.set_attributes({"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-5",
                             "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 0,
                             "openai.response.service_tier": "flex",
                             "flyball.tenant_id": "acme"})
    event = event_from_span(span, event_id="0b6c3f7e-2f1a-4f61-9d8e-6a2b9c1d0f11")
    assert event.service_tier == "flex" and "openai.response.service_tier" not in event.attributes
    assert parse_event(event.model_dump(mode="json")).service_tier == "flex"
