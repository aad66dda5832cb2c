"""Pricing: the cost of one LLM call, exactly, with the price version in force at its time.

Pure: no I/O, no clock, ``Decimal`` only. This module is the price model (rates, entries, the
book, the cost of a call); reading and writing catalogs (flyball's format, LiteLLM's) is
:mod:`flyball.stream_processors.catalog`, whose names are re-exported here.

Token semantics (OpenTelemetry GenAI): ``input_tokens`` includes cached reads and cache writes,
so the billable fresh input is ``input - cache_read - cache_write``; ``reasoning_tokens`` is a
subset of ``output_tokens`` and is billed at the reasoning rate when the catalog has one, at
the output rate otherwise. Peers have double-counted cached tokens or left reasoning tokens
unpriced; these two rules are why we don't.

Cache writes: ``cache_write_tokens`` is every token written to a prompt cache, billed at the
model's default cache-write rate (Anthropic: 5 minutes; OpenAI: 30 minutes) except two
subsets: ``cache_write_1h_tokens`` (Anthropic's 1-hour TTL) at ``cache_write_1h`` and
``cache_write_12h_tokens`` (OpenAI's 12-hour retention) at ``cache_write_12h``. A missing
default cache-write or cache-read rate is billed as input (OpenAI's older models bill writes
as input); a missing 1-hour or 12-hour rate makes the call *unpriced* with a reason naming
it, never a silent price at the shorter duration's rate.

Context tiers: above ``tier_threshold_tokens`` input tokens the whole call is priced at the
``above`` rates. Service tiers (``batch``, ``flex``, ``priority``, ``ultrafast``; '' = standard) compose with
them: a tier is either a ``multiplier`` applied to the rates in force (base or above; the
per-request fee is not scaled), or explicit rates with their own ``above`` rates. A call above
the threshold in an explicit tier without above-threshold rates, a tier the entry has no rates
for, and a tier flyball does not know (``scale``, ``provisioned``, ...) are unpriced with a
reason, because every guess there has been wrong by up to 2x.

Providers resolve exactly, by their OpenTelemetry names (``gcp.gemini`` and
``gcp.vertex_ai`` are different price lists) after aliases (``gemini`` -> ``gcp.gemini``,
``vertex_ai`` -> ``gcp.vertex_ai``, ...). Only a provider the book knows nothing about falls
back to the model alone, and only when one provider in the book has that model.

Corrections: posting an entry with the same provider, model and ``effective_from`` replaces
it with ``revision + 1``; the version text then ends in ``#r<revision>`` so that repriced
events record which correction priced them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from flyball.schemas import normalize_service_tier

from .errors import InvalidInput

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ZERO = Decimal(0)
RATE_FIELDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h", "reasoning", "per_request",
               "cache_write_12h")
SERVICE_TIERS = ("batch", "flex", "priority", "ultrafast")  # ultrafast: an OpenAI tier


class CatalogError(InvalidInput):
    """A price catalog that cannot be loaded; the message names the entry and field."""


# provider spellings (SDKs, LiteLLM, OpenTelemetry's older gen_ai.system values) -> the
# OpenTelemetry gen_ai.provider.name the book is keyed by
PROVIDER_ALIASES: Final = {
    "openai": "openai", "text-completion-openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini", "google": "gcp.gemini", "google_genai": "gcp.gemini", "google-genai": "gcp.gemini",
    "google_ai_studio": "gcp.gemini", "gcp.gemini": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai", "vertexai": "gcp.vertex_ai", "vertex": "gcp.vertex_ai",
    "gcp.vertex_ai": "gcp.vertex_ai",
    "azure": "azure.ai.openai", "azure_openai": "azure.ai.openai", "azure.ai.openai": "azure.ai.openai",
    "azure_ai": "azure.ai.inference", "azure.ai.inference": "azure.ai.inference",
    "bedrock": "aws.bedrock", "bedrock_converse": "aws.bedrock", "aws.bedrock": "aws.bedrock",
    "mistral": "mistral_ai", "mistralai": "mistral_ai", "mistral_ai": "mistral_ai",
    "xai": "x_ai", "x_ai": "x_ai",
    "cohere": "cohere", "cohere_chat": "cohere",
}


def canonical_provider(name: str) -> str:
    """The book's name for a provider spelling (lowercased; unknown names unchanged)."""
    text = name.strip().lower()
    found = PROVIDER_ALIASES.get(text)
    if found is not None:
        return found
    if text.startswith("vertex_ai"):  # LiteLLM: vertex_ai-language-models, vertex_ai-anthropic_models, ...
        return "gcp.vertex_ai"
    if text.startswith("bedrock"):
        return "aws.bedrock"
    return text


