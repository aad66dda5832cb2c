"""Pricing: the cost of one LLM call, exactly, with the price version in force at its time.

Pure: no I/O (loading a catalog takes already-read text), no clock, ``Decimal`` only.

Token semantics (OpenTelemetry GenAI): ``input_tokens`` includes cached reads and cache writes,
so the billable fresh input is ``input - cache_read - cache_write``; ``reasoning_tokens`` is a
subset of ``output_tokens`` and is billed at the reasoning rate when the catalog has one, at
the output rate otherwise. Peers have double-counted cached tokens or left reasoning tokens
unpriced; these two rules are why we don't.

Cache writes: ``cache_write_tokens`` is every token written to a prompt cache; the part
written with Anthropic's 1-hour TTL (``cache_write_1h_tokens``, a subset) is billed at the
1-hour rate, the rest at the 5-minute rate. Missing rates fall back: 1-hour -> 5-minute ->
input; cache read -> input; reasoning -> output.

Service tiers (``batch``, ``flex``, ``priority``; empty = standard): an entry may carry a
modifier per tier, either a ``multiplier`` applied to every token rate in force (base or
above-threshold; the per-request fee is not scaled) or explicit rates that replace the base
rates (missing ones scaled by the tier's input/base-input ratio). A tier the entry does not
know is billed at standard rates, and the price version says which tier was applied.

Corrections: posting an entry with the same provider, model and ``effective_from`` replaces
it with ``revision + 1``; the version text then ends in ``#r<revision>`` so that repriced
events record which correction priced them.

Two catalog formats are read, told apart by content:
- flyball's own: ``{"format": "flyball.prices/1", "prices": [{provider, model, effective_from,
  input, output, cache_read, cache_write, cache_write_1h, reasoning, per_request,
  tier_threshold_tokens, above_threshold: {...}, service_tiers: {batch: {multiplier} | {rates}},
  revision, source}]}`` with rates as decimal strings in USD per token;
- LiteLLM's ``model_prices_and_context_window.json`` (model -> {litellm_provider,
  input_cost_per_token, cache_creation_input_token_cost_above_1hr, ..._batches, ..._flex,
  ..._priority, ..._above_<N>k_tokens}); it has no dates, so entries take effect from the epoch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ZERO = Decimal(0)
RATE_FIELDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h", "reasoning", "per_request")
SERVICE_TIERS = ("batch", "flex", "priority")


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
    cache_write_1h: Decimal | None = None  # None: billed as cache_write

    def scaled(self, factor: Decimal) -> Rates:
        """Every token rate times ``factor``; the per-request fee is not a token rate."""
        def mul(v: Decimal | None) -> Decimal | None:
            return None if v is None else v * factor
        return Rates(input=self.input * factor, output=self.output * factor, cache_read=mul(self.cache_read),
                     cache_write=mul(self.cache_write), reasoning=mul(self.reasoning),
                     per_request=self.per_request, cache_write_1h=mul(self.cache_write_1h))


@dataclass(frozen=True, slots=True)
class TierModifier:
    """How a service tier changes an entry's prices: a multiplier, or explicit rates."""

    multiplier: Decimal | None = None
    rates: Rates | None = None

    def apply(self, rates: Rates) -> Rates:
        if self.rates is not None:
            return self.rates
        return rates.scaled(self.multiplier if self.multiplier is not None else Decimal(1))


@dataclass(frozen=True, slots=True)
class PriceEntry:
    provider: str
    model: str
    effective_from: datetime
    rates: Rates
    tier_threshold_tokens: int | None = None  # above this many input tokens, ``above`` applies
    above: Rates | None = None
    source: str = ""
    service_tiers: Mapping[str, TierModifier] = field(default_factory=dict)
    revision: int = 1

    _version: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:  # computed once: price() reads it for every event
        base = f"{self.provider}/{self.model}@{self.effective_from.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        object.__setattr__(self, "_version", base if self.revision <= 1 else f"{base}#r{self.revision}")

    @property
    def version(self) -> str:
        return self._version

    def rates_for(self, input_tokens: int, service_tier: str = "") -> tuple[Rates, str]:
        """The rates that apply to a call, and the tier actually applied ('' = standard)."""
        rates = self.rates
        if self.tier_threshold_tokens is not None and self.above is not None and input_tokens > self.tier_threshold_tokens:
            rates = self.above
        tier = service_tier.lower()
        modifier = self.service_tiers.get(tier) if tier else None
        if modifier is None:
            return rates, ""
        return modifier.apply(rates), tier


