"""LiteLLM integration: one ``llm_call`` event per LiteLLM call, and flyball's directives
applied before a call (the ``litellm`` extra).

As an SDK callback::

    import litellm
    from flyball.integrations.litellm import FlyballLogger
    flyball = FlyballLogger(Telemetry(service="checkout"))     # or FlyballLogger() (from FLYBALL_* env)
    litellm.callbacks = [flyball]
    kwargs = flyball.guard_request({"model": "gpt-4o", "messages": [...],
                                    "metadata": {"tenant_id": "acme", "feature": "support-bot"}})
    litellm.completion(**kwargs)          # GuardRefused (status 429/403, retry_after_s) if refused

In a LiteLLM proxy (``config.yaml``), ``proxy_handler`` does both: its ``async_pre_call_hook``
answers a throttle with 429 and ``Retry-After``, a block or a disabled tool it cannot remove
with 403, swaps a rerouted model, and removes a disabled tool from ``tools``::

    litellm_settings:
      callbacks: ["flyball.integrations.litellm.proxy_handler"]
    environment_variables: {FLYBALL_KAFKA_BOOTSTRAP: "kafka:9092"}

Events carry tokens (cache reads and writes, reasoning), latency, TTFT (streams), status
and error type, never LiteLLM's cost: the worker prices them with flyball's catalog like any
other event. Tenant and feature come from the call's ``metadata`` (``tenant_id``,
``feature``; names configurable), then in the proxy from the key's team. The event id is
derived from LiteLLM's call id, so a callback that runs twice counts once.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, Literal

from litellm.integrations.custom_logger import CustomLogger

from flyball.producers import Telemetry
from flyball.producers.adapters import finish_reason_of, response_model_of, status_of, usage_of

__all__ = ["FlyballLogger", "GuardRefused", "proxy_handler"]

# LiteLLM's provider names -> OpenTelemetry's gen_ai.provider.name (flyball's catalog uses these)
PROVIDERS: Final = {"gemini": "gcp.gemini", "vertex_ai": "gcp.vertex_ai", "bedrock": "aws.bedrock",
                    "azure": "azure.ai.openai", "azure_ai": "azure.ai.inference", "mistral": "mistral_ai",
                    "xai": "x_ai", "watsonx": "ibm.watsonx.ai", "perplexity": "perplexity", "groq": "groq",
                    "deepseek": "deepseek", "cohere": "cohere"}
# the namespace of event ids derived from LiteLLM call ids
LITELLM_NAMESPACE: Final = uuid.UUID("a3c1e7f0-5d2b-4c8e-9f14-7b6d0e2a9c35")


class GuardRefused(Exception):
    """flyball refused the call: ``status_code`` 429 (throttled: retry after ``retry_after_s``)
    or 403 (blocked, or a disabled tool that was not removed)."""

    def __init__(self, status_code: int, reason: str, retry_after_s: float | None,
                 directive_ids: tuple[str, ...] = ()) -> None:
        super().__init__(f"flyball: {reason}")
        self.status_code = status_code
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.directive_ids = directive_ids

    @property
    def headers(self) -> dict[str, str]:
        if self.status_code == 429 and self.retry_after_s is not None:
            return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}
        return {}


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _tool_name(tool: Any) -> str | None:
    function = _get(tool, "function")
    name = _get(function, "name") if function is not None else _get(tool, "name")
    return name if isinstance(name, str) else None


class FlyballLogger(CustomLogger):
    """The LiteLLM ``CustomLogger``: events from the success/failure callbacks, ``guard()``
    from :meth:`guard_request` (SDK) or ``async_pre_call_hook`` (proxy)."""

    def __init__(self, telemetry: Telemetry | None = None, *, service: str = "litellm",
                 tenant_key: str = "tenant_id", feature_key: str = "feature",
                 disabled_tools: Literal["remove", "refuse"] = "remove", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._telemetry = telemetry
        self.service = service
        self.tenant_key = tenant_key
        self.feature_key = feature_key
        self.disabled_tools = disabled_tools

    @property
    def telemetry(self) -> Telemetry:
        if self._telemetry is None:  # the proxy's module-level instance connects on first use
            self._telemetry = Telemetry(service=self.service)
        return self._telemetry

    # ------------------------------------------------------------------ guard
    def _scope(self, metadata: Mapping[str, Any] | None, team_id: Any = None) -> tuple[str | None, str | None]:
        metadata = metadata or {}
        tenant = metadata.get(self.tenant_key) or team_id
        feature = metadata.get(self.feature_key)
        return (str(tenant) if tenant else None, str(feature) if feature else None)

    def guard_request(self, data: dict[str, Any], *, team_id: str | None = None) -> dict[str, Any]:
        """``data`` (completion kwargs) as flyball's directives allow it: the model swapped for
        a reroute, a disabled tool removed (or refused); raises :class:`GuardRefused` for a
        throttle (429) or a block (403). A call without a tenant is not guarded."""
        tenant, feature = self._scope(data.get("metadata") or data.get("litellm_metadata"), team_id)
        if tenant is None:
            return data
        tel = self.telemetry
        model = data.get("model")
        request_id = data.get("litellm_call_id")
        decision = tel.guard(tenant_id=tenant, feature=feature, model=model, request_id=request_id)
        if not decision.allowed:
            status = 429 if decision.reason == "throttled" else 403
            raise GuardRefused(status, decision.reason, decision.retry_after_s, decision.directive_ids)
        out = dict(data)
        if decision.model and decision.model != model:
            out["model"] = decision.model
            metadata = dict(out.get("metadata") or {})
            metadata["flyball_rerouted_from"] = model
            out["metadata"] = metadata
        tools = out.get("tools")
        if tools:
            kept = []
            for tool in tools:
                name = _tool_name(tool)
                verdict = tel.guard(tenant_id=tenant, feature=feature, model=out.get("model"), tool=name) \
                    if name else decision
                if verdict.allowed:
                    kept.append(tool)
                elif verdict.reason == "throttled":
                    raise GuardRefused(429, verdict.reason, verdict.retry_after_s, verdict.directive_ids)
                elif self.disabled_tools == "refuse" or verdict.reason != f"tool {name} disabled":
                    raise GuardRefused(403, verdict.reason, verdict.retry_after_s, verdict.directive_ids)
            if len(kept) != len(tools):
                if kept:
                    out["tools"] = kept
                else:
                    out.pop("tools", None)
                    out.pop("tool_choice", None)
        return out

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict[str, Any],
                                  call_type: Any) -> dict[str, Any]:
        """The proxy's hook: a refusal becomes the HTTP answer (429 with Retry-After, or 403)."""
        from fastapi import HTTPException

        try:
            return self.guard_request(data, team_id=_get(user_api_key_dict, "team_id"))
        except GuardRefused as exc:
            raise HTTPException(exc.status_code, detail=str(exc), headers=exc.headers) from None

    # ------------------------------------------------------------------ events
    def event_fields(self, kwargs: Mapping[str, Any], response: Any, start_time: Any, end_time: Any,
                     error: BaseException | None = None) -> dict[str, Any]:
        """The ``emit_llm_call`` arguments for one finished LiteLLM call (pure)."""
        slo = kwargs.get("standard_logging_object") or {}
        params = kwargs.get("litellm_params") or {}
        metadata = params.get("metadata") or {}
        tenant, feature = self._scope(metadata, metadata.get("user_api_key_team_id"))
        provider = slo.get("custom_llm_provider") or params.get("custom_llm_provider") or ""
        model = slo.get("model") or kwargs.get("model") or ""
        if provider and isinstance(model, str) and model.startswith(provider + "/"):
            model = model[len(provider) + 1:]
        fields: dict[str, Any] = {"tenant_id": tenant or "", "feature": feature or "",
                                  "provider": PROVIDERS.get(provider, provider),
                                  "model": model, "stream": bool(kwargs.get("stream"))}
        call_id = kwargs.get("litellm_call_id") or slo.get("id")
        if call_id:
            fields["event_id"] = str(uuid.uuid5(LITELLM_NAMESPACE, str(call_id)))
            fields["request_id"] = str(call_id)
        group = slo.get("model_group")
        if group and group != model:
            fields["route"] = str(group)
        if isinstance(start_time, datetime) and isinstance(end_time, datetime):
            fields["latency_ms"] = max(0.0, (end_time - start_time).total_seconds() * 1000)
            fields["ts"] = start_time if start_time.tzinfo else start_time.astimezone()
        first = slo.get("completionStartTime")
        begun = slo.get("startTime")
        if fields["stream"] and isinstance(first, (int, float)) and isinstance(begun, (int, float)) and first >= begun:
            fields["ttft_ms"] = min((first - begun) * 1000, fields.get("latency_ms", math.inf))
        if error is not None:
            fields["status"] = str(status_of(error))
            fields["error_type"] = type(error).__name__
            return fields
        fields["status"] = "ok"
        usage = usage_of(response) if response is not None else None
        if usage is not None:
            fields.update(usage.as_fields())
            # LiteLLM's OpenAI-shaped usage (prompt_tokens include the cache) also names Anthropic's cache writes
            write = _get(_get(response, "usage"), "cache_creation_input_tokens")
            if isinstance(write, int) and 0 < write <= fields["input_tokens"] - fields["cache_read_tokens"]:
                fields["cache_write_tokens"] = write
        if response_model := response_model_of(response):
            fields["response_model"] = response_model
        if reason := finish_reason_of(response):
            fields["finish_reason"] = reason
        return fields

    def _emit(self, kwargs: Mapping[str, Any], response: Any, start_time: Any, end_time: Any,
              error: BaseException | None = None) -> None:
        fields = self.event_fields(kwargs, response, start_time, end_time, error)
        self.telemetry.emit_llm_call(**fields)  # never raises, never blocks

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._emit(kwargs, response_obj, start_time, end_time)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._emit(kwargs, response_obj, start_time, end_time)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._emit(kwargs, None, start_time, end_time, _exception(kwargs))

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._emit(kwargs, None, start_time, end_time, _exception(kwargs))


def _exception(kwargs: Mapping[str, Any]) -> BaseException:
    exc = kwargs.get("exception")
    return exc if isinstance(exc, BaseException) else RuntimeError(str(exc or "LiteLLM call failed"))


# the proxy's callback (``callbacks: ["flyball.integrations.litellm.proxy_handler"]``):
# its Telemetry is created from FLYBALL_* settings on first use
proxy_handler = FlyballLogger(service="litellm-proxy")
