"""The LiteLLM integration with LiteLLM's own mock responses (no network: non-loopback
connections fail the test, and LiteLLM reads its bundled cost map): one event per call,
priced by flyball's catalog; guard() applied in the SDK form and in the proxy's hook form."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # LiteLLM would fetch its cost map at import otherwise

with warnings.catch_warnings():  # LiteLLM's own models warn under pydantic 2.14 on import; not ours to fix
    warnings.simplefilter("ignore")
    import litellm
    from litellm.proxy._types import UserAPIKeyAuth
    from litellm.types.utils import CompletionTokensDetailsWrapper, ModelResponse, PromptTokensDetailsWrapper, Usage

    from flyball.integrations.litellm import FlyballLogger, GuardRefused
from fastapi import HTTPException

from flyball.producers import Telemetry
from flyball.producers.transports import MemoryTransport
from flyball.schemas import DIRECTIVES, EVENTS, ActionKind, Directive, LLMCall, Scope, parse_event
from flyball.stream_processors.pipeline import EVENT_COLUMNS, Pipeline
from flyball.stream_processors.pricing import load_catalog

# LiteLLM's TypedDicts use ReadOnly, which pydantic warns about when it first builds their schema
pytestmark = pytest.mark.filterwarnings("ignore:Item.* the `ReadOnly` qualifier:UserWarning")
MESSAGES = [{"role": "user", "content": "hi"}]
CATALOG = {"format": "flyball.prices/1", "prices": [
    {"provider": "openai", "model": "gpt-4o-mini", "effective_from": "2024-01-01T00:00:00+00:00",
     "input": "0.000001", "output": "0.000002", "cache_read": "0.0000005", "source": "test"}]}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"network access during a LiteLLM test: {address}")
        return real(self, address)
    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture()
def shim() -> Iterator[tuple[Telemetry, MemoryTransport]]:
    transport = MemoryTransport()
    tel = Telemetry("svc", transport=transport)
    yield tel, transport
    tel.close(timeout=5)
    litellm.logging_callback_manager._reset_all_callbacks()  # LiteLLM keeps one logger per class otherwise


def events(tel: Telemetry, transport: MemoryTransport, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while len(transport.topics.get(EVENTS, [])) < n and time.monotonic() < deadline:
        tel.flush(1)
        time.sleep(0.05)
    return [orjson.loads(v) for _, v in transport.topics.get(EVENTS, [])]


async def aevents(tel: Telemetry, transport: MemoryTransport, n: int) -> list[dict[str, Any]]:
    """``events`` for async tests: LiteLLM's async callbacks run as tasks on this loop."""
    deadline = time.monotonic() + 20
    while len(transport.topics.get(EVENTS, [])) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        tel.flush(0.2)
    return [orjson.loads(v) for _, v in transport.topics.get(EVENTS, [])]


def usage_response(model: str = "gpt-4o-mini") -> ModelResponse:
    return ModelResponse(model=model + "-2024-07-18", choices=[
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hello"}}],
        usage=Usage(prompt_tokens=2000, completion_tokens=400, total_tokens=2400,
                    prompt_tokens_details=PromptTokensDetailsWrapper(cached_tokens=1500),
                    completion_tokens_details=CompletionTokensDetailsWrapper(reasoning_tokens=256)))


async def test_sdk_callback_emits_one_event_per_call_priced_by_flyballs_catalog(
        shim: tuple[Telemetry, MemoryTransport]) -> None:
    tel, transport = shim
    litellm.callbacks = [FlyballLogger(tel)]
    response = await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, mock_response=usage_response(),
                                         metadata={"tenant_id": "acme", "feature": "support-bot"})
    stream = await litellm.acompletion(model="anthropic/claude-sonnet-4-5", messages=MESSAGES, stream=True,
                                       mock_response="hello there, streamed", metadata={"tenant_id": "globex"})
    async for _ in stream:
        pass
    with pytest.raises(litellm.RateLimitError):
        await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, metadata={"tenant_id": "acme"},
                                  mock_response=litellm.RateLimitError("slow down", llm_provider="openai",
                                                                       model="gpt-4o-mini"))
    got = await aevents(tel, transport, 3)
    assert len(got) == 3, got
    by_status = {(e["status"], e["model"]): e for e in got}
    ok = by_status[("ok", "gpt-4o-mini")]
    assert (ok["tenant_id"], ok["feature"], ok["provider"], ok["response_model"]) == (
        "acme", "support-bot", "openai", "gpt-4o-mini-2024-07-18")
    assert (ok["input_tokens"], ok["output_tokens"], ok["cache_read_tokens"], ok["reasoning_tokens"]) == (
        2000, 400, 1500, 256)
    assert ok["latency_ms"] > 0 and not ok["stream"] and "ttft_ms" not in ok
    assert not any("cost" in k for k in ok) and not any("cost" in k for k in ok.get("attributes", {}))
    # flyball's catalog prices it: 500 uncached input + 1500 cached + 400 output (reasoning billed as output)
    book = load_catalog(orjson.dumps(CATALOG))
    result = Pipeline(lambda: book).process([orjson.dumps(ok)], now=datetime.now(UTC))
    row = dict(zip(EVENT_COLUMNS, result.rows[0], strict=True))
    assert row["cost_usd"] == Decimal("0.0005") + Decimal("0.00075") + Decimal("0.0008")
    assert row["cost_usd"] != Decimal(str(response._hidden_params["response_cost"]))  # LiteLLM's own price
    streamed = by_status[("ok", "claude-sonnet-4-5")]
    assert (streamed["tenant_id"], streamed["provider"], streamed["stream"]) == ("globex", "anthropic", True)
    assert 0 <= streamed["ttft_ms"] <= streamed["latency_ms"]
    failed = by_status[("rate_limited", "gpt-4o-mini")]
    assert failed["error_type"] == "RateLimitError" and failed["input_tokens"] == 0
    assert all(isinstance(parse_event(e), LLMCall) for e in got)