@dataclass(frozen=True, slots=True)
class Priced:
    cost: Decimal | None  # None: no price known for this model (never silently zero)
    price_version: str

    @property
    def unpriced(self) -> bool:
        return self.cost is None


@dataclass(slots=True)  # not frozen: built once per event, and a frozen __init__ costs 3x
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
    cache_write_1h_tokens: int = 0  # the part of cache_write_tokens written with a 1-hour TTL
    service_tier: str = ""  # batch | flex | priority | '' (standard)


def _attr(attributes: Mapping[str, Any], name: str) -> Any:
    for key in (name, f"x.{name}"):
        if key in attributes:
            return attributes[key]
    return None


def usage_of(event: Any) -> Usage:
    """The priceable view of an ``llm_call`` event. ``service_tier`` and ``cache_write_1h_tokens``
    are read from the event when its schema has them, else from ``attributes`` (a field the
    schema does not know arrives there as ``x.<name>``). A 1-hour count larger than the cache
    writes is clamped to them: the subset rule wins over a confused producer."""
    attributes = event.attributes
    tier = event.service_tier or (attributes and _attr(attributes, "service_tier")) or ""
    one_hour = event.cache_write_1h_tokens
    if not one_hour and attributes:
        one_hour = _attr(attributes, "cache_write_1h_tokens")
    try:
        one_hour_n = max(0, int(one_hour or 0))
    except (TypeError, ValueError):
        one_hour_n = 0
    tier_text = str(tier).strip().lower()
    if tier_text in ("default", "standard", "auto", "on_demand"):
        tier_text = ""
    return Usage(event.provider, event.model, event.ts, event.input_tokens, event.output_tokens,
                 event.cache_read_tokens, event.cache_write_tokens, event.reasoning_tokens,
                 min(one_hour_n, event.cache_write_tokens), tier_text)


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

    def all(self) -> list[PriceEntry]:
        return [e for key in sorted(self.entries) for e in self.entries[key]]

    def with_entry(self, entry: PriceEntry) -> tuple[PriceBook, PriceEntry | None]:
        """A new book with ``entry`` added (the old one is left untouched, so a worker holding it
        mid-batch never sees a half-applied change). An entry with the same provider, model and
        ``effective_from`` is a correction: it replaces the old one with the next revision.
        Returns the new book and the replaced entry, if any."""
        key = (entry.provider.lower(), entry.model.lower())
        old = next((e for e in self.entries.get(key, []) if e.effective_from == entry.effective_from), None)
        if old is not None:
            entry = PriceEntry(entry.provider, entry.model, entry.effective_from, entry.rates,
                               entry.tier_threshold_tokens, entry.above, entry.source, entry.service_tiers,
                               max(entry.revision, old.revision + 1))
        book = PriceBook.of([*self.all(), entry])
        return book, old


def cost_of(usage: Usage, entry: PriceEntry) -> Decimal:
    return _cost(usage, entry.rates_for(usage.input_tokens, usage.service_tier)[0])


def _cost(usage: Usage, rates: Rates) -> Decimal:
    fresh_input = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
    plain_output = usage.output_tokens - usage.reasoning_tokens
    one_hour = min(usage.cache_write_1h_tokens, usage.cache_write_tokens)
    cache_read = rates.cache_read if rates.cache_read is not None else rates.input
    cache_write = rates.cache_write if rates.cache_write is not None else rates.input
    cache_write_1h = rates.cache_write_1h if rates.cache_write_1h is not None else cache_write
    reasoning = rates.reasoning if rates.reasoning is not None else rates.output
    # the common call has no cache or reasoning tokens: skip the zero terms (Decimal ops are slow)
    total = fresh_input * rates.input + plain_output * rates.output + rates.per_request
    if usage.cache_read_tokens:
        total += usage.cache_read_tokens * cache_read
    if usage.cache_write_tokens:
        total += (usage.cache_write_tokens - one_hour) * cache_write + one_hour * cache_write_1h
    if usage.reasoning_tokens:
        total += usage.reasoning_tokens * reasoning
    return total


def price(usage: Usage, book: PriceBook) -> Priced:
    entry = book.lookup(usage.provider, usage.model, usage.ts)
    if entry is None:
        return Priced(cost=None, price_version="")
    rates, tier = entry.rates_for(usage.input_tokens, usage.service_tier)
    version = entry.version if not tier else f"{entry.version}+{tier}"
    return Priced(cost=_cost(usage, rates), price_version=version)