@dataclass(frozen=True, slots=True)
class Rates:
    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None  # None: billed as input
    cache_write: Decimal | None = None  # default duration (5 min / 30 min); None: billed as input
    reasoning: Decimal | None = None  # None: billed as output
    per_request: Decimal = ZERO
    cache_write_1h: Decimal | None = None  # None: 1-hour writes are unpriced
    cache_write_12h: Decimal | None = None  # None: 12-hour writes are unpriced

    def scaled(self, factor: Decimal) -> Rates:
        """Every token rate times ``factor``; the per-request fee is not a token rate."""
        def mul(v: Decimal | None) -> Decimal | None:
            return None if v is None else v * factor
        return Rates(input=self.input * factor, output=self.output * factor, cache_read=mul(self.cache_read),
                     cache_write=mul(self.cache_write), reasoning=mul(self.reasoning),
                     per_request=self.per_request, cache_write_1h=mul(self.cache_write_1h),
                     cache_write_12h=mul(self.cache_write_12h))


@dataclass(frozen=True, slots=True)
class TierModifier:
    """How a service tier changes an entry's prices: a multiplier of the rates in force, or
    explicit rates (``rates`` below the context threshold, ``above`` beyond it)."""

    multiplier: Decimal | None = None
    rates: Rates | None = None
    above: Rates | None = None


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
    as_of: str = ""  # the date the rates were read from ``source`` (YYYY-MM-DD), if known

    _version: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:  # computed once: price() reads it for every event
        base = f"{self.provider}/{self.model}@{self.effective_from.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        object.__setattr__(self, "_version", base if self.revision <= 1 else f"{base}#r{self.revision}")

    @property
    def version(self) -> str:
        return self._version

    def resolve(self, input_tokens: int, service_tier: str = "") -> tuple[Rates | None, str, str]:
        """The rates that apply to a call, the tier applied ('' = standard) and, when there are
        no rates, what is missing (for the unpriced alert)."""
        above = (self.tier_threshold_tokens is not None and self.above is not None
                 and input_tokens > self.tier_threshold_tokens)
        in_force = self.above if above and self.above is not None else self.rates
        tier = normalize_service_tier(service_tier) if service_tier else ""
        if not tier:
            return in_force, "", ""
        modifier = self.service_tiers.get(tier)
        if modifier is None:
            return None, tier, f"service tier {tier}: no rates"
        if modifier.multiplier is not None:
            return in_force.scaled(modifier.multiplier), tier, ""
        if above:
            if modifier.above is None:
                return None, tier, f"service tier {tier}: no rates above {self.tier_threshold_tokens} input tokens"
            return modifier.above, tier, ""
        return modifier.rates, tier, ""

    def rates_for(self, input_tokens: int, service_tier: str = "") -> tuple[Rates | None, str]:
        """``resolve`` without the reason."""
        rates, tier, _ = self.resolve(input_tokens, service_tier)
        return rates, tier


@dataclass(frozen=True, slots=True)
class Priced:
    cost: Decimal | None  # None: no price known for this call (never silently zero)
    price_version: str
    missing: str = ""  # why it is unpriced: what the catalog lacks

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
    service_tier: str = ""  # batch | flex | priority | '' (standard) | another tier (unpriced)
    cache_write_12h_tokens: int = 0  # the part of cache_write_tokens written with 12-hour retention


def _attr(attributes: Mapping[str, Any], name: str) -> Any:
    for key in (name, f"x.{name}"):
        if key in attributes:
            return attributes[key]
    return None


