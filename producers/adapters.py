"""Usage and status from provider SDK objects, duck-typed: no provider SDK is a dependency.

``usage_of(response)`` reads token counts from a response object or dict of
- OpenAI Chat Completions: ``usage.prompt_tokens``, ``usage.completion_tokens``,
  ``usage.prompt_tokens_details.cached_tokens``, ``usage.completion_tokens_details.reasoning_tokens``;
- OpenAI Responses: ``usage.input_tokens`` (includes cached), ``usage.output_tokens``,
  ``usage.input_tokens_details.cached_tokens``, ``usage.output_tokens_details.reasoning_tokens``;
- Anthropic Messages: ``usage.input_tokens``, ``usage.output_tokens``,
  ``usage.cache_read_input_tokens``, ``usage.cache_creation_input_tokens``. Anthropic's
  ``input_tokens`` *excludes* cache reads and writes, so flyball's ``input_tokens`` (which
  includes them, as OpenTelemetry GenAI does) is the sum of the three;
- Google Gemini: ``usage_metadata.prompt_token_count`` (includes cached),
  ``candidates_token_count``, ``thoughts_token_count`` (not in candidates: added to output),
  ``cached_content_token_count``.

``status_of(exc)`` classifies an exception into a ``CallStatus`` by its class names and an
HTTP status code if it carries one (``status_code`` / ``status``), so that OpenAI's
``RateLimitError``, Anthropic's ``RateLimitError``, httpx timeouts and ``asyncio.TimeoutError``
all land where a dashboard expects them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from flyball.schemas import CallStatus


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def as_fields(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cache_read_tokens": self.cache_read_tokens, "cache_write_tokens": self.cache_write_tokens,
                "reasoning_tokens": self.reasoning_tokens}


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _int(value: Any) -> int:
    # bool is an int: a True token count is a bug upstream, not one token
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_of(response: Any) -> Usage | None:
    """Token usage of a provider response (or of its ``usage`` object); None if there is none."""
    usage = _get(response, "usage")
    if usage is None:
        gemini = _get(response, "usage_metadata")
        if gemini is not None:
            return _gemini(gemini)
        usage = response  # maybe we were handed the usage object itself
    if _get(usage, "prompt_tokens") is not None or _get(usage, "completion_tokens") is not None:
        out = _int(_get(usage, "completion_tokens"))
        return Usage(
            input_tokens=_int(_get(usage, "prompt_tokens")), output_tokens=out,
            cache_read_tokens=_int(_get(_get(usage, "prompt_tokens_details"), "cached_tokens")),
            reasoning_tokens=min(out, _int(_get(_get(usage, "completion_tokens_details"), "reasoning_tokens"))),
        )
    if _get(usage, "input_tokens") is None and _get(usage, "output_tokens") is None:
        if _get(usage, "prompt_token_count") is not None:
            return _gemini(usage)
        return None
    out = _int(_get(usage, "output_tokens"))
    if _get(usage, "input_tokens_details") is not None or _get(usage, "output_tokens_details") is not None:
        # OpenAI Responses API: input_tokens already includes the cached part
        return Usage(
            input_tokens=_int(_get(usage, "input_tokens")), output_tokens=out,
            cache_read_tokens=_int(_get(_get(usage, "input_tokens_details"), "cached_tokens")),
            reasoning_tokens=min(out, _int(_get(_get(usage, "output_tokens_details"), "reasoning_tokens"))),
        )
    cache_read = _int(_get(usage, "cache_read_input_tokens"))
    cache_write = _int(_get(usage, "cache_creation_input_tokens"))
    return Usage(input_tokens=_int(_get(usage, "input_tokens")) + cache_read + cache_write, output_tokens=out,
                 cache_read_tokens=cache_read, cache_write_tokens=cache_write)


def _gemini(meta: Any) -> Usage:
    thoughts = _int(_get(meta, "thoughts_token_count"))
    return Usage(input_tokens=_int(_get(meta, "prompt_token_count")),
                 output_tokens=_int(_get(meta, "candidates_token_count")) + thoughts,
                 cache_read_tokens=_int(_get(meta, "cached_content_token_count")), reasoning_tokens=thoughts)


def response_model_of(response: Any) -> str:
    model = _get(response, "model") or _get(response, "model_version")
    return model if isinstance(model, str) else ""


def finish_reason_of(response: Any) -> str:
    reason = _get(response, "stop_reason")  # Anthropic
    if reason is None:
        choices = _get(response, "choices")
        if isinstance(choices, (list, tuple)) and choices:
            reason = _get(choices[0], "finish_reason")
    return reason if isinstance(reason, str) else ""


def status_of(exc: BaseException) -> CallStatus:
    """The ``CallStatus`` an exception stands for."""
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
        return CallStatus.CANCELLED
    code = _get(exc, "status_code")
    if not isinstance(code, int):
        code = _get(exc, "status")
    names = " ".join(cls.__name__.lower() for cls in type(exc).__mro__)
    if isinstance(exc, TimeoutError) or "timeout" in names or code in (408, 504):
        return CallStatus.TIMEOUT
    if "ratelimit" in names or "rate_limit" in names or code == 429:
        return CallStatus.RATE_LIMITED
    if "contentfilter" in names or "contentpolicy" in names or "safety" in names:
        return CallStatus.FILTERED
    if "cancel" in names:
        return CallStatus.CANCELLED
    return CallStatus.ERROR
