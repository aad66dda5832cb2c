"""Usage and status from provider SDK objects, duck-typed: no provider SDK is a dependency.

``usage_of(response)`` reads every billed usage field of a response object or dict of
- OpenAI Chat Completions: ``usage.prompt_tokens``, ``usage.completion_tokens``,
  ``prompt_tokens_details.cached_tokens`` / ``.cache_write_tokens``,
  ``completion_tokens_details.reasoning_tokens``;
- OpenAI Responses: ``usage.input_tokens`` (includes cached), ``usage.output_tokens``,
  ``input_tokens_details.cached_tokens`` / ``.cache_write_tokens`` and its
  ``cache_write_tokens_details.ttl_30m_tokens`` / ``ttl_12h_tokens`` (the 12-hour part is
  ``cache_write_12h_tokens``; the rest is billed at the model's default cache-write rate),
  ``output_tokens_details.reasoning_tokens``;
- Anthropic Messages: ``usage.input_tokens``, ``usage.output_tokens``,
  ``usage.cache_read_input_tokens``, ``usage.cache_creation_input_tokens`` and its
  ``cache_creation.ephemeral_1h_input_tokens`` (``cache_write_1h_tokens``; the rest are
  5-minute writes), ``output_tokens_details.thinking_tokens`` (``reasoning_tokens``).
  Anthropic's ``input_tokens`` *excludes* cache reads and writes, so flyball's
  ``input_tokens`` (which includes them, as OpenTelemetry GenAI does) is the sum of the three;
- Google Gemini: ``usage_metadata.prompt_token_count`` (includes cached),
  ``tool_use_prompt_token_count`` (tool results fed back to the model: billed as input, not in
  the prompt count, so added to ``input_tokens``), ``candidates_token_count``,
  ``thoughts_token_count`` (not in candidates: added to output), ``cached_content_token_count``.

The service tier that *served* the call comes from ``ChatCompletion.service_tier``,
``Response.service_tier``, Anthropic ``usage.service_tier`` and Gemini
``usage_metadata.service_tier`` / ``traffic_type``, normalised by
:func:`flyball.schemas.normalize_service_tier`. Every other non-zero count in the usage
object (audio tokens, prediction tokens, server tool requests, fields a newer SDK adds) is kept
as ``usage.<path>`` in ``Usage.extra`` (short texts too: Anthropic ``speed``, ``inference_geo``),
which the tracker puts into the event's ``attributes``.

``status_of(exc)`` classifies an exception into a ``CallStatus`` by its class names and an
HTTP status code if it carries one (``status_code``, or google-genai's ``code``; a gRPC-style
``status`` text such as ``RESOURCE_EXHAUSTED`` too), so that OpenAI's and Anthropic's
``RateLimitError``, google-genai's ``ClientError(429)``, httpx timeouts and
``asyncio.TimeoutError`` all land where a dashboard expects them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from flyball.schemas import CallStatus, normalize_service_tier

MAX_EXTRA = 16  # usage counts kept in attributes per event (the envelope allows 64 attributes)
# counts that are sums of others: keeping them would only repeat what the event says
_TOTALS = frozenset({"total_tokens", "total_token_count"})
_TEXT_MAPPED = frozenset({"service_tier", "traffic_type"})  # read into service_tier
_SCALARS = (str, bytes, bool, list, tuple, float, Enum)  # not walked into


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_write_12h_tokens: int = 0
    service_tier: str = ""  # normalised; '' = standard or not reported
    extra: Mapping[str, int | str] = field(default_factory=dict)  # usage.<path> -> value, for attributes

    def as_fields(self) -> dict[str, Any]:
        """The ``llm_call`` fields this usage sets (optional ones only when reported)."""
        out: dict[str, Any] = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                               "cache_read_tokens": self.cache_read_tokens,
                               "cache_write_tokens": self.cache_write_tokens, "reasoning_tokens": self.reasoning_tokens}
        if self.cache_write_1h_tokens:
            out["cache_write_1h_tokens"] = self.cache_write_1h_tokens
        if self.cache_write_12h_tokens:
            out["cache_write_12h_tokens"] = self.cache_write_12h_tokens
        if self.service_tier:
            out["service_tier"] = self.service_tier
        return out


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _int(value: Any) -> int:
    # bool is an int: a True token count is a bug upstream, not one token
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _text(value: Any) -> str:
    if isinstance(value, Enum):
        value = value.value
    return value if isinstance(value, str) else ""


def _fields(obj: Any) -> dict[str, Any]:
    """The public fields of a dict, a pydantic model (extra fields included) or a plain object."""
    if isinstance(obj, Mapping):
        return {str(k): v for k, v in obj.items()}
    try:
        found = {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    except TypeError:  # no __dict__ (slots, builtins): nothing to walk
        return {}
    extra = getattr(obj, "__pydantic_extra__", None)
    if isinstance(extra, dict):
        found.update(extra)
    return found


def _leftovers(usage: Any, used: frozenset[str]) -> dict[str, int | str]:
    """Non-zero counts (and short texts) of ``usage`` not mapped to an event field, as ``usage.<path>``."""
    out: dict[str, int | str] = {}

    def walk(obj: Any, prefix: str, depth: int) -> None:
        for name, value in _fields(obj).items():
            path = f"{prefix}{name}"
            if path in used or name in _TOTALS or len(out) >= MAX_EXTRA:
                continue
            if isinstance(value, int) and not isinstance(value, bool):
                if value > 0:
                    out["usage." + path] = value
            elif isinstance(value, (str, Enum)) and name not in _TEXT_MAPPED:
                text = _text(value)
                if text and len(text) <= 64:  # e.g. Anthropic speed, inference_geo: they can change the price
                    out["usage." + path] = text
            elif depth < 3 and value is not None and not isinstance(value, _SCALARS):
                walk(value, path + ".", depth + 1)

    walk(usage, "", 0)
    return out


_OPENAI_CHAT = frozenset({"prompt_tokens", "completion_tokens", "prompt_tokens_details.cached_tokens",
                          "prompt_tokens_details.cache_write_tokens",
                          "prompt_tokens_details.cache_write_tokens_details.ttl_12h_tokens",
                          "prompt_tokens_details.cache_write_tokens_details.ttl_30m_tokens",
                          "completion_tokens_details.reasoning_tokens"})
_OPENAI_RESPONSES = frozenset({"input_tokens", "output_tokens", "input_tokens_details.cached_tokens",
                               "input_tokens_details.cache_write_tokens",
                               "input_tokens_details.cache_write_tokens_details.ttl_12h_tokens",
                               "input_tokens_details.cache_write_tokens_details.ttl_30m_tokens",
                               "output_tokens_details.reasoning_tokens"})
_ANTHROPIC = frozenset({"input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
                        "cache_creation.ephemeral_1h_input_tokens", "cache_creation.ephemeral_5m_input_tokens",
                        "output_tokens_details.thinking_tokens"})
_GEMINI = frozenset({"prompt_token_count", "candidates_token_count", "thoughts_token_count",
                     "cached_content_token_count", "tool_use_prompt_token_count"})


def usage_of(response: Any) -> Usage | None:
    """Token usage of a provider response (or of its ``usage`` object); None if there is none."""
    usage = _get(response, "usage")
    tier = _text(_get(response, "service_tier"))
    if usage is None:
        gemini = _get(response, "usage_metadata")
        if gemini is not None:
            return _gemini(gemini)
        usage = response  # maybe we were handed the usage object itself
    if _get(usage, "prompt_tokens") is not None or _get(usage, "completion_tokens") is not None:
        return _openai(usage, tier, "prompt_tokens", "completion_tokens", "prompt_tokens_details",
                       "completion_tokens_details", _OPENAI_CHAT)
    if _get(usage, "input_tokens") is None and _get(usage, "output_tokens") is None:
        if _get(usage, "prompt_token_count") is not None:
            return _gemini(usage)
        return None
    if _get(usage, "input_tokens_details") is not None or (
            _get(usage, "output_tokens_details") is not None
            and _get(_get(usage, "output_tokens_details"), "reasoning_tokens") is not None):
        # OpenAI Responses API: input_tokens already includes the cached part
        return _openai(usage, tier, "input_tokens", "output_tokens", "input_tokens_details",
                       "output_tokens_details", _OPENAI_RESPONSES)
    return _anthropic(usage, tier)


def _openai(usage: Any, tier: str, inp: str, out: str, in_details: str, out_details: str,
            used: frozenset[str]) -> Usage:
    details = _get(usage, in_details)
    output = _int(_get(usage, out))
    write = _int(_get(details, "cache_write_tokens"))
    twelve = min(write, _int(_get(_get(details, "cache_write_tokens_details"), "ttl_12h_tokens")))
    return Usage(
        input_tokens=_int(_get(usage, inp)), output_tokens=output,
        cache_read_tokens=_int(_get(details, "cached_tokens")), cache_write_tokens=write,
        reasoning_tokens=min(output, _int(_get(_get(usage, out_details), "reasoning_tokens"))),
        cache_write_12h_tokens=twelve, service_tier=normalize_service_tier(tier),
        extra=_leftovers(usage, used))


def _anthropic(usage: Any, tier: str) -> Usage:
    output = _int(_get(usage, "output_tokens"))
    cache_read = _int(_get(usage, "cache_read_input_tokens"))
    by_ttl = _get(usage, "cache_creation")
    one_hour = _int(_get(by_ttl, "ephemeral_1h_input_tokens"))
    cache_write = _int(_get(usage, "cache_creation_input_tokens"))
    if not cache_write and by_ttl is not None:
        cache_write = one_hour + _int(_get(by_ttl, "ephemeral_5m_input_tokens"))
    thinking = _int(_get(_get(usage, "output_tokens_details"), "thinking_tokens"))
    return Usage(input_tokens=_int(_get(usage, "input_tokens")) + cache_read + cache_write, output_tokens=output,
                 cache_read_tokens=cache_read, cache_write_tokens=cache_write,
                 reasoning_tokens=min(output, thinking), cache_write_1h_tokens=min(one_hour, cache_write),
                 service_tier=normalize_service_tier(_text(_get(usage, "service_tier")) or tier),
                 extra=_leftovers(usage, _ANTHROPIC))


def _gemini(meta: Any) -> Usage:
    thoughts = _int(_get(meta, "thoughts_token_count"))
    tier = _text(_get(meta, "service_tier")) or _text(_get(meta, "traffic_type"))
    return Usage(input_tokens=_int(_get(meta, "prompt_token_count")) + _int(_get(meta, "tool_use_prompt_token_count")),
                 output_tokens=_int(_get(meta, "candidates_token_count")) + thoughts,
                 cache_read_tokens=_int(_get(meta, "cached_content_token_count")), reasoning_tokens=thoughts,
                 service_tier=normalize_service_tier(tier), extra=_leftovers(meta, _GEMINI))


def service_tier_of(response: Any) -> str:
    """The normalised service tier a response says served it ('' if it says nothing)."""
    tier = _text(_get(response, "service_tier")) or _text(_get(_get(response, "usage"), "service_tier"))
    if not tier:
        meta = _get(response, "usage_metadata")
        tier = _text(_get(meta, "service_tier")) or _text(_get(meta, "traffic_type"))
    return normalize_service_tier(tier)


def response_model_of(response: Any) -> str:
    model = _get(response, "model") or _get(response, "model_version")
    return model if isinstance(model, str) else ""


def finish_reason_of(response: Any) -> str:
    """Anthropic ``stop_reason``, OpenAI Chat ``choices[0].finish_reason``, Gemini
    ``candidates[0].finish_reason`` (an enum: its value), Responses ``status`` when not completed."""
    reason = _get(response, "stop_reason")  # Anthropic
    if reason is None:
        for name in ("choices", "candidates"):
            items = _get(response, name)
            if isinstance(items, (list, tuple)) and items:
                reason = _get(items[0], "finish_reason")
                break
    if reason is None and _get(response, "object") == "response":
        status = _text(_get(response, "status"))
        if status and status != "completed":
            reason = _text(_get(_get(response, "incomplete_details"), "reason")) or status
    return _text(reason)[:64]


# google-genai and gRPC carry a status text next to (or instead of) the HTTP code
_STATUS_TEXT = {"RESOURCE_EXHAUSTED": 429, "DEADLINE_EXCEEDED": 504, "CANCELLED": 499}


def status_of(exc: BaseException) -> CallStatus:
    """The ``CallStatus`` an exception stands for."""
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
        return CallStatus.CANCELLED
    code: Any = None
    for name in ("status_code", "code", "status"):
        value = _get(exc, name)
        if isinstance(value, int) and not isinstance(value, bool):
            code = value
            break
        if isinstance(value, str) and value.upper() in _STATUS_TEXT:
            code = _STATUS_TEXT[value.upper()]
            break
    names = " ".join(cls.__name__.lower() for cls in type(exc).__mro__)
    if isinstance(exc, TimeoutError) or "timeout" in names or code in (408, 504):
        return CallStatus.TIMEOUT
    if "ratelimit" in names or "rate_limit" in names or code == 429:
        return CallStatus.RATE_LIMITED
    if "contentfilter" in names or "contentpolicy" in names or "safety" in names:
        return CallStatus.FILTERED
    if "cancel" in names or code == 499:
        return CallStatus.CANCELLED
    return CallStatus.ERROR