def price_event(event: Any, book: PriceBook) -> tuple[Decimal | None, str, str, int]:
    """Price an ``llm_call`` event: (cost, price version, service tier, 1-hour cache writes),
    exactly what ``price(usage_of(event), book)`` gives.

    The worker's hot path: an event without ``attributes`` and without a service tier (nearly
    every event) is priced from its own fields, skipping the ``Usage`` view (a third of the
    pricing time); any other event goes through :func:`usage_of`, which reads the tier and the
    1-hour count from ``attributes`` too. ``_cost`` only reads token counts, which the event
    has under the same names, and a valid event's 1-hour writes never exceed its cache writes.
    """
    if event.attributes or event.service_tier:
        usage = usage_of(event)
        priced = price(usage, book)
        return priced.cost, priced.price_version, usage.service_tier, usage.cache_write_1h_tokens
    one_hour = min(event.cache_write_1h_tokens, event.cache_write_tokens)
    entry = book.lookup(event.provider, event.model, event.ts)
    if entry is None:
        return None, "", "", one_hour
    return _cost(event, entry.rates_for(event.input_tokens)[0]), entry.version, "", one_hour


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
        cache_write_1h=_opt(pick("cache_write_1h", base.cache_write_1h if base else None), f"{where}.cache_write_1h"),
    )


def _tier_modifier(raw: Any, where: str, base: Rates) -> TierModifier:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected an object with multiplier or rates")
    if "multiplier" in raw:
        return TierModifier(multiplier=_dec(raw["multiplier"], f"{where}.multiplier"))
    if "input" not in raw and "output" not in raw:
        raise CatalogError(f"{where}: needs multiplier or input/output rates")
    return TierModifier(rates=_scaled_fill(raw, where, base))


def _scaled_fill(raw: Mapping[str, Any], where: str, base: Rates) -> Rates:
    """Explicit tier rates; a rate the tier omits is the base rate scaled like its input."""
    factor = Decimal(1)
    if "input" in raw and base.input:
        factor = _dec(raw["input"], f"{where}.input") / base.input
    return _rates(raw, where, base.scaled(factor))


def entry_from_dict(raw: Any, where: str = "entry", *, source: str = "") -> PriceEntry:
    """One entry in flyball's catalog format (also the body of ``POST /v1/prices``)."""
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected an object")
    for name in ("provider", "model", "input", "output"):
        if raw.get(name) in (None, ""):
            raise CatalogError(f"{where}.{name}: required")
    try:
        eff = datetime.fromisoformat(str(raw.get("effective_from", "1970-01-01T00:00:00+00:00")))
    except (ValueError, OverflowError):
        raise CatalogError(f"{where}.effective_from: not an ISO 8601 time in range") from None
    if eff.tzinfo is None:
        raise CatalogError(f"{where}.effective_from: needs a UTC offset")
    try:
        eff = eff.astimezone(UTC)
    except (ValueError, OverflowError):
        raise CatalogError(f"{where}.effective_from: not an ISO 8601 time in range") from None
    rates = _rates(raw, where)
    above = raw.get("above_threshold")
    threshold = raw.get("tier_threshold_tokens")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | str) or not str(threshold).isdigit():
            raise CatalogError(f"{where}.tier_threshold_tokens: expected a non-negative integer")
        threshold = int(threshold)
    tiers_raw = raw.get("service_tiers") or {}
    if not isinstance(tiers_raw, dict):
        raise CatalogError(f"{where}.service_tiers: expected an object keyed by tier")
    tiers = {}
    for name, value in tiers_raw.items():
        if str(name).lower() not in SERVICE_TIERS:
            raise CatalogError(f"{where}.service_tiers.{name}: unknown tier (one of {', '.join(SERVICE_TIERS)})")
        tiers[str(name).lower()] = _tier_modifier(value, f"{where}.service_tiers.{name}", rates)
    revision = raw.get("revision", 1)
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        raise CatalogError(f"{where}.revision: expected an integer >= 1")
    return PriceEntry(
        provider=str(raw["provider"]),
        model=str(raw["model"]),
        effective_from=eff,
        rates=rates,
        tier_threshold_tokens=threshold,
        above=_rates(above, f"{where}.above_threshold", rates) if isinstance(above, dict) else None,
        source=str(raw.get("source") or source),
        service_tiers=tiers,
        revision=revision,
    )


def _rates_dict(rates: Rates) -> dict[str, str | None]:
    return {k: (None if getattr(rates, k) is None else _text(getattr(rates, k))) for k in RATE_FIELDS}