def test_sync_completion_is_logged_once(shim: tuple[Telemetry, MemoryTransport]) -> None:
    tel, transport = shim
    litellm.callbacks = [FlyballLogger(tel)]
    litellm.completion(model="openai/gpt-4o-mini", messages=MESSAGES, mock_response=usage_response(),
                       metadata={"tenant_id": "acme"})
    got = events(tel, transport, 1)
    time.sleep(0.5)  # a second (duplicate) callback would land by now
    got = events(tel, transport, 1)
    assert [e["tenant_id"] for e in got] == ["acme"]


def follow(tel: Telemetry, transport: MemoryTransport, *directives: Directive) -> None:
    transport.topics[DIRECTIVES] = [(d.key().encode(), d.model_dump_json().encode()) for d in directives]
    deadline = time.monotonic() + 10
    while tel.stats()["directives_seen"] < len(directives) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tel.stats()["directives_seen"] >= len(directives)


def directive(did: str, action: ActionKind, scope: Scope, **kw: Any) -> Directive:
    now = datetime.now(UTC)
    return Directive(directive_id=did, action=action, scope=scope, created_at=now,
                     expires_at=now + timedelta(minutes=5), **kw)


TOOLS = [{"type": "function", "function": {"name": "sql", "parameters": {"type": "object"}}},
         {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]


async def test_guard_in_the_sdk_and_the_proxy_hook(shim: tuple[Telemetry, MemoryTransport]) -> None:
    tel, transport = shim
    follow(tel, transport,
           directive("t1", ActionKind.THROTTLE, Scope(tenant_id="acme"), rate_per_s=0.01, burst=1),
           directive("r1", ActionKind.REROUTE, Scope(tenant_id="globex", model="gpt-4o"), to_model="gpt-4o-mini"),
           directive("x1", ActionKind.DISABLE_TOOL, Scope(tenant_id="initech", tool_name="sql")),
           directive("b1", ActionKind.BLOCK, Scope(tenant_id="umbrella")))
    flyball = FlyballLogger(tel)
    litellm.callbacks = [flyball]
    # throttle: the burst of one passes, then 429 with the wait
    flyball.guard_request({"model": "gpt-4o", "messages": MESSAGES, "metadata": {"tenant_id": "acme"}})
    with pytest.raises(GuardRefused) as refused:
        flyball.guard_request({"model": "gpt-4o", "messages": MESSAGES, "metadata": {"tenant_id": "acme"}})
    assert refused.value.status_code == 429 and refused.value.directive_ids == ("t1",)
    assert int(refused.value.headers["Retry-After"]) >= 1
    # reroute: the call goes to the fallback, and the event says which model answered
    kwargs = flyball.guard_request({"model": "gpt-4o", "messages": MESSAGES, "metadata": {"tenant_id": "globex"}})
    assert kwargs["model"] == "gpt-4o-mini" and kwargs["metadata"]["flyball_rerouted_from"] == "gpt-4o"
    await litellm.acompletion(**kwargs, mock_response=usage_response())
    assert [e["model"] for e in await aevents(tel, transport, 1)] == ["gpt-4o-mini"]
    # disabled tool: removed, or refused when so configured
    kwargs = flyball.guard_request({"model": "gpt-4o", "messages": MESSAGES, "tools": TOOLS,
                                    "metadata": {"tenant_id": "initech"}})
    assert [t["function"]["name"] for t in kwargs["tools"]] == ["search"]
    only_sql = flyball.guard_request({"model": "gpt-4o", "messages": MESSAGES, "tools": TOOLS[:1],
                                      "tool_choice": "auto", "metadata": {"tenant_id": "initech"}})
    assert "tools" not in only_sql and "tool_choice" not in only_sql
    with pytest.raises(GuardRefused) as refused:
        FlyballLogger(tel, disabled_tools="refuse").guard_request(
            {"model": "gpt-4o", "messages": MESSAGES, "tools": TOOLS, "metadata": {"tenant_id": "initech"}})
    assert refused.value.status_code == 403 and "sql" in refused.value.reason
    # block
    with pytest.raises(GuardRefused) as refused:
        flyball.guard_request({"model": "gpt-4o", "messages": MESSAGES, "metadata": {"tenant_id": "umbrella"}})
    assert refused.value.status_code == 403 and refused.value.directive_ids == ("b1",)
    # the proxy's hook: the tenant from the key's team; a refusal is the HTTP answer
    team = UserAPIKeyAuth(api_key="sk-x", team_id="acme")
    with pytest.raises(HTTPException) as http:
        await flyball.async_pre_call_hook(team, None, {"model": "gpt-4o", "messages": MESSAGES}, "completion")
    assert http.value.status_code == 429 and int(http.value.headers["Retry-After"]) >= 1
    data = await flyball.async_pre_call_hook(UserAPIKeyAuth(api_key="sk-y"), None, {
        "model": "gpt-4o", "messages": MESSAGES, "metadata": {"tenant_id": "globex"}}, "completion")
    assert data["model"] == "gpt-4o-mini"
    untouched = {"model": "gpt-4o", "messages": MESSAGES}
    assert await flyball.async_pre_call_hook(UserAPIKeyAuth(api_key="sk-z"), None, untouched, "completion") == untouched
