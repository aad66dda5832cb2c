"""Unit tests for pricing (``flyball.stream_processors.pricing``): exact money, versions, catalogs."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flyball.stream_processors.pricing import (
    CatalogError,
    PriceBook,
    PriceEntry,
    Rates,
    Usage,
    cost_of,
    entry_from_dict,
    load_catalog,
    price,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

# Real entries copied (fields trimmed) from LiteLLM's model_prices_and_context_window.json, with
# rates written exactly as LiteLLM writes them (float exponents), plus its sample_spec and a
# non-token (image) model, both of which must be skipped.
LITELLM = """{
  "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0,
                  "litellm_provider": "one of https://docs.litellm.ai/docs/providers"},
  "gpt-4o-mini": {"cache_read_input_token_cost": 7.5e-08, "input_cost_per_token": 1.5e-07,
                  "litellm_provider": "openai", "mode": "chat", "output_cost_per_token": 6e-07},
  "o3-mini": {"cache_read_input_token_cost": 5.5e-07, "input_cost_per_token": 1.1e-06,
              "litellm_provider": "openai", "mode": "chat", "output_cost_per_token": 4.4e-06,
              "supports_reasoning": true},
  "claude-sonnet-4-5": {"cache_creation_input_token_cost": 3.75e-06, "cache_read_input_token_cost": 3e-07,
                        "input_cost_per_token": 3e-06, "litellm_provider": "anthropic", "mode": "chat",
                        "output_cost_per_token": 1.5e-05},
  "gemini/gemini-2.5-pro": {"cache_read_input_token_cost": 1.25e-07,
                            "cache_read_input_token_cost_above_200k_tokens": 2.5e-07,
                            "input_cost_per_token": 1.25e-06, "input_cost_per_token_above_200k_tokens": 2.5e-06,
                            "litellm_provider": "gemini", "mode": "chat", "output_cost_per_token": 1e-05,
                            "output_cost_per_token_above_200k_tokens": 1.5e-05},
  "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation", "output_cost_per_image": 0.04}
}"""


def flyball_catalog(*entries: dict[str, object]) -> str:
    return json.dumps({"format": "flyball.prices/1", "prices": list(entries)})


VERSIONED = flyball_catalog(
    {"provider": "openai", "model": "gpt-4o-mini", "effective_from": "2025-01-01T00:00:00+00:00",
     "input": "0.00000015", "output": "0.0000006", "source": "v1"},
    {"provider": "openai", "model": "gpt-4o-mini", "effective_from": "2026-01-01T14:00:00+02:00",
     "input": "0.0000001", "output": "0.0000004", "source": "v2"},
)


@pytest.fixture(scope="module")
def litellm_book() -> PriceBook:
    return load_catalog(LITELLM)


def usage(provider: str, model: str, *, ts: datetime = NOW, **tokens: int) -> Usage:
    return Usage(provider=provider, model=model, ts=ts, **tokens)


# ------------------------------------------------------------------ worked examples (by hand)


def test_openai_cached_reads_are_a_subset_of_input_billed_at_the_cache_rate(litellm_book: PriceBook) -> None:
    # fresh 200 * 0.00000015 = 0.00003; cached 1000 * 0.000000075 = 0.000075; out 300 * 0.0000006 = 0.00018
    priced = price(usage("openai", "gpt-4o-mini", input_tokens=1200, cache_read_tokens=1000,
                         output_tokens=300), litellm_book)
    assert priced.cost == Decimal("0.000285")
    assert isinstance(priced.cost, Decimal)


def test_openai_reasoning_tokens_are_billed_once_at_the_output_rate(litellm_book: PriceBook) -> None:
    # fresh 6000 * 0.0000011 = 0.0066; cached 4000 * 0.00000055 = 0.0022;
    # output 2000 (of which 1500 reasoning, no reasoning rate) * 0.0000044 = 0.0088
    priced = price(usage("openai", "o3-mini", input_tokens=10_000, cache_read_tokens=4_000,
                         output_tokens=2_000, reasoning_tokens=1_500), litellm_book)
    assert priced.cost == Decimal("0.0176")


def test_anthropic_cache_writes_and_reads_have_their_own_rates(litellm_book: PriceBook) -> None:
    # fresh 2000 * 0.000003 = 0.006; read 40000 * 0.0000003 = 0.012;
    # write 8000 * 0.00000375 = 0.03; output 1000 * 0.000015 = 0.015
    priced = price(usage("anthropic", "claude-sonnet-4-5", input_tokens=50_000, cache_read_tokens=40_000,
                         cache_write_tokens=8_000, output_tokens=1_000), litellm_book)
    assert priced.cost == Decimal("0.063")


def test_gemini_below_the_200k_tier_uses_base_rates(litellm_book: PriceBook) -> None:
    # exactly 200k is not above: 200000 * 0.00000125 = 0.25; 1000 * 0.00001 = 0.01
    priced = price(usage("gcp.gemini", "gemini-2.5-pro", input_tokens=200_000, output_tokens=1_000),
                   litellm_book)
    assert priced.cost == Decimal("0.26")


def test_gemini_above_the_200k_tier_prices_the_whole_call_at_tier_rates(litellm_book: PriceBook) -> None:
    # fresh 200000 * 0.0000025 = 0.5; cached 50000 * 0.00000025 = 0.0125;
    # output 2000 (500 thinking) * 0.000015 = 0.03
    priced = price(usage("gcp.gemini", "gemini-2.5-pro", input_tokens=250_000, cache_read_tokens=50_000,
                         output_tokens=2_000, reasoning_tokens=500), litellm_book)
    assert priced.cost == Decimal("0.5425")


def test_reasoning_rate_is_used_when_the_catalog_has_one() -> None:
    book = load_catalog(flyball_catalog({"provider": "x", "model": "thinker", "input": "0.000001",
                                         "output": "0.000002", "reasoning": "0.000003",
                                         "per_request": "0.01"}))
    # fresh 100 * 0.000001 = 0.0001; plain output 10 * 0.000002 = 0.00002;
    # reasoning 30 * 0.000003 = 0.00009; per request 0.01
    priced = price(usage("x", "thinker", input_tokens=100, output_tokens=40, reasoning_tokens=30), book)
    assert priced.cost == Decimal("0.01021")


def test_flyball_tier_inherits_base_rates_it_does_not_override() -> None:
    book = load_catalog(flyball_catalog({"provider": "x", "model": "m", "input": "0.000001", "output": "0.00001",
                                         "tier_threshold_tokens": 1000, "above_threshold": {"input": "0.000002"}}))
    # 2000 * 0.000002 + 10 * 0.00001 (inherited output rate)
    assert price(usage("x", "m", input_tokens=2000, output_tokens=10), book).cost == Decimal("0.0041")


def test_cached_tokens_are_never_double_counted() -> None:
    entry = PriceEntry("p", "m", NOW, Rates(input=Decimal("0.000002"), output=Decimal(0),
                                            cache_read=Decimal(0), cache_write=Decimal(0)))
    # every input token is cached (free here): nothing is charged again as fresh input
    assert cost_of(usage("p", "m", input_tokens=1000, cache_read_tokens=600, cache_write_tokens=400), entry) == 0


TOKENS = st.integers(0, 10_000_000)
RATES = st.decimals(min_value=0, max_value=Decimal("0.001"), places=12)


@settings(max_examples=200, deadline=None, database=None)
@given(TOKENS, TOKENS, st.data(), RATES, RATES)
def test_splitting_tokens_into_cached_or_reasoning_never_changes_cost_at_equal_rates(
        input_tokens: int, output_tokens: int, data: st.DataObject, in_rate: Decimal, out_rate: Decimal) -> None:
    cache_read = data.draw(st.integers(0, input_tokens))
    cache_write = data.draw(st.integers(0, input_tokens - cache_read))
    reasoning = data.draw(st.integers(0, output_tokens))
    entry = PriceEntry("p", "m", NOW, Rates(input=in_rate, output=out_rate))  # cache/reasoning at base rates
    split = usage("p", "m", input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cache_read,
                  cache_write_tokens=cache_write, reasoning_tokens=reasoning)
    assert cost_of(split, entry) == input_tokens * in_rate + output_tokens * out_rate


# ------------------------------------------------------------------ versions and lookup


def test_event_is_priced_with_the_version_in_force_at_its_time() -> None:
    priced = price(usage("openai", "gpt-4o-mini", ts=NOW - timedelta(seconds=1), input_tokens=1000), load_catalog(VERSIONED))
    assert priced.cost == Decimal("0.00015")
    assert priced.price_version == "openai/gpt-4o-mini@2025-01-01T00:00:00Z"


def test_new_version_applies_from_its_effective_time_given_with_an_offset() -> None:
    priced = price(usage("openai", "gpt-4o-mini", ts=NOW, input_tokens=1000), load_catalog(VERSIONED))
    assert priced.cost == Decimal("0.0001")
    assert priced.price_version == "openai/gpt-4o-mini@2026-01-01T12:00:00Z"


def test_event_before_the_first_version_is_unpriced() -> None:
    book = load_catalog(VERSIONED)
    assert book.lookup("openai", "gpt-4o-mini", datetime(2024, 12, 31, tzinfo=UTC)) is None
    priced = price(usage("openai", "gpt-4o-mini", ts=datetime(2024, 12, 31, tzinfo=UTC), input_tokens=1), book)
    assert priced.cost is None and priced.unpriced and priced.price_version == ""


def test_unknown_model_is_unpriced_not_zero(litellm_book: PriceBook) -> None:
    priced = price(usage("openai", "gpt-9-imaginary", input_tokens=1000), litellm_book)
    assert priced.cost is None and priced.unpriced


def test_lookup_ignores_case_of_provider_and_model(litellm_book: PriceBook) -> None:
    entry = litellm_book.lookup("OpenAI", "GPT-4o-mini", NOW)
    assert entry is not None and entry.model == "gpt-4o-mini"


def test_lookup_falls_back_to_the_model_alone_for_an_unknown_provider(litellm_book: PriceBook) -> None:
    entry = litellm_book.lookup("google", "gemini-2.5-pro", NOW)
    assert entry is not None and entry.provider == "gcp.gemini"


# ------------------------------------------------------------------ catalog loading


def test_litellm_catalog_is_recognised_by_content_and_maps_provider_names(litellm_book: PriceBook) -> None:
    entry = litellm_book.lookup("gcp.gemini", "gemini-2.5-pro", NOW)
    assert entry is not None
    assert (entry.rates.input, entry.above.input, entry.tier_threshold_tokens) == (
        Decimal("0.00000125"), Decimal("0.0000025"), 200_000)


def test_litellm_sample_spec_and_non_token_models_are_skipped(litellm_book: PriceBook) -> None:
    assert len(litellm_book) == 4
    assert litellm_book.lookup("openai", "dall-e-3", NOW) is None


def test_flyball_catalog_is_recognised_by_content_and_accepts_bytes() -> None:
    book = load_catalog(VERSIONED.encode(), source="test")
    assert len(book) == 2
    assert book.lookup("openai", "gpt-4o-mini", NOW).source == "v2"


@pytest.mark.parametrize(("text", "names"), [
    (flyball_catalog({"provider": "a", "model": "m", "input": "0.1", "output": "0.2"},
                     {"provider": "b", "model": "m", "input": "-0.000001", "output": "0.2"}), "prices[1].input"),
    (flyball_catalog({"provider": "a", "model": "m", "input": "0.1"}), "prices[0].output"),
    (flyball_catalog({"provider": "a", "model": "m", "input": "1", "output": "1",
                      "effective_from": "2026-01-01T00:00:00"}), "prices[0].effective_from"),
    ("{not json", "not valid JSON"),
    ('{"models": [1, 2, 3]}', "neither flyball format"),
    # a price per million tokens typed into a per-token field
    (flyball_catalog({"provider": "a", "model": "m", "input": "0.000001", "output": "15"}),
     "prices[0].output: 15 USD per token is not below the limit of 1 USD per token (a price per million"),
    (flyball_catalog({"provider": "a", "model": "m", "input": "0.000001", "output": "0.000002",
                      "above_threshold": {"input": "2.5"}, "tier_threshold_tokens": 200000}),
     "prices[0].above_threshold.input: 2.5 USD per token"),
    (flyball_catalog({"provider": "a", "model": "m", "input": "0.000001", "output": "0.000002",
                      "service_tiers": {"priority": {"multiplier": "1e300"}}}),
     "prices[0].service_tiers.priority.multiplier: 1E+300 is above the limit of 1000"),
    (flyball_catalog({"provider": "a", "model": "m", "input": "0.000001", "output": "0.000002",
                      "per_request": "5000"}), "prices[0].per_request: 5000 USD per request is not below the limit"),
])
def test_bad_catalog_error_names_the_entry_and_field(text: str, names: str) -> None:
    with pytest.raises(CatalogError, match=re.escape(names)):
        load_catalog(text)


# ------------------------------------------------------------------ cache TTLs, service tiers, corrections

# Anthropic-style Claude row with LiteLLM's 1-hour cache-write rate, and an OpenAI row with
# batch/flex/priority rates, written as LiteLLM writes them.
LITELLM_TIERS = """{
  "claude-sonnet-4-5": {"cache_creation_input_token_cost": 3.75e-06, "cache_creation_input_token_cost_above_1hr": 6e-06,
                        "cache_read_input_token_cost": 3e-07, "input_cost_per_token": 3e-06,
                        "input_cost_per_token_batches": 1.5e-06, "output_cost_per_token_batches": 7.5e-06,
                        "litellm_provider": "anthropic", "mode": "chat", "output_cost_per_token": 1.5e-05},
  "o4-mini": {"cache_read_input_token_cost": 2.75e-07, "input_cost_per_token": 1.1e-06, "output_cost_per_token": 4.4e-06,
              "input_cost_per_token_batches": 5.5e-07, "output_cost_per_token_batches": 2.2e-06,
              "input_cost_per_token_flex": 5.5e-07, "output_cost_per_token_flex": 2.2e-06,
              "cache_read_input_token_cost_flex": 1.375e-07,
              "input_cost_per_token_priority": 2e-06, "output_cost_per_token_priority": 8e-06,
              "cache_read_input_token_cost_priority": 5e-07, "litellm_provider": "openai", "mode": "chat"},
  "gemini/gemini-1.5-pro": {"input_cost_per_token": 1.25e-06, "output_cost_per_token": 5e-06,
                            "input_cost_per_token_above_128k_tokens": 2.5e-06,
                            "output_cost_per_token_above_128k_tokens": 1e-05, "litellm_provider": "gemini"}
}"""


@pytest.fixture(scope="module")
def tier_book() -> PriceBook:
    return load_catalog(LITELLM_TIERS)


def test_anthropic_one_hour_cache_writes_are_billed_at_the_one_hour_rate(tier_book: PriceBook) -> None:
    # input 30000 = fresh 2000 + read 20000 + writes 8000 (of which 5000 with the 1-hour TTL)
    # fresh 2000 * 0.000003 = 0.006; read 20000 * 0.0000003 = 0.006; 5-min 3000 * 0.00000375 = 0.01125;
    # 1-hour 5000 * 0.000006 = 0.03; output 500 * 0.000015 = 0.0075
    priced = price(usage("anthropic", "claude-sonnet-4-5", input_tokens=30_000, cache_read_tokens=20_000,
                         cache_write_tokens=8_000, cache_write_1h_tokens=5_000, output_tokens=500), tier_book)
    assert priced.cost == Decimal("0.06075")


def test_one_hour_writes_without_a_one_hour_rate_are_unpriced_naming_the_rate_not_billed_at_five_minutes() -> None:
    book = load_catalog(flyball_catalog({"provider": "anthropic", "model": "m", "input": "0.000001", "output": "0",
                                         "cache_write": "0.00000125"}))
    priced = price(usage("anthropic", "m", input_tokens=1000, cache_write_tokens=1000, cache_write_1h_tokens=400), book)
    assert (priced.cost, priced.missing) == (None, "cache_write_1h: no 1-hour cache-write rate")
    # 5-minute writes alone are priced at the cache-write rate
    assert price(usage("anthropic", "m", input_tokens=1000, cache_write_tokens=1000), book).cost == Decimal("0.00125")


@pytest.mark.parametrize(("tier", "expected", "suffix"), [
    # fresh 6000 + cached 4000 of input, 1000 output
    ("", Decimal("0.0066") + Decimal("0.0011") + Decimal("0.0044"), ""),  # standard
    ("batch", Decimal("0.0033") + Decimal("0.00055") + Decimal("0.0022"), "+batch"),  # cache read scaled like input
    ("flex", Decimal("0.0033") + Decimal("0.00055") + Decimal("0.0022"), "+flex"),  # its own cache-read rate
    ("priority", Decimal("0.012") + Decimal("0.002") + Decimal("0.008"), "+priority"),
    ("scale", None, ""),  # a tier with no rates (prepaid): unpriced, and the reason names it
])
def test_openai_service_tiers_from_litellm(tier_book: PriceBook, tier: str, expected: Decimal | None,
                                           suffix: str) -> None:
    priced = price(usage("openai", "o4-mini", input_tokens=10_000, cache_read_tokens=4_000, output_tokens=1_000,
                         service_tier=tier), tier_book)
    assert priced.cost == expected
    if expected is None:
        assert (priced.price_version, priced.missing) == ("", f"service tier {tier}: no rates")
    else:
        assert priced.price_version == "openai/o4-mini@1970-01-01T00:00:00Z" + suffix


def test_anthropic_batch_tier_scales_cache_rates_it_does_not_list(tier_book: PriceBook) -> None:
    # batch is half of every rate: fresh 1000 * 0.0000015 + read 1000 * 0.00000015 + 1h write 1000 * 0.000003
    # + output 100 * 0.0000075
    priced = price(usage("anthropic", "claude-sonnet-4-5", input_tokens=3000, cache_read_tokens=1000,
                         cache_write_tokens=1000, cache_write_1h_tokens=1000, output_tokens=100,
                         service_tier="batch"), tier_book)
    assert priced.cost == Decimal("0.0015") + Decimal("0.00015") + Decimal("0.003") + Decimal("0.00075")


def test_litellm_context_threshold_is_read_from_any_above_nk_key(tier_book: PriceBook) -> None:
    # Gemini 1.5 style: above 128k input tokens the whole call is priced at the higher tier
    priced = price(usage("gcp.gemini", "gemini-1.5-pro", input_tokens=128_001, output_tokens=1_000), tier_book)
    assert priced.cost == 128_001 * Decimal("0.0000025") + Decimal("0.01")


def test_flyball_multiplier_tier_applies_to_above_threshold_rates_but_not_the_request_fee() -> None:
    book = load_catalog(flyball_catalog({
        "provider": "gcp.gemini", "model": "g", "input": "0.000001", "output": "0.00001", "per_request": "0.001",
        "tier_threshold_tokens": 100, "above_threshold": {"input": "0.000002"},
        "service_tiers": {"batch": {"multiplier": "0.5"}}}))
    # above threshold and batch: 200 * 0.000002 * 0.5 + 10 * 0.00001 * 0.5 + 0.001
    priced = price(usage("gcp.gemini", "g", input_tokens=200, output_tokens=10, service_tier="batch"), book)
    assert priced.cost == Decimal("0.00025") + Decimal("0.001")


def test_unknown_service_tier_name_in_a_catalog_is_refused_naming_it() -> None:
    with pytest.raises(CatalogError, match=re.escape("prices[0].service_tiers.turbo")):
        load_catalog(flyball_catalog({"provider": "a", "model": "m", "input": "1", "output": "1",
                                      "service_tiers": {"turbo": {"multiplier": "2"}}}))


def test_service_tier_and_one_hour_writes_are_read_from_attributes_when_the_schema_lacks_them() -> None:
    from flyball.schemas import parse_event
    from flyball.stream_processors.pricing import usage_of

    event = parse_event(json.dumps({
        "schema_version": 1, "event_type": "llm_call", "event_id": "0b6c3f7e-2f1a-4f61-9d8e-6a2b9c1d0f11", "ts": "2026-01-01T11:00:00Z",
        "tenant_id": "acme", "provider": "anthropic", "model": "claude-sonnet-4-5", "input_tokens": 100, "output_tokens": 0,
        "cache_write_tokens": 50, "attributes": {"service_tier": "Batch", "cache_write_1h_tokens": 80}}).encode(), now=NOW)
    u = usage_of(event)
    assert (u.service_tier, u.cache_write_1h_tokens) == ("batch", 50)  # 1-hour part clamped to the writes


def test_a_correction_replaces_the_version_with_the_next_revision() -> None:
    book = load_catalog(VERSIONED)
    fixed = PriceEntry("openai", "gpt-4o-mini", datetime(2025, 1, 1, tzinfo=UTC),
                       Rates(input=Decimal("0.0000002"), output=Decimal("0.0000006")), source="fix")
    new_book, old = book.with_entry(fixed)
    assert old is not None and old.source == "v1"
    assert len(new_book) == len(book) == 2
    priced = price(usage("openai", "gpt-4o-mini", ts=NOW - timedelta(days=1), input_tokens=1000), new_book)
    assert (priced.cost, priced.price_version) == (Decimal("0.0002"), "openai/gpt-4o-mini@2025-01-01T00:00:00Z#r2")
    # the old book is untouched: a worker mid-batch keeps a consistent view
    assert price(usage("openai", "gpt-4o-mini", ts=NOW - timedelta(days=1), input_tokens=1000), book).cost == Decimal("0.00015")


def test_catalog_entry_round_trips_through_its_dict_form(tier_book: PriceBook) -> None:
    from flyball.stream_processors.pricing import entry_from_dict, entry_to_dict

    for entry in [*tier_book.all(), *load_catalog(VERSIONED).all()]:
        again = entry_from_dict(entry_to_dict(entry))
        assert again == entry


def test_builtin_catalog_prices_anthropic_one_hour_writes_and_batch() -> None:
    from flyball.control_plane.runtime import load_prices

    book = load_prices(None)
    # 1000 fresh * 0.000003 + 1000 1-hour writes * 0.000006, halved for batch
    priced = price(usage("anthropic", "claude-sonnet-4-5", input_tokens=2000, cache_write_tokens=1000,
                         cache_write_1h_tokens=1000, service_tier="batch"), book)
    assert priced.cost == Decimal("0.0045")
    assert all(e.source for e in book.all())


_TIERED = """{"format": "flyball.prices/1", "prices": [
  {"provider": "openai", "model": "gpt-4o-mini", "effective_from": "2025-01-01T00:00:00Z", "input": "0.00000015",
   "output": "0.0000006", "cache_read": "0.000000075", "source": "v1"},
  {"provider": "openai", "model": "gpt-4o-mini", "effective_from": "2026-01-01T11:30:00Z", "input": "0.0000002",
   "output": "0.0000008", "source": "v2"},
  {"provider": "anthropic", "model": "claude-sonnet-4-5", "effective_from": "2025-01-01T00:00:00Z",
   "input": "0.000003", "output": "0.000015", "cache_read": "0.0000003", "cache_write": "0.00000375",
   "cache_write_1h": "0.000006", "reasoning": "0.00002", "per_request": "0.0001",
   "tier_threshold_tokens": 200000, "above_threshold": {"input": "0.000006", "output": "0.0000225"},
   "service_tiers": {"batch": {"multiplier": "0.5"}, "priority": {"multiplier": "1.75"}}}]}"""


@settings(max_examples=400, deadline=None)
@given(provider_model=st.sampled_from([("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"),
                                       ("OpenAI", "GPT-4o-mini"), ("x", "unknown")]),
       minutes=st.integers(0, 120), fresh=st.integers(0, 400_000), read=st.integers(0, 50_000),
       write=st.integers(0, 50_000), one_hour_share=st.integers(0, 100), plain_out=st.integers(0, 5_000),
       reasoning=st.integers(0, 5_000), tier=st.sampled_from(["", "batch", "Priority", "standard", "flex"]),
       attributes=st.sampled_from([{}, {"k": "v"}, {"service_tier": "batch"}, {"x.cache_write_1h_tokens": 7}]),
       fast=st.booleans(), plain=st.booleans())
def test_price_event_equals_price_of_usage_of_for_both_decoders(provider_model, minutes, fresh, read, write,
                                                               one_hour_share, plain_out, reasoning, tier,
                                                               attributes, fast, plain) -> None:
    """The worker prices with ``price_event`` (its shortcut skips the Usage view); the result
    must be what ``price(usage_of(event))`` gives, for pydantic and fast-decoded events. Half the
    cases are plain (no tier, no attributes): the shortcut's own path, not its fallback."""
    from flyball.schemas import parse_event
    from flyball.stream_processors.decode import decode_event
    from flyball.stream_processors.pricing import price_event, usage_of

    book = load_catalog(_TIERED)
    if plain:
        tier, attributes = "", {}
    body = {"schema_version": 1, "event_type": "llm_call", "event_id": "0b6c3f7e-2f1a-4f61-9d8e-6a2b9c1d0f11",
            "ts": (NOW - timedelta(minutes=minutes)).isoformat(), "tenant_id": "acme",
            "provider": provider_model[0], "model": provider_model[1], "input_tokens": fresh + read + write,
            "cache_read_tokens": read, "cache_write_tokens": write,
            "cache_write_1h_tokens": write * one_hour_share // 100, "output_tokens": plain_out + reasoning,
            "reasoning_tokens": reasoning, "service_tier": tier, "attributes": attributes}
    raw = json.dumps(body).encode()
    event = decode_event(raw) if fast else parse_event(raw)
    usage = usage_of(event)
    expected = price(usage, book)
    assert price_event(event, book) == (expected.cost, expected.price_version, usage.service_tier,
                                        usage.cache_write_1h_tokens)


def test_a_price_already_in_force_is_restored_even_above_the_limits() -> None:
    # recorded through the API before the limits existed: history, not an input to refuse
    raw = {"provider": "a", "model": "m", "input": "2", "output": "3"}
    with pytest.raises(CatalogError, match="not below the limit"):
        entry_from_dict(raw, "prices[0]")
    assert entry_from_dict(raw, "price_changes.entry", limits=False).rates.output == Decimal(3)
