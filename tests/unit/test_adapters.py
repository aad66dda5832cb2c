"""Usage and status from provider response objects, duck-typed (``flyball.producers.adapters``)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace as NS

import pytest

from flyball.producers.adapters import Usage, finish_reason_of, response_model_of, status_of, usage_of


def test_openai_chat_completion_usage() -> None:
    response = NS(model="gpt-4o-2024-08-06", choices=[NS(finish_reason="stop")], usage=NS(
        prompt_tokens=1200, completion_tokens=300, prompt_tokens_details=NS(cached_tokens=1000),
        completion_tokens_details=NS(reasoning_tokens=120)))
    assert usage_of(response) == Usage(1200, 300, 1000, 0, 120)
    assert (response_model_of(response), finish_reason_of(response)) == ("gpt-4o-2024-08-06", "stop")


def test_openai_usage_without_details() -> None:
    assert usage_of({"usage": {"prompt_tokens": 10, "completion_tokens": 2,
                               "prompt_tokens_details": None}}) == Usage(10, 2)


def test_openai_responses_api_usage_already_includes_cached_input() -> None:
    response = NS(model="o3", usage=NS(input_tokens=500, output_tokens=80,
                                       input_tokens_details=NS(cached_tokens=400),
                                       output_tokens_details=NS(reasoning_tokens=60)))
    assert usage_of(response) == Usage(500, 80, 400, 0, 60)


def test_anthropic_input_tokens_exclude_the_cache_so_flyball_adds_it() -> None:
    response = NS(model="claude-sonnet-4", stop_reason="end_turn", usage=NS(
        input_tokens=20, output_tokens=150, cache_read_input_tokens=1000, cache_creation_input_tokens=300))
    assert usage_of(response) == Usage(input_tokens=1320, output_tokens=150, cache_read_tokens=1000,
                                       cache_write_tokens=300)
    assert finish_reason_of(response) == "end_turn"


def test_anthropic_dict_usage_with_null_cache_fields() -> None:
    assert usage_of({"usage": {"input_tokens": 20, "output_tokens": 5, "cache_read_input_tokens": None}}) == Usage(20, 5)


def test_gemini_usage_metadata() -> None:
    response = NS(model_version="gemini-2.5-pro", usage_metadata=NS(
        prompt_token_count=900, candidates_token_count=100, thoughts_token_count=50, cached_content_token_count=600))
    assert usage_of(response) == Usage(900, 150, 600, 0, 50)
    assert response_model_of(response) == "gemini-2.5-pro"


@pytest.mark.parametrize("response", [None, {}, NS(), "text", {"usage": {"total": 3}}])
def test_no_usage_is_none(response: object) -> None:
    assert usage_of(response) is None


def test_nonsense_counts_become_zero_not_errors() -> None:
    assert usage_of({"usage": {"prompt_tokens": True, "completion_tokens": -4}}) == Usage(0, 0)


class RateLimitError(Exception):
    pass


class APITimeoutError(Exception):
    pass


class APIStatusError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(status_code)
        self.status_code = status_code


@pytest.mark.parametrize(("exc", "status"), [
    (RateLimitError(), "rate_limited"), (APITimeoutError(), "timeout"), (TimeoutError(), "timeout"),
    (TimeoutError(), "timeout"), (APIStatusError(429), "rate_limited"), (APIStatusError(504), "timeout"),
    (APIStatusError(500), "error"), (asyncio.CancelledError(), "cancelled"), (ValueError(), "error"),
])
def test_status_of_an_exception(exc: BaseException, status: str) -> None:
    assert status_of(exc) == status
