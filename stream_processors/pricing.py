"""Pricing: the cost of one LLM call, exactly, with the price version in force at its time.

Pure: no I/O (loading a catalog takes already-read text), no clock, ``Decimal`` only.

Token semantics (OpenTelemetry GenAI): ``input_tokens`` includes cached reads and cache writes,
so the billable fresh input is ``input - cache_read - cache_write``; ``reasoning_tokens`` is a
subset of ``output_tokens`` and is billed at the reasoning rate when the catalog has one, at
the output rate otherwise. Peers have double-counted cached tokens or left reasoning tokens
unpriced; these two rules are why we don't.

Two catalog formats are read, told apart by content:
- flyball's own: ``{"format": "flyball.prices/1", "prices": [{provider, model, effective_from,
  input, output, cache_read, cache_write, reasoning, per_request, tier_threshold_tokens,
  above_threshold: {...}, source}]}`` with rates as decimal strings in USD per token;
- LiteLLM's ``model_prices_and_context_window.json`` (model -> {litellm_provider,
  input_cost_per_token, ...}); it has no dates, so its entries take effect from the epoch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ZERO = Decimal(0)
RATE_FIELDS = ("input", "output", "cache_read", "cache_write", "reasoning", "per_request")


class CatalogError(ValueError):
    """A price catalog that cannot be loaded; the message names the entry and field."""


@dataclass(frozen=True, slots=True)
class Rates:
    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None  # None: billed as input
    cache_write: Decimal | None = None  # None: billed as input
    reasoning: Decimal | None = None  # None: billed as output
    per_request: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class PriceEntry:
    provider: str
    model: str
    effective_from: datetime
    rates: Rates
    tier_threshold_tokens: int | None = None  # above this many input tokens, ``above`` applies
    above: Rates | None = None
    source: str = ""

    @property
    def version(self) -> str:
        return f"{self.provider}/{self.model}@{self.effective_from.strftime('%Y-%m-%dT%H:%M:%SZ')}"


@dataclass(frozen=True, slots=True)
class Priced:
    cost: Decimal | None  # None: no price known for this model (never silently zero)
    price_version: str

    @property
    def unpriced(self) -> bool:
        return self.cost is None


@dataclass(frozen=True, slots=True)
class Usage:
    """The priceable part of an ``llm_call`` event (a plain view, so pricing needs no schema)."""

    provider: str
    model: str
    ts: datetime
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(slots=True)
class PriceBook:
    """Entries indexed by (provider, model), each list sorted by ``effective_from``."""

    entries: dict[tuple[str, str], list[PriceEntry]] = field(default_factory=dict)
    by_model: dict[str, list[PriceEntry]] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: Iterable[PriceEntry]) -> PriceBook:
        book = cls()
        for entry in entries:
            book.add(entry)
        return book

    def add(self, entry: PriceEntry) -> None:
        key = (entry.provider.lower(), entry.model.lower())
        versions = self.entries.setdefault(key, [])
        versions[:] = [e for e in versions if e.effective_from != entry.effective_from]
        versions.append(entry)
        versions.sort(key=lambda e: e.effective_from)
        self.by_model.setdefault(entry.model.lower(), [])
        same = self.by_model[entry.model.lower()]
        same[:] = [e for e in same if not (e.provider == entry.provider and e.effective_from == entry.effective_from)]
        same.append(entry)
        same.sort(key=lambda e: (e.effective_from, e.provider))

    def lookup(self, provider: str, model: str, at: datetime) -> PriceEntry | None:
        """The entry in force at ``at``: exact provider+model first, then the model alone."""
        versions = self.entries.get((provider.lower(), model.lower()))
        if versions is None:
            versions = self.by_model.get(model.lower())
            if versions is None:
                return None
        found = None
        for entry in versions:
            if entry.effective_from <= at:
                found = entry
            else:
                break
        return found

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())


def cost_of(usage: Usage, entry: PriceEntry) -> Decimal:
    rates = entry.rates
    if entry.tier_threshold_tokens is not None and entry.above is not None and usage.input_tokens > entry.tier_threshold_tokens:
        rates = entry.above
    fresh_input = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
    plain_output = usage.output_tokens - usage.reasoning_tokens
    cache_read = rates.cache_read if rates.cache_read is not None else rates.input
    cache_write = rates.cache_write if rates.cache_write is not None else rates.input
    reasoning = rates.reasoning if rates.reasoning is not None else rates.output
    return (
        fresh_input * rates.input
        + usage.cache_read_tokens * cache_read
        + usage.cache_write_tokens * cache_write
        + plain_output * rates.output
        + usage.reasoning_tokens * reasoning
        + rates.per_request
    )


def price(usage: Usage, book: PriceBook) -> Priced:
    entry = book.lookup(usage.provider, usage.model, usage.ts)
    if entry is None:
        return Priced(cost=None, price_version="")
    return Priced(cost=cost_of(usage, entry), price_version=entry.version)


# ---------------------------------------------------------------- catalog loading (pure: text in)


def load_catalog(text: str | bytes, *, source: str = "") -> PriceBook:
    """Parse flyball's catalog format or LiteLLM's, told apart by content."""
    try:
        data = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"price catalog is not valid JSON: {exc}") from None
    if isinstance(data, dict) and str(data.get("format", "")).startswith("flyball.prices"):
        return PriceBook.of(_flyball_entries(data, source))
    if isinstance(data, dict) and any(isinstance(v, dict) and ("input_cost_per_token" in v or "litellm_provider" in v) for v in data.values()):
        return PriceBook.of(_litellm_entries(data, source or "litellm"))
    raise CatalogError("price catalog: neither flyball format (format: flyball.prices/1) nor LiteLLM's model map")


def _dec(value: Any, where: str) -> Decimal:
    try:
        result = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise CatalogError(f"{where}: not a decimal number: {value!r}") from None
    if not result.is_finite() or result < 0:
        raise CatalogError(f"{where}: must be a finite, non-negative number")
    return result


def _opt(value: Any, where: str) -> Decimal | None:
    return None if value is None else _dec(value, where)


def _rates(raw: Mapping[str, Any], where: str, base: Rates | None = None) -> Rates:
    def pick(name: str, default: Any) -> Any:
        return raw[name] if name in raw else default

    return Rates(
        input=_dec(pick("input", base.input if base else None), f"{where}.input"),
        output=_dec(pick("output", base.output if base else None), f"{where}.output"),
        cache_read=_opt(pick("cache_read", base.cache_read if base else None), f"{where}.cache_read"),
        cache_write=_opt(pick("cache_write", base.cache_write if base else None), f"{where}.cache_write"),
        reasoning=_opt(pick("reasoning", base.reasoning if base else None), f"{where}.reasoning"),
        per_request=_dec(pick("per_request", base.per_request if base else 0), f"{where}.per_request"),
    )


def _flyball_entries(data: Mapping[str, Any], source: str) -> Iterable[PriceEntry]:
    prices = data.get("prices")
    if not isinstance(prices, list):
        raise CatalogError("prices: expected a list of entries")
    for i, raw in enumerate(prices):
        where = f"prices[{i}]"
        if not isinstance(raw, dict):
            raise CatalogError(f"{where}: expected an object")
        for name in ("provider", "model", "input", "output"):
            if raw.get(name) in (None, ""):
                raise CatalogError(f"{where}.{name}: required")
        try:
            eff = datetime.fromisoformat(str(raw.get("effective_from", "1970-01-01T00:00:00+00:00")))
            if eff.tzinfo is None:
                raise CatalogError(f"{where}.effective_from: needs a UTC offset")
            eff = eff.astimezone(UTC)
        except (ValueError, OverflowError):
            raise CatalogError(f"{where}.effective_from: not an ISO 8601 time in range") from None
        rates = _rates(raw, where)
        above = raw.get("above_threshold")
        threshold = raw.get("tier_threshold_tokens")
        yield PriceEntry(
            provider=str(raw["provider"]),
            model=str(raw["model"]),
            effective_from=eff,
            rates=rates,
            tier_threshold_tokens=int(threshold) if threshold is not None else None,
            above=_rates(above, f"{where}.above_threshold", rates) if isinstance(above, dict) else None,
            source=str(raw.get("source") or source),
        )


_LITELLM_PROVIDERS = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "azure": "azure.ai.openai",
    "mistral": "mistral_ai",
    "groq": "groq",
    "deepseek": "deepseek",
    "xai": "x_ai",
    "cohere_chat": "cohere",
    "cohere": "cohere",
    "perplexity": "perplexity",
}


def litellm_provider(name: str) -> str:
    if name in _LITELLM_PROVIDERS:
        return _LITELLM_PROVIDERS[name]
    if name.startswith("vertex_ai"):
        return "gcp.vertex_ai"
    if name.startswith("bedrock"):
        return "aws.bedrock"
    return name


def _litellm_entries(data: Mapping[str, Any], source: str) -> Iterable[PriceEntry]:
    for key, raw in data.items():
        if key == "sample_spec" or not isinstance(raw, dict):
            continue
        if "input_cost_per_token" not in raw or "output_cost_per_token" not in raw:
            continue  # image/audio/per-second models: not priced per token
        where = f"{key}"
        try:
            rates = Rates(
                input=_dec(raw["input_cost_per_token"], f"{where}.input_cost_per_token"),
                output=_dec(raw["output_cost_per_token"], f"{where}.output_cost_per_token"),
                cache_read=_opt(raw.get("cache_read_input_token_cost"), f"{where}.cache_read_input_token_cost"),
                cache_write=_opt(raw.get("cache_creation_input_token_cost"), f"{where}.cache_creation_input_token_cost"),
                reasoning=_opt(raw.get("output_cost_per_reasoning_token"), f"{where}.output_cost_per_reasoning_token"),
            )
            above = None
            threshold = None
            if "input_cost_per_token_above_200k_tokens" in raw:
                threshold = 200_000
                above = Rates(
                    input=_dec(raw["input_cost_per_token_above_200k_tokens"], f"{where}.input_cost_per_token_above_200k_tokens"),
                    output=_dec(raw.get("output_cost_per_token_above_200k_tokens", raw["output_cost_per_token"]),
                                f"{where}.output_cost_per_token_above_200k_tokens"),
                    cache_read=_opt(raw.get("cache_read_input_token_cost_above_200k_tokens", raw.get("cache_read_input_token_cost")),
                                    f"{where}.cache_read_input_token_cost_above_200k_tokens"),
                    cache_write=_opt(raw.get("cache_creation_input_token_cost_above_200k_tokens", raw.get("cache_creation_input_token_cost")),
                                     f"{where}.cache_creation_input_token_cost_above_200k_tokens"),
                    reasoning=rates.reasoning,
                )
        except CatalogError:
            continue  # LiteLLM has a few malformed rows; skip them rather than refuse the whole file
        provider = litellm_provider(str(raw.get("litellm_provider", "")))
        model = key.split("/", 1)[1] if "/" in key and key.split("/", 1)[0] in (raw.get("litellm_provider"), provider) else key
        yield PriceEntry(provider=provider, model=model, effective_from=EPOCH, rates=rates,
                         tier_threshold_tokens=threshold, above=above, source=source)
