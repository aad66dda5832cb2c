"""Catalog import (``flyball.stream_processors.catalog``): service tier x context tier from both
formats, cache-write durations, exact providers, the default catalog, ``flyball prices update``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from flyball.stream_processors.catalog import build_catalog, catalog_entries, skipped_note
from flyball.stream_processors.pipeline import EVENT_COLUMNS, Pipeline
from flyball.stream_processors.pricing import PriceBook, Usage, load_catalog, price
from hypothesis import given, settings
from hypothesis import strategies as st

D = Decimal
NOW = datetime(2026, 6, 1, tzinfo=UTC)
LITELLM = Path(__file__).parent.parent / "data" / "litellm_subset.json"


def usage(provider: str, model: str, **tokens: object) -> Usage:
    return Usage(provider, model, NOW, **tokens)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return load_catalog(LITELLM.read_bytes())


@pytest.mark.parametrize(("provider", "tier", "expected"), [
    # gemini-2.5-pro at 300k input + 3k output; Google's rates above 200k input tokens:
    # standard $2.50 / $15 per 1M; priority $4.50 / $27; batch and flex $1.25 / $7.50
    ("gemini", "", 300_000 * D("2.5e-6") + 3_000 * D("15e-6")),
    ("gemini", "priority", 300_000 * D("4.5e-6") + 3_000 * D("27e-6")),  # 1.431 (was 0.729)
    ("gemini", "batch", 300_000 * D("1.25e-6") + 3_000 * D("7.5e-6")),  # 0.3975 (was 0.2025)
    ("vertex_ai", "priority", 300_000 * D("4.5e-6") + 3_000 * D("27e-6")),
    ("gcp.vertex_ai", "flex", 300_000 * D("1.25e-6") + 3_000 * D("7.5e-6")),
])
def test_service_tier_above_the_context_threshold_uses_the_tiers_own_above_rates(
        book: PriceBook, provider: str, tier: str, expected: Decimal) -> None:
    priced = price(usage(provider, "gemini-2.5-pro", input_tokens=300_000, output_tokens=3_000, service_tier=tier),
                   book)
    assert priced.cost == expected


def test_explicit_tier_without_rates_above_the_threshold_is_unpriced_with_the_reason() -> None:
    text = json.dumps({"gpt-x": {"litellm_provider": "openai", "input_cost_per_token": 1e-06,
                                 "output_cost_per_token": 2e-06, "input_cost_per_token_above_100k_tokens": 2e-06,
                                 "output_cost_per_token_above_100k_tokens": 4e-06,
                                 "input_cost_per_token_priority": 3e-06, "output_cost_per_token_priority": 6e-06}})
    book = load_catalog(text)
    below = price(usage("openai", "gpt-x", input_tokens=1_000, service_tier="priority"), book)
    above = price(usage("openai", "gpt-x", input_tokens=100_001, service_tier="priority"), book)
    assert below.cost == 1_000 * D("3e-6")
    assert (above.cost, above.missing) == (None, "service tier priority: no rates above 100000 input tokens")


def test_flyball_format_tier_rates_above_the_threshold_round_trip() -> None:
    catalog = {"format": "flyball.prices/1", "prices": [{
        "provider": "gcp.gemini", "model": "g", "input": "0.000001", "output": "0.00001",
        "tier_threshold_tokens": 200000, "above_threshold": {"input": "0.000002", "output": "0.000015"},
        "service_tiers": {"priority": {"input": "0.0000018", "output": "0.000018",
                                       "above_threshold": {"input": "0.0000036", "output": "0.000027"}}}}]}
    book = load_catalog(json.dumps(catalog))
    assert price(usage("gcp.gemini", "g", input_tokens=200_001, output_tokens=10, service_tier="priority"),
                 book).cost == 200_001 * D("3.6e-6") + 10 * D("27e-6")
    rebuilt = build_catalog(json.dumps(catalog), None, source="t", as_of="2026-01-01", providers=None)
    assert catalog_entries(json.dumps(rebuilt)) == catalog_entries(json.dumps(catalog), source="t")


def test_openai_ultrafast_tier_is_read_from_litellm() -> None:
    text = json.dumps({"gpt-u": {"litellm_provider": "openai", "input_cost_per_token": 2e-06,
                                 "output_cost_per_token": 1e-05, "input_cost_per_token_ultrafast": 6e-06,
                                 "output_cost_per_token_ultrafast": 3e-05, "input_cost_per_token_balanced": 1e-06}})
    book = load_catalog(text)
    assert price(usage("openai", "gpt-u", input_tokens=1_000, output_tokens=10, service_tier="ultrafast"),
                 book).cost == 1_000 * D("6e-6") + 10 * D("30e-6")
    assert price(usage("openai", "gpt-u", input_tokens=1, service_tier="balanced"), book).missing == (
        "service tier balanced: no rates")


def test_twelve_hour_writes_need_a_twelve_hour_rate(book: PriceBook) -> None:
    # gpt-5.6: input $4 / 1M, 30-minute write $5, 12-hour write $10; gpt-5 lists no 12-hour rate
    ok = price(usage("openai", "gpt-5.6", input_tokens=3_000, cache_write_tokens=3_000, cache_write_12h_tokens=1_000),
               book)
    assert ok.cost == 2_000 * D("5e-6") + 1_000 * D("10e-6")
    missing = price(usage("openai", "gpt-5", input_tokens=3_000, cache_write_tokens=3_000,
                          cache_write_12h_tokens=1_000), book)
    assert (missing.cost, missing.missing) == (None, "cache_write_12h: no 12-hour cache-write rate")


def test_providers_resolve_exactly_and_only_unknown_ones_fall_back_to_the_model(book: PriceBook) -> None:
    gemini = book.lookup("gemini", "gemini-2.5-pro", NOW)
    vertex = book.lookup("vertex_ai", "gemini-2.5-pro", NOW)
    assert gemini is not None and vertex is not None and (gemini.provider, vertex.provider) == (
        "gcp.gemini", "gcp.vertex_ai")
    assert book.lookup("anthropic", "gpt-5", NOW) is None  # a known provider never borrows another's price
    proxy = book.lookup("my-proxy", "claude-opus-4-5", NOW)
    assert proxy is not None and proxy.provider == "anthropic"  # one provider has it: unambiguous
    assert book.lookup("my-proxy", "gemini-2.5-pro", NOW) is None  # two providers have it: ambiguous


def test_build_catalog_records_provenance_and_applies_corrections() -> None:
    corrections = json.dumps({"format": "flyball.prices/1", "prices": [
        {"provider": "anthropic", "model": "claude-opus-4-5", "effective_from": "2025-11-24T00:00:00+00:00",
         "input": "0.000005", "output": "0.000025", "source": "fix", "as_of": "2025-11-30"}]})
    catalog = build_catalog(LITELLM.read_bytes(), corrections, source="litellm x", as_of="2026-12-04",
                            providers=("openai", "anthropic"))
    rows = {(r["provider"], r["model"]): r for r in catalog["prices"]}
    assert ("gcp.gemini", "gemini-2.5-pro") not in rows
    assert (rows[("openai", "gpt-5")]["source"], rows[("openai", "gpt-5")]["as_of"]) == ("litellm x", "2026-12-04")
    fixed = rows[("anthropic", "claude-opus-4-5")]
    assert (fixed["source"], fixed["as_of"], fixed["effective_from"]) == ("fix", "2025-11-30",
                                                                          "2025-11-24T00:00:00+00:00")
    assert catalog["format"] == "flyball.prices/1" and "litellm x" in catalog["note"]


def test_builtin_catalog_covers_current_models_with_provenance() -> None:
    from flyball.control_plane.runtime import load_prices

    built_in = load_prices(None)
    for provider, model in [("openai", "o3"), ("openai", "o4-mini"), ("openai", "gpt-5"), ("openai", "gpt-5-mini"),
                            ("openai", "gpt-5.6"), ("anthropic", "claude-sonnet-4-6"), ("anthropic", "claude-opus-4-5"),
                            ("anthropic", "claude-opus-4-1"), ("gemini", "gemini-2.5-pro"),
                            ("gemini", "gemini-2.5-flash")]:
        entry = built_in.lookup(provider, model, NOW)
        assert entry is not None, (provider, model)
        assert entry.source and entry.as_of, (provider, model)
    o3 = built_in.lookup("openai", "o3", NOW)
    assert o3 is not None and set(o3.service_tiers) == {"batch", "flex", "priority"}


def test_prices_update_cli_reads_either_format_by_content(tmp_path: Path) -> None:
    from flyball.control_plane.cli import main

    out = tmp_path / "prices.json"
    assert main(["prices", "update", "--from", str(LITELLM), "--out", str(out), "--as-of", "2026-12-04"]) == 0
    first = json.loads(out.read_text())
    again = tmp_path / "again.json"
    assert main(["prices", "update", "--from", str(out), "--out", str(again), "--no-corrections"]) == 0
    assert catalog_entries(again.read_bytes()) == catalog_entries(out.read_bytes())
    assert any(r["model"] == "claude-opus-4-1" for r in first["prices"])  # flyball's correction is laid over
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": []}')
    assert main(["prices", "update", "--from", str(bad), "--out", str(tmp_path / "x.json")]) == 2


def test_unpriced_alert_names_provider_model_tier_and_what_is_missing(book: PriceBook) -> None:
    def raw(i: int, **fields: object) -> bytes:
        body = {"schema_version": 1, "event_type": "llm_call", "event_id": f"0b6c3f7e-2f1a-4f61-9d8e-6a2b9c1d0f{i:02x}",
                "ts": "2026-06-01T00:00:00Z", "tenant_id": "acme", "provider": "anthropic",
                "model": "claude-sonnet-4-6", "input_tokens": 100, "output_tokens": 0, **fields}
        return json.dumps(body).encode()

    result = Pipeline(lambda: book).process([raw(1), raw(2, service_tier="priority"), raw(3, service_tier="priority"),
                                             raw(4, model="claude-nine")], now=None)
    alerts = [a for a in result.alerts if a.kind == "unpriced_model"]
    assert [a.summary.split(";")[0] for a in alerts] == [
        "unpriced: provider anthropic, model claude-sonnet-4-6, service tier priority: service tier priority: no rates",
        "unpriced: provider anthropic, model claude-nine: no price for this provider and model"]
    assert len({a.alert_id for a in alerts}) == 2
    costs = [dict(zip(EVENT_COLUMNS, row, strict=True))["cost_usd"] for row in result.rows]
    assert costs == [100 * D("3e-6"), None, None, None]


@settings(max_examples=300, deadline=None)
@given(fresh=st.integers(0, 400_000), read=st.integers(0, 100_000), five=st.integers(0, 50_000),
       hour=st.integers(0, 50_000), plain_out=st.integers(0, 20_000), reasoning=st.integers(0, 20_000),
       multiplier=st.sampled_from(["0.5", "1.75", "2"]))
def test_a_multiplier_tier_is_exactly_the_standard_price_scaled_below_and_above_the_threshold(
        fresh: int, read: int, five: int, hour: int, plain_out: int, reasoning: int, multiplier: str) -> None:
    book = load_catalog(json.dumps({"format": "flyball.prices/1", "prices": [{
        "provider": "anthropic", "model": "m", "input": "0.000003", "output": "0.000015", "cache_read": "0.0000003",
        "cache_write": "0.00000375", "cache_write_1h": "0.000006", "reasoning": "0.00002",
        "tier_threshold_tokens": 200000, "above_threshold": {"input": "0.000006", "output": "0.0000225",
                                                             "cache_read": "0.0000006", "cache_write": "0.0000075",
                                                             "cache_write_1h": "0.000012"},
        "service_tiers": {"batch": {"multiplier": multiplier}}}]}))
    tokens = {"input_tokens": fresh + read + five + hour, "cache_read_tokens": read, "cache_write_tokens": five + hour,
              "cache_write_1h_tokens": hour, "output_tokens": plain_out + reasoning, "reasoning_tokens": reasoning}
    standard = price(usage("anthropic", "m", **tokens), book).cost
    batch = price(usage("anthropic", "m", service_tier="batch", **tokens), book).cost
    assert standard is not None and batch == standard * D(multiplier)



def test_unreadable_litellm_rows_are_left_out_and_reported_and_the_rest_is_read() -> None:
    data = json.loads(LITELLM.read_text())
    skipped: list[str] = []
    readable = catalog_entries(json.dumps(data), skipped=skipped)
    assert readable and skipped == []  # LiteLLM's own rows all read
    data["gpt-5"]["output_cost_per_token"] = "abc"
    data["claude-opus-4-5"]["output_cost_per_token"] = 25  # its price per million, in the per-token field
    data["odd-row"] = [1, 2]
    entries = catalog_entries(json.dumps(data), skipped=skipped)
    assert {(e.provider, e.model) for e in entries} == \
        {(e.provider, e.model) for e in readable} - {("openai", "gpt-5"), ("anthropic", "claude-opus-4-5")}
    assert skipped == ["gpt-5.output_cost_per_token: not a decimal number: 'abc'",
                       "claude-opus-4-5.output: 25 USD per token is not below the limit of 1 USD per token "
                       "(a price per million tokens in a per-token field?)",
                       "odd-row: expected an object, not list"]


def test_skipped_note_counts_every_row_and_shows_the_first() -> None:
    assert skipped_note(["a: x", "b: y", "c: z"], shown=2) == \
        "3 price rows could not be read and were left out: a: x; b: y; and 1 more"