def _count(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def usage_of(event: Any) -> Usage:
    """The priceable view of an ``llm_call`` event. ``service_tier`` and the 1-hour / 12-hour
    cache writes are read from the event when its schema has them, else from ``attributes`` (a
    field the schema does not know arrives there as ``x.<name>``). Durations that add up to more
    than the cache writes are clamped to them (1-hour first): the subset rule wins over a
    confused producer."""
    attributes = event.attributes
    tier = event.service_tier or (attributes and _attr(attributes, "service_tier")) or ""
    one_hour: Any = event.cache_write_1h_tokens
    if not one_hour and attributes:
        one_hour = _attr(attributes, "cache_write_1h_tokens")
    twelve: Any = getattr(event, "cache_write_12h_tokens", 0)
    if not twelve and attributes:
        twelve = _attr(attributes, "cache_write_12h_tokens")
    writes = event.cache_write_tokens
    one_hour_n = min(_count(one_hour), writes)
    return Usage(event.provider, event.model, event.ts, event.input_tokens, event.output_tokens,
                 event.cache_read_tokens, writes, event.reasoning_tokens, one_hour_n,
                 normalize_service_tier(str(tier)), min(_count(twelve), writes - one_hour_n))


@dataclass(slots=True)
class PriceBook:
    """Entries indexed by (provider, model), each list sorted by ``effective_from``; the
    provider is the canonical name (:func:`canonical_provider`)."""

    entries: dict[tuple[str, str], list[PriceEntry]] = field(default_factory=dict)
    by_model: dict[str, list[PriceEntry]] = field(default_factory=dict)
    providers: set[str] = field(default_factory=set)
    # provider spelling -> canonical name, memoised for the hot path (bounded: spellings are few)
    _canonical: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, entries: Iterable[PriceEntry]) -> PriceBook:
        """What ``add`` of each entry in turn gives, in linear time plus one sort per model."""
        by_key: dict[tuple[str, str], dict[datetime, PriceEntry]] = {}
        by_model: dict[str, dict[tuple[str, datetime], PriceEntry]] = {}
        book = cls()
        for entry in entries:
            model = entry.model.lower()
            provider = canonical_provider(entry.provider)
            book.providers.add(provider)
            by_key.setdefault((provider, model), {})[entry.effective_from] = entry
            by_model.setdefault(model, {})[(provider, entry.effective_from)] = entry
        for key, versions in by_key.items():
            book.entries[key] = sorted(versions.values(), key=lambda e: e.effective_from)
        for model, same in by_model.items():
            book.by_model[model] = sorted(same.values(), key=lambda e: (e.effective_from, e.provider))
        return book

    def add(self, entry: PriceEntry) -> None:
        provider = canonical_provider(entry.provider)
        key = (provider, entry.model.lower())
        self.providers.add(provider)
        versions = self.entries.setdefault(key, [])
        versions[:] = [e for e in versions if e.effective_from != entry.effective_from]
        versions.append(entry)
        versions.sort(key=lambda e: e.effective_from)
        same = self.by_model.setdefault(entry.model.lower(), [])
        same[:] = [e for e in same if not (canonical_provider(e.provider) == provider
                                           and e.effective_from == entry.effective_from)]
        same.append(entry)
        same.sort(key=lambda e: (e.effective_from, e.provider))

    def lookup(self, provider: str, model: str, at: datetime) -> PriceEntry | None:
        """The entry in force at ``at`` for exactly this provider and model. A provider the
        book does not know at all falls back to the model alone if one provider has it."""
        canonical = self._canonical.get(provider)
        if canonical is None:
            canonical = canonical_provider(provider)
            if len(self._canonical) < 1024:
                self._canonical[provider] = canonical
        versions = self.entries.get((canonical, model.lower()))
        if versions is None:
            if canonical in self.providers:
                return None
            versions = self.by_model.get(model.lower())
            if versions is None or len({canonical_provider(e.provider) for e in versions}) != 1:
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
        book, ((_, old),) = self.with_entries([entry])
        return book, old

    def with_entries(self, entries: Iterable[PriceEntry]) -> tuple[PriceBook, list[tuple[PriceEntry, PriceEntry | None]]]:
        """``with_entry`` of each entry in turn, building the new book once: (the new book,
        [(the entry as stored, the one it replaced or None)] in order)."""
        current = {((canonical_provider(e.provider), e.model.lower()), e.effective_from): e for e in self.all()}
        changes: list[tuple[PriceEntry, PriceEntry | None]] = []
        for entry in entries:
            slot = ((canonical_provider(entry.provider), entry.model.lower()), entry.effective_from)
            old = current.get(slot)
            if old is not None:
                entry = PriceEntry(entry.provider, entry.model, entry.effective_from, entry.rates,
                                   entry.tier_threshold_tokens, entry.above, entry.source, entry.service_tiers,
                                   max(entry.revision, old.revision + 1), entry.as_of)
            current[slot] = entry
            changes.append((entry, old))
        return PriceBook.of(current.values()), changes


