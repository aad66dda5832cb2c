"""Money read right from real provider SDKs: the ``openai``, ``anthropic`` and ``google-genai``
clients, pointed at a fake provider on loopback that streams their real wire formats, run
through ``track_llm_call``; each event is priced with the built-in catalog and compared with a
hand computation from the published per-token rates written here."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
from anthropic.types import (
    CacheCreation,
    Message,
    MessageDeltaUsage,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    TextBlock,
    TextDelta,
)
from anthropic.types import Usage as AnthropicUsage
from anthropic.types.raw_message_delta_event import Delta
from flyball.control_plane.runtime import load_prices
from flyball.producers import Telemetry
from flyball.producers.transports import MemoryTransport
from flyball.schemas import EVENTS, LLMCall, parse_event
from flyball.stream_processors.pricing import PriceBook, Priced, price, usage_of
from google import genai
from google.genai import types as gtypes
from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta
from openai.types.completion_usage import CompletionTokensDetails, CompletionUsage, PromptTokensDetails
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseCreatedEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextDeltaEvent,
)
from openai.types.responses.response_usage import (
    InputTokensDetails,
    InputTokensDetailsCacheWriteTokensDetails,
    OutputTokensDetails,
    ResponseUsage,
)

from .fake_provider import FakeProvider, Script, sse

D = Decimal


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return load_prices(None)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider()
    yield provider
    provider.close()


@pytest.fixture
def tel() -> Iterator[Telemetry]:
    t = Telemetry("chat", transport=MemoryTransport(), follow_directives=False)
    yield t
    t.close(timeout=5)


def events(tel: Telemetry) -> list[LLMCall]:
    assert tel.flush(5)
    transport = tel._transport
    assert isinstance(transport, MemoryTransport)
    out = [parse_event(orjson.loads(v)) for _, v in transport.topics.get(EVENTS, [])]
    assert all(isinstance(e, LLMCall) for e in out)
    return out  # type: ignore[return-value]  # checked just above


def priced(event: LLMCall, book: PriceBook) -> Priced:
    return price(usage_of(event), book)


# ------------------------------------------------------------------ OpenAI Chat Completions


def chat_frames(*, tier: str, usage: bool) -> list[bytes]:
    def chunk(**kw: Any) -> ChatCompletionChunk:
        return ChatCompletionChunk(id="c1", object="chat.completion.chunk", created=0, model="gpt-5-2025-08-07",
                                   service_tier=tier, **kw)  # type: ignore[arg-type]

    frames = [sse(chunk(choices=[Choice(index=0, delta=ChoiceDelta(role="assistant", content=""))])),
              sse(chunk(choices=[Choice(index=0, delta=ChoiceDelta(content="Hel"))])),
              sse(chunk(choices=[Choice(index=0, delta=ChoiceDelta(content="lo"), finish_reason="stop")]))]
    if usage:
        frames.append(sse(chunk(choices=[], usage=CompletionUsage(
            prompt_tokens=12_000, completion_tokens=900, total_tokens=12_900,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=8_000, audio_tokens=0),
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=600, accepted_prediction_tokens=7)))))
    return [*frames, b"data: [DONE]\n\n"]


# gpt-5, OpenAI pricing: standard $1.25 / $10 per 1M, cached input $0.125; priority $2.50 / $20, cached $0.25
GPT5 = {"": (D("1.25e-6"), D("10e-6"), D("0.125e-6")), "priority": (D("2.5e-6"), D("20e-6"), D("0.25e-6"))}


@pytest.mark.parametrize("served", ["default", "priority"])
def test_openai_chat_stream_usage_from_the_final_chunk_priced_at_the_served_tier(
        fake: FakeProvider, tel: Telemetry, book: PriceBook, served: str) -> None:
    hold = threading.Event()
    script = fake.scripts["/v1/chat/completions"] = Script(frames=chat_frames(tier=served, usage=True),
                                                           hold_after_first=hold)
    client = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="k", max_retries=0)
    with tel.track_llm_call(tenant_id="acme", provider="openai", model="gpt-5") as call:
        stream = call.record(client.chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True}))
    chunks = []
    for chunk in stream:
        hold.set()  # the first chunk reached us while the server still held the rest: not buffered
        chunks.append(chunk)
    assert script.held_ok is True
    assert [type(c) for c in chunks] == [ChatCompletionChunk] * 4 and chunks[1].choices[0].delta.content == "Hel"
    [event] = events(tel)
    assert (event.status, event.stream, event.finish_reason, event.response_model) == (
        "ok", True, "stop", "gpt-5-2025-08-07")
    assert (event.input_tokens, event.cache_read_tokens, event.output_tokens, event.reasoning_tokens) == (
        12_000, 8_000, 900, 600)
    assert event.ttft_ms is not None and 0 < event.ttft_ms <= event.latency_ms
    assert event.attributes["usage.completion_tokens_details.accepted_prediction_tokens"] == 7
    tier = "" if served == "default" else served
    assert event.service_tier == tier
    inp, out, cached = GPT5[tier]
    assert priced(event, book).cost == 4_000 * inp + 8_000 * cached + 900 * out


def test_openai_chat_stream_without_include_usage_warns_once_and_still_emits(
        fake: FakeProvider, tel: Telemetry, caplog: pytest.LogCaptureFixture) -> None:
    fake.scripts["/v1/chat/completions"] = Script(frames=chat_frames(tier="default", usage=False))
    client = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="k", max_retries=0)
    with caplog.at_level(logging.WARNING, logger="flyball.producers"):
        for _ in range(2):
            with tel.track_llm_call(tenant_id="acme", provider="openai", model="gpt-5") as call:
                for _chunk in call.record(client.chat.completions.create(
                        model="gpt-5", messages=[{"role": "user", "content": "hi"}], stream=True)):
                    pass
    assert [r.getMessage().count("include_usage") for r in caplog.records] == [1]
    assert [(e.status, e.input_tokens, e.finish_reason) for e in events(tel)] == [("ok", 0, "stop")] * 2


def test_a_stream_closed_early_is_recorded_cancelled_once(fake: FakeProvider, tel: Telemetry) -> None:
    fake.scripts["/v1/chat/completions"] = Script(frames=chat_frames(tier="default", usage=True))
    client = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="k", max_retries=0)

    @tel.track_llm_call(tenant_id="acme", provider="openai", model="gpt-5")
    def ask() -> Any:
        return client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}],
                                              stream=True, stream_options={"include_usage": True})

    stream = ask()
    assert events(tel) == []  # nothing before the stream is consumed
    next(stream)
    next(stream)
    stream.close()
    stream.close()
    [event] = events(tel)
    assert (event.status, event.stream, event.input_tokens) == ("cancelled", True, 0)
    assert event.ttft_ms is not None


def test_a_stream_that_raises_midway_is_recorded_with_the_errors_status(fake: FakeProvider, tel: Telemetry) -> None:
    frames = chat_frames(tier="default", usage=True)
    fake.scripts["/v1/chat/completions"] = Script(frames=[frames[0], frames[1],
                                                          b'data: {"error": {"message": "overloaded"}}\n\n'])
    client = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="k", max_retries=0)
    seen = 0
    with pytest.raises(openai.APIError):
        with tel.track_llm_call(tenant_id="acme", provider="openai", model="gpt-5") as call:
            for _ in call.record(client.chat.completions.create(
                    model="gpt-5", messages=[{"role": "user", "content": "hi"}], stream=True)):
                seen += 1
    [event] = events(tel)
    assert seen == 2 and (event.status, event.error_type, event.stream) == ("error", "APIError", True)


# ------------------------------------------------------------------ OpenAI Responses


def responses_frames(*, tier: str, model: str = "gpt-5.6") -> list[bytes]:
    base = {"id": "r1", "object": "response", "created_at": 0, "model": model, "output": [],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
    usage = ResponseUsage(
        input_tokens=20_000, output_tokens=1_000, total_tokens=21_000,
        input_tokens_details=InputTokensDetails(
            cached_tokens=5_000, cache_write_tokens=6_000,
            cache_write_tokens_details=InputTokensDetailsCacheWriteTokensDetails(ttl_30m_tokens=4_000,
                                                                                 ttl_12h_tokens=2_000)),
        output_tokens_details=OutputTokensDetails(reasoning_tokens=400))
    message = ResponseOutputMessage(id="m", type="message", role="assistant", status="completed",
                                    content=[ResponseOutputText(type="output_text", text="Hi", annotations=[])])
    done = Response.model_validate({**base, "status": "completed", "service_tier": tier, "usage": usage,
                                    "output": [message]})
    return [sse(ResponseCreatedEvent(type="response.created", sequence_number=0,
                                     response=Response.model_validate({**base, "status": "in_progress"})),
                "response.created"),
            sse(ResponseOutputItemAddedEvent(type="response.output_item.added", sequence_number=1, output_index=0,
                                             item=ResponseOutputMessage(id="m", type="message", role="assistant",
                                                                        status="in_progress", content=[])),
                "response.output_item.added"),
            sse(ResponseContentPartAddedEvent(type="response.content_part.added", sequence_number=1, item_id="m",
                                              output_index=0, content_index=0,
                                              part=ResponseOutputText(type="output_text", text="", annotations=[])),
                "response.content_part.added"),
            sse(ResponseTextDeltaEvent(type="response.output_text.delta", sequence_number=1, item_id="m",
                                       output_index=0, content_index=0, delta="Hi", logprobs=[]),
                "response.output_text.delta"),
            sse(ResponseOutputItemDoneEvent(type="response.output_item.done", sequence_number=2, output_index=0,
                                            item=message), "response.output_item.done"),
            sse(ResponseCompletedEvent(type="response.completed", sequence_number=3, response=done),
                "response.completed")]


# gpt-5.6 (LiteLLM 1.110.2): flex input $2 / 1M, output $10, cached $0.20, 30-min write $2.50, 12-hour write $5
GPT56_FLEX = (D("2e-6"), D("10e-6"), D("0.2e-6"), D("2.5e-6"), D("5e-6"))


def test_openai_responses_stream_reads_the_completed_event_with_30_minute_and_12_hour_writes(
        fake: FakeProvider, tel: Telemetry, book: PriceBook) -> None:
    fake.scripts["/v1/responses"] = Script(frames=responses_frames(tier="flex"))
    client = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="k", max_retries=0)
    with tel.track_llm_call(tenant_id="acme", provider="openai", model="gpt-5.6") as call:
        for _ in call.record(client.responses.create(model="gpt-5.6", input="hi", stream=True, service_tier="flex")):
            pass
    [event] = events(tel)
    assert (event.input_tokens, event.cache_read_tokens, event.cache_write_tokens, event.cache_write_12h_tokens,
            event.output_tokens, event.reasoning_tokens, event.service_tier) == (
        20_000, 5_000, 6_000, 2_000, 1_000, 400, "flex")
    inp, out, cached, write_30m, write_12h = GPT56_FLEX
    expected = 9_000 * inp + 5_000 * cached + 4_000 * write_30m + 2_000 * write_12h + 1_000 * out
    assert priced(event, book).cost == expected == D("0.049")


def test_openai_responses_stream_helper_manager_is_tracked(fake: FakeProvider, tel: Telemetry, book: PriceBook) -> None:
    fake.scripts["/v1/responses"] = Script(frames=responses_frames(tier="flex"))
    client = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="k", max_retries=0)
    with tel.track_llm_call(tenant_id="acme", provider="openai", model="gpt-5.6") as call:
        with call.record(client.responses.stream(model="gpt-5.6", input="hi")) as stream:
            final = stream.get_final_response()
    assert final.usage is not None and final.usage.input_tokens == 20_000
    [event] = events(tel)
    assert event.status == "ok" and priced(event, book).cost == D("0.049")


# ------------------------------------------------------------------ Anthropic


def anthropic_frames(model: str, *, tier: str) -> list[bytes]:
    start = Message(id="m1", type="message", role="assistant", content=[], model=model, stop_reason=None,
                    stop_sequence=None, usage=AnthropicUsage(
                        input_tokens=2_000, output_tokens=1, cache_read_input_tokens=10_000,
                        cache_creation_input_tokens=6_000, service_tier=tier,  # type: ignore[arg-type]
                        cache_creation=CacheCreation(ephemeral_1h_input_tokens=4_000, ephemeral_5m_input_tokens=2_000)))
    return [
        sse(RawMessageStartEvent(type="message_start", message=start), "message_start"),
        sse(RawContentBlockStartEvent(type="content_block_start", index=0,
                                      content_block=TextBlock(type="text", text="")), "content_block_start"),
        b"event: ping\ndata: {\"type\": \"ping\"}\n\n",
        sse(RawContentBlockDeltaEvent(type="content_block_delta", index=0,
                                      delta=TextDelta(type="text_delta", text="Hi")), "content_block_delta"),
        sse(RawContentBlockStopEvent(type="content_block_stop", index=0), "content_block_stop"),
        sse(RawMessageDeltaEvent(type="message_delta", delta=Delta(stop_reason="end_turn", stop_sequence=None),
                                 usage=MessageDeltaUsage(output_tokens=500, input_tokens=2_000,
                                                         cache_read_input_tokens=10_000,
                                                         cache_creation_input_tokens=6_000)), "message_delta"),
        sse(RawMessageStopEvent(type="message_stop"), "message_stop"),
    ]


# claude-sonnet-4-6, Anthropic pricing: input $3 / 1M, output $15, cache read $0.30, 5-min write $3.75, 1-hour $6
SONNET46 = (D("3e-6"), D("15e-6"), D("0.3e-6"), D("3.75e-6"), D("6e-6"))


def test_anthropic_raw_stream_merges_message_start_and_delta_with_one_hour_writes(
        fake: FakeProvider, tel: Telemetry, book: PriceBook) -> None:
    fake.scripts["/v1/messages"] = Script(frames=anthropic_frames("claude-sonnet-4-6", tier="standard"))
    client = anthropic.Anthropic(base_url=fake.url, api_key="k", max_retries=0)
    with tel.track_llm_call(tenant_id="acme", provider="anthropic", model="claude-sonnet-4-6") as call:
        stream = call.record(client.messages.create(model="claude-sonnet-4-6", max_tokens=10, stream=True,
                                                    messages=[{"role": "user", "content": "hi"}]))
        kinds = [e.type for e in stream]
    assert kinds == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    [event] = events(tel)
    assert (event.input_tokens, event.cache_read_tokens, event.cache_write_tokens, event.cache_write_1h_tokens,
            event.output_tokens, event.finish_reason, event.service_tier) == (
        18_000, 10_000, 6_000, 4_000, 500, "end_turn", "")
    inp, out, read, write_5m, write_1h = SONNET46
    expected = 2_000 * inp + 10_000 * read + 2_000 * write_5m + 4_000 * write_1h + 500 * out
    assert priced(event, book).cost == expected == D("0.048")


def test_anthropic_message_stream_manager_and_its_text_stream(fake: FakeProvider, tel: Telemetry,
                                                             book: PriceBook) -> None:
    fake.scripts["/v1/messages"] = Script(frames=anthropic_frames("claude-opus-4-5", tier="standard"))
    client = anthropic.Anthropic(base_url=fake.url, api_key="k", max_retries=0)
    with tel.track_llm_call(tenant_id="acme", provider="anthropic", model="claude-opus-4-5") as call:
        with call.record(client.messages.stream(model="claude-opus-4-5", max_tokens=10,
                                                messages=[{"role": "user", "content": "hi"}])) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert text == "Hi" and final.usage.output_tokens == 500
    [event] = events(tel)
    # claude-opus-4-5: input $5 / 1M, output $25, read $0.50, 5-min write $6.25, 1-hour $10
    expected = 2_000 * D("5e-6") + 10_000 * D("0.5e-6") + 2_000 * D("6.25e-6") + 4_000 * D("10e-6") + 500 * D("25e-6")
    assert event.ttft_ms is not None and priced(event, book).cost == expected


def test_anthropic_priority_tier_without_a_catalog_rate_is_unpriced_and_says_so(
        fake: FakeProvider, tel: Telemetry, book: PriceBook) -> None:
    fake.scripts["/v1/messages"] = Script(frames=anthropic_frames("claude-sonnet-4-6", tier="priority"))
    client = anthropic.Anthropic(base_url=fake.url, api_key="k", max_retries=0)
    with tel.track_llm_call(tenant_id="acme", provider="anthropic", model="claude-sonnet-4-6") as call:
        for _ in call.record(client.messages.create(model="claude-sonnet-4-6", max_tokens=10, stream=True,
                                                    messages=[{"role": "user", "content": "hi"}])):
            pass
    [event] = events(tel)
    result = priced(event, book)
    assert event.service_tier == "priority"
    assert (result.cost, result.missing) == (None, "service tier priority: no rates")


async def test_anthropic_async_stream_in_an_async_decorated_function(fake: FakeProvider, tel: Telemetry,
                                                                     book: PriceBook) -> None:
    fake.scripts["/v1/messages"] = Script(frames=anthropic_frames("claude-sonnet-4-6", tier="standard"))
    client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="k", max_retries=0)

    @tel.track_llm_call(tenant_id="acme", provider="anthropic", model="claude-sonnet-4-6")
    async def ask() -> Any:
        return await client.messages.create(model="claude-sonnet-4-6", max_tokens=10, stream=True,
                                            messages=[{"role": "user", "content": "hi"}])

    stream = await ask()
    assert await asyncio.to_thread(events, tel) == []
    async for _ in stream:
        pass
    [event] = await asyncio.to_thread(events, tel)
    assert priced(event, book).cost == D("0.048")


# ------------------------------------------------------------------ Gemini


def gemini_frames() -> list[bytes]:
    def chunk(text: str, usage: gtypes.GenerateContentResponseUsageMetadata,
              finish: gtypes.FinishReason | None = None) -> gtypes.GenerateContentResponse:
        return gtypes.GenerateContentResponse(
            candidates=[gtypes.Candidate(content=gtypes.Content(role="model", parts=[gtypes.Part(text=text)]),
                                         finish_reason=finish)],
            model_version="gemini-2.5-pro", usage_metadata=usage)

    partial = gtypes.GenerateContentResponseUsageMetadata(prompt_token_count=300_000)
    final = gtypes.GenerateContentResponseUsageMetadata(
        prompt_token_count=300_000, cached_content_token_count=100_000, tool_use_prompt_token_count=2_000,
        candidates_token_count=3_000, thoughts_token_count=1_000, total_token_count=306_000)
    return [sse(chunk("Hel", partial)), sse(chunk("lo", final, gtypes.FinishReason.STOP))]


# gemini-2.5-pro on the Gemini API, priority above 200k input tokens: input $4.50 / 1M, output $27, cached $0.45
def test_gemini_stream_last_chunk_usage_with_tool_use_prompt_tokens_priority_above_200k(
        fake: FakeProvider, tel: Telemetry, book: PriceBook) -> None:
    fake.scripts["/v1beta/models/gemini-2.5-pro:streamGenerateContent"] = Script(frames=gemini_frames())
    client = genai.Client(api_key="k", http_options={"base_url": fake.url, "api_version": "v1beta"})
    with tel.track_llm_call(tenant_id="acme", provider="gemini", model="gemini-2.5-pro",
                            service_tier="priority") as call:
        text = "".join(c.text or "" for c in call.record(
            client.models.generate_content_stream(model="gemini-2.5-pro", contents="hi")))
    assert text == "Hello"
    [event] = events(tel)
    assert (event.input_tokens, event.cache_read_tokens, event.output_tokens, event.reasoning_tokens,
            event.finish_reason, event.response_model) == (302_000, 100_000, 4_000, 1_000, "STOP", "gemini-2.5-pro")
    result = priced(event, book)
    assert result.price_version.startswith("gcp.gemini/")  # the Gemini API's list, not Vertex AI's
    assert result.cost == 202_000 * D("4.5e-6") + 100_000 * D("0.45e-6") + 4_000 * D("27e-6") == D("1.062")


async def test_gemini_async_stream_closed_early_is_cancelled(fake: FakeProvider, tel: Telemetry) -> None:
    fake.scripts["/v1beta/models/gemini-2.5-pro:streamGenerateContent"] = Script(frames=gemini_frames())
    client = genai.Client(api_key="k", http_options={"base_url": fake.url, "api_version": "v1beta"})
    with tel.track_llm_call(tenant_id="acme", provider="gemini", model="gemini-2.5-pro") as call:
        stream = call.record(await client.aio.models.generate_content_stream(model="gemini-2.5-pro", contents="hi"))
    first = await stream.__anext__()
    assert first.text == "Hel"
    await stream.aclose()
    [event] = await asyncio.to_thread(events, tel)
    assert (event.status, event.stream, event.response_model) == ("cancelled", True, "gemini-2.5-pro")
    assert event.input_tokens == 300_000  # the usage the stream had reported so far


@pytest.mark.parametrize(("code", "status"), [(429, "rate_limited"), (504, "timeout"), (500, "error")])
def test_google_genai_errors_are_classified_by_their_code(fake: FakeProvider, tel: Telemetry, code: int,
                                                         status: str) -> None:
    fake.scripts["/v1beta/models/gemini-2.5-pro:generateContent"] = Script(
        status=code, body={"error": {"code": code, "message": "no", "status": "X"}})
    client = genai.Client(api_key="k", http_options={"base_url": fake.url, "api_version": "v1beta",
                                                     "retry_options": {"attempts": 1}})
    with pytest.raises(genai.errors.APIError):
        with tel.track_llm_call(tenant_id="acme", provider="gemini", model="gemini-2.5-pro") as call:
            call.record(client.models.generate_content(model="gemini-2.5-pro", contents="hi"))
    [event] = events(tel)
    assert (event.status, event.error_type) == (status, "ClientError" if code < 500 else "ServerError")


# ------------------------------------------------------------------ replay with a LiteLLM-format catalog

LITELLM_SUBSET = Path(__file__).parent.parent / "data" / "litellm_subset.json"


def test_replay_with_a_litellm_prices_file_gives_the_hand_computed_spend(fake: FakeProvider, tel: Telemetry,
                                                                        tmp_path: Path) -> None:
    from flyball.control_plane.cli import main

    fake.scripts["/v1/messages"] = Script(frames=anthropic_frames("claude-sonnet-4-6", tier="standard"))
    fake.scripts["/v1/responses"] = Script(frames=responses_frames(tier="flex"))
    with tel.track_llm_call(tenant_id="acme", provider="anthropic", model="claude-sonnet-4-6") as call:
        for _ in call.record(anthropic.Anthropic(base_url=fake.url, api_key="k").messages.create(
                model="claude-sonnet-4-6", max_tokens=10, stream=True, messages=[{"role": "user", "content": "x"}])):
            pass
    with tel.track_llm_call(tenant_id="acme", provider="openai", model="gpt-5.6") as call:
        for _ in call.record(openai.OpenAI(base_url=f"{fake.url}/v1", api_key="k").responses.create(
                model="gpt-5.6", input="hi", stream=True)):
            pass
    assert len(events(tel)) == 2
    recorded = tmp_path / "events.jsonl"
    recorded.write_bytes(b"\n".join(v for _, v in tel._transport.topics[EVENTS]) + b"\n")  # type: ignore[attr-defined]
    assert main(["replay", "--events", str(recorded), "--out", str(tmp_path / "out"),
                 "--prices", str(LITELLM_SUBSET)]) == 0
    rows = (tmp_path / "out" / "spend.csv").read_text().splitlines()
    header = rows[0].split(",")
    costs = {r.split(",")[header.index("model")]: D(r.split(",")[header.index("cost_usd")]) for r in rows[1:]}
    assert costs == {"claude-sonnet-4-6": D("0.048"), "gpt-5.6": D("0.049")}
    json.loads(LITELLM_SUBSET.read_text())  # the fixture is LiteLLM's own format, read by content