def _text(d: Decimal) -> str:
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def entry_to_dict(entry: PriceEntry) -> dict[str, Any]:
    """flyball's catalog format for one entry: ``entry_from_dict(entry_to_dict(e)) == e``."""
    out: dict[str, Any] = {"provider": entry.provider, "model": entry.model,
                           "effective_from": entry.effective_from.isoformat(), "version": entry.version,
                           "revision": entry.revision, "source": entry.source, **_rates_dict(entry.rates)}
    if entry.tier_threshold_tokens is not None:
        out["tier_threshold_tokens"] = entry.tier_threshold_tokens
    if entry.above is not None:
        out["above_threshold"] = _rates_dict(entry.above)
    if entry.service_tiers:
        out["service_tiers"] = {
            name: ({"multiplier": _text(m.multiplier)} if m.multiplier is not None else _rates_dict(m.rates))  # type: ignore[arg-type]
            for name, m in sorted(entry.service_tiers.items())}
    return out


def _flyball_entries(data: Mapping[str, Any], source: str) -> Iterable[PriceEntry]:
    prices = data.get("prices")
    if not isinstance(prices, list):
        raise CatalogError("prices: expected a list of entries")
    for i, raw in enumerate(prices):
        yield entry_from_dict(raw, f"prices[{i}]", source=source)


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
_LITELLM_TIERS = {"batch": "_batches", "flex": "_flex", "priority": "_priority"}
_LITELLM_ABOVE = re.compile(r"^input_cost_per_token_above_(\d+)k_tokens$")


def litellm_provider(name: str) -> str:
    if name in _LITELLM_PROVIDERS:
        return _LITELLM_PROVIDERS[name]
    if name.startswith("vertex_ai"):
        return "gcp.vertex_ai"
    if name.startswith("bedrock"):
        return "aws.bedrock"
    return name


def _litellm_rates(raw: Mapping[str, Any], where: str, suffix: str, base: Rates | None) -> Rates:
    def get(name: str, fallback: Decimal | None) -> Decimal | None:
        key = name + suffix
        return _dec(raw[key], f"{where}.{key}") if key in raw and raw[key] is not None else fallback

    inp = get("input_cost_per_token", base.input if base else None)
    out = get("output_cost_per_token", base.output if base else None)
    if inp is None or out is None:
        raise CatalogError(f"{where}: no input/output rate")
    cache_write = get("cache_creation_input_token_cost", base.cache_write if base else None)
    return Rates(
        input=inp, output=out,
        cache_read=get("cache_read_input_token_cost", base.cache_read if base else None),
        cache_write=cache_write,
        reasoning=get("output_cost_per_reasoning_token", base.reasoning if base else None),
        cache_write_1h=get("cache_creation_input_token_cost_above_1hr", base.cache_write_1h if base else None),
    )


def _litellm_entries(data: Mapping[str, Any], source: str) -> Iterable[PriceEntry]:
    for key, raw in data.items():
        if key == "sample_spec" or not isinstance(raw, dict):
            continue
        if "input_cost_per_token" not in raw or "output_cost_per_token" not in raw:
            continue  # image/audio/per-second models: not priced per token
        where = f"{key}"
        try:
            rates = _litellm_rates(raw, where, "", None)
            above = None
            threshold = None
            thresholds = sorted(int(m.group(1)) for k in raw if (m := _LITELLM_ABOVE.match(k)))
            if thresholds:  # one context tier is modelled: the lowest one LiteLLM lists
                threshold = thresholds[0] * 1000
                above = _litellm_rates(raw, where, f"_above_{thresholds[0]}k_tokens", rates)
            tiers: dict[str, TierModifier] = {}
            for tier, suffix in _LITELLM_TIERS.items():
                tier_in, tier_out = f"input_cost_per_token{suffix}", f"output_cost_per_token{suffix}"
                if tier_in not in raw and tier_out not in raw:
                    continue
                if tier_in in raw and rates.input:
                    factor = _dec(raw[tier_in], f"{where}.{tier_in}") / rates.input
                elif tier_out in raw and rates.output:
                    factor = _dec(raw[tier_out], f"{where}.{tier_out}") / rates.output
                else:
                    factor = Decimal(1)
                # rates the tier lists are used as written; the others scale like its input
                tiers[tier] = TierModifier(rates=_litellm_rates(raw, where, suffix, rates.scaled(factor)))
        except CatalogError:
            continue  # LiteLLM has a few malformed rows; skip them rather than refuse the whole file
        provider = litellm_provider(str(raw.get("litellm_provider", "")))
        model = key.split("/", 1)[1] if "/" in key and key.split("/", 1)[0] in (raw.get("litellm_provider"), provider) else key
        yield PriceEntry(provider=provider, model=model, effective_from=EPOCH, rates=rates,
                         tier_threshold_tokens=threshold, above=above, source=source, service_tiers=tiers)