def cost_of(usage: Usage, entry: PriceEntry) -> Decimal | None:
    """The cost of ``usage`` under ``entry``; None when the entry lacks a rate it needs."""
    return _priced(usage, entry).cost


def _missing_rate(usage: Any, rates: Rates) -> str:
    if usage.cache_write_1h_tokens and rates.cache_write_1h is None:
        return "cache_write_1h: no 1-hour cache-write rate"
    if getattr(usage, "cache_write_12h_tokens", 0) and rates.cache_write_12h is None:
        return "cache_write_12h: no 12-hour cache-write rate"
    return ""


def _cost(usage: Any, rates: Rates) -> Decimal:
    """The cost at ``rates`` of anything with the token counts of a ``Usage`` (an event too);
    the 1-hour and 12-hour writes are subsets of the cache writes (callers clamp them)."""
    fresh_input = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
    plain_output = usage.output_tokens - usage.reasoning_tokens
    # the common call has no cache or reasoning tokens: skip the zero terms (Decimal ops are slow)
    total: Decimal = fresh_input * rates.input + plain_output * rates.output + rates.per_request
    if usage.cache_read_tokens:
        total += usage.cache_read_tokens * (rates.cache_read if rates.cache_read is not None else rates.input)
    if usage.cache_write_tokens:
        one_hour = usage.cache_write_1h_tokens
        twelve = getattr(usage, "cache_write_12h_tokens", 0)
        default = rates.cache_write if rates.cache_write is not None else rates.input
        total += (usage.cache_write_tokens - one_hour - twelve) * default
        # a duration without its rate never gets here: _priced makes the call unpriced first
        if one_hour and rates.cache_write_1h is not None:
            total += one_hour * rates.cache_write_1h
        if twelve and rates.cache_write_12h is not None:
            total += twelve * rates.cache_write_12h
    if usage.reasoning_tokens:
        total += usage.reasoning_tokens * (rates.reasoning if rates.reasoning is not None else rates.output)
    return total


def _priced(usage: Any, entry: PriceEntry) -> Priced:
    rates, tier, missing = entry.resolve(usage.input_tokens, usage.service_tier)
    if rates is not None:
        missing = _missing_rate(usage, rates)
    if rates is None or missing:
        return Priced(cost=None, price_version="", missing=missing)
    version = entry.version if not tier else f"{entry.version}+{tier}"
    return Priced(cost=_cost(usage, rates), price_version=version)


def price(usage: Usage, book: PriceBook) -> Priced:
    entry = book.lookup(usage.provider, usage.model, usage.ts)
    if entry is None:
        return Priced(cost=None, price_version="", missing="no price for this provider and model")
    return _priced(usage, entry)


def price_event(event: Any, book: PriceBook) -> tuple[Decimal | None, str, str, int]:
    """Price an ``llm_call`` event: (cost, price version, service tier, 1-hour cache writes),
    exactly what ``price(usage_of(event), book)`` gives.

    The worker's hot path: an event without ``attributes``, service tier or 1-hour / 12-hour
    writes (nearly every event) is priced from its own fields, skipping the ``Usage`` view (a
    third of the pricing time); any other event goes through :func:`usage_of`, which reads the
    tier and the durations from ``attributes`` too and clamps them. ``_cost`` only reads token
    counts, which the event has under the same names."""
    if event.attributes or event.service_tier or event.cache_write_1h_tokens or getattr(
            event, "cache_write_12h_tokens", 0):
        usage = usage_of(event)
        priced = price(usage, book)
        return priced.cost, priced.price_version, usage.service_tier, usage.cache_write_1h_tokens
    entry = book.lookup(event.provider, event.model, event.ts)
    if entry is None:
        return None, "", "", 0
    rates = entry.resolve(event.input_tokens)[0]
    assert rates is not None  # the standard tier always has rates
    return _cost(event, rates), entry.version, "", 0


def unpriced_reason(event: Any, book: PriceBook) -> str:
    """What the book lacks to price ``event`` ('' if it prices it): for the unpriced alert."""
    return price(usage_of(event), book).missing


# catalog formats live in their own module (which imports this one); their names stay
# importable from here, resolved on first use
_CATALOG_NAMES: Final = frozenset({"entry_from_dict", "entry_to_dict", "litellm_provider", "load_catalog"})


def __getattr__(name: str) -> Any:
    if name in _CATALOG_NAMES:
        from . import catalog

        return getattr(catalog, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
