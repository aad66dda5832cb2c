"""Price catalogs: reading flyball's format and LiteLLM's, writing flyball's, building the default.

Pure: text in, entries out (the CLI reads and writes the files). Two formats, told apart by
content:

- flyball's own: ``{"format": "flyball.prices/1", "prices": [{provider, model, effective_from,
  input, output, cache_read, cache_write, cache_write_1h, cache_write_12h, reasoning,
  per_request, tier_threshold_tokens, above_threshold: {...}, service_tiers: {batch:
  {multiplier} | {rates..., above_threshold: {...}}}, revision, source, as_of}]}`` with rates as
  decimal strings in USD per token;
- LiteLLM's ``model_prices_and_context_window.json`` (model -> {litellm_provider,
  input_cost_per_token, ...}). Every token-rate key is read by one grammar:
  ``<rate>[_above_<1|12>hr][_above_<N>k_tokens][_<batches|flex|priority|ultrafast>]`` where ``<rate>``
  is ``input_cost_per_token``, ``output_cost_per_token``, ``cache_read_input_token_cost``,
  ``cache_creation_input_token_cost`` or ``output_cost_per_reasoning_token``; ``_above_1hr``
  is the 1-hour cache write, ``_above_12hr`` the 12-hour one. LiteLLM has no dates, so entries
  take effect from the epoch. Within a tier (or above the threshold) a rate LiteLLM does not
  list is the tier's own base rate scaled like its input; a whole tier missing above the
  threshold stays missing (pricing then says so instead of guessing).

The default catalog (``data/prices.json``) is LiteLLM's entries for the first-party providers
plus flyball's verified corrections (``data/corrections.json``), built by
:func:`build_catalog` (``flyball prices update --from FILE``); every entry records its
``source`` and ``as_of`` date.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from .pricing import (
    EPOCH,
    RATE_FIELDS,
    SERVICE_TIERS,
    CatalogError,
    PriceBook,
    PriceEntry,
    Rates,
    TierModifier,
    canonical_provider,
)

FORMAT: Final = "flyball.prices/1"
# Sanity limits on what a catalog may say. The dearest rate LiteLLM lists is 0.0026 USD per token;
# a rate of a dollar or more per token is a price per million tokens typed into a per-token field
# (or an attack), and it keeps a call of MAX_TOKENS tokens far inside the money columns'
# Decimal(38, 12). A service tier multiplies by at most MAX_MULTIPLIER.
MAX_TOKEN_RATE: Final = Decimal(1)
MAX_REQUEST_FEE: Final = Decimal(1000)
MAX_MULTIPLIER: Final = Decimal(1000)


def load_catalog(text: str | bytes, *, source: str = "", skipped: list[str] | None = None) -> PriceBook:
    """Parse flyball's catalog format or LiteLLM's, told apart by content."""
    return PriceBook.of(catalog_entries(text, source=source, skipped=skipped))


def catalog_entries(text: str | bytes, *, source: str = "", as_of: str = "",
                    skipped: list[str] | None = None) -> list[PriceEntry]:
    """The entries of a catalog in either format (``as_of`` dates LiteLLM's undated rows).

    A flyball catalog is refused whole on its first bad entry (it is ours: a bad entry is a bug);
    a LiteLLM row that cannot be read is left out, and ``skipped`` (if given) gets
    ``"<key>: <reason>"`` for each, so that the caller can say so."""
    try:
        data = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"price catalog is not valid JSON: {exc}") from None
    if is_flyball(data):
        return list(_flyball_entries(data, source))
    if is_litellm(data):
        return list(_litellm_entries(data, source or "litellm", as_of, skipped))
    raise CatalogError("price catalog: neither flyball format (format: flyball.prices/1) nor LiteLLM's model map")


def is_flyball(data: Any) -> bool:
    return isinstance(data, dict) and str(data.get("format", "")).startswith("flyball.prices")


def is_litellm(data: Any) -> bool:
    return isinstance(data, dict) and any(
        isinstance(v, dict) and ("input_cost_per_token" in v or "litellm_provider" in v) for v in data.values())


def _dec(value: Any, where: str) -> Decimal:
    try:
        result = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise CatalogError(f"{where}: not a decimal number: {value!r}") from None
    if not result.is_finite() or result < 0:
        raise CatalogError(f"{where}: must be a finite, non-negative number")
    return result


def skipped_note(skipped: list[str], shown: int = 5) -> str:
    """One line saying which LiteLLM rows were left out (for a CLI or a log)."""
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    rows = "price row could not be read and was" if len(skipped) == 1 else "price rows could not be read and were"
    return f"{len(skipped)} {rows} left out: {'; '.join(skipped[:shown])}{more}"


def _bounded(entry: PriceEntry, where: str) -> PriceEntry:
    """``entry`` if every rate, fee and multiplier is within the sanity limits, else CatalogError
    naming the first that is not."""
    def rates(r: Rates | None, at: str) -> None:
        if r is None:
            return
        for name in RATE_FIELDS:
            value = getattr(r, name)
            limit = MAX_REQUEST_FEE if name == "per_request" else MAX_TOKEN_RATE
            if value is not None and value >= limit:
                unit = "per request" if name == "per_request" else "per token"
                hint = "" if name == "per_request" else " (a price per million tokens in a per-token field?)"
                raise CatalogError(f"{at}.{name}: {value:g} USD {unit} is not below the limit of {limit} USD {unit}{hint}")

    rates(entry.rates, where)
    rates(entry.above, f"{where}.above_threshold")
    for tier, mod in entry.service_tiers.items():
        at = f"{where}.service_tiers.{tier}"
        if mod.multiplier is not None and mod.multiplier > MAX_MULTIPLIER:
            raise CatalogError(f"{at}.multiplier: {mod.multiplier} is above the limit of {MAX_MULTIPLIER}")
        rates(mod.rates, at)
        rates(mod.above, f"{at}.above_threshold")
    return entry


def _opt(value: Any, where: str) -> Decimal | None:
    return None if value is None else _dec(value, where)


def _rates(raw: Mapping[str, Any], where: str, base: Rates | None = None) -> Rates:
    def pick(name: str, default: Any) -> Any:
        return raw[name] if name in raw else default

    def opt(name: str) -> Decimal | None:
        return _opt(pick(name, getattr(base, name) if base else None), f"{where}.{name}")

    return Rates(
        input=_dec(pick("input", base.input if base else None), f"{where}.input"),
        output=_dec(pick("output", base.output if base else None), f"{where}.output"),
        cache_read=opt("cache_read"), cache_write=opt("cache_write"), reasoning=opt("reasoning"),
        per_request=_dec(pick("per_request", base.per_request if base else 0), f"{where}.per_request"),
        cache_write_1h=opt("cache_write_1h"), cache_write_12h=opt("cache_write_12h"),
    )


def _scaled_fill(raw: Mapping[str, Any], where: str, base: Rates) -> Rates:
    """Explicit tier rates; a rate the tier omits is the base rate scaled like its input."""
    factor = Decimal(1)
    if "input" in raw and base.input:
        factor = _dec(raw["input"], f"{where}.input") / base.input
    return _rates(raw, where, base.scaled(factor))


def _tier_modifier(raw: Any, where: str, base: Rates, above: Rates | None) -> TierModifier:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected an object with multiplier or rates")
    if "multiplier" in raw:
        return TierModifier(multiplier=_dec(raw["multiplier"], f"{where}.multiplier"))
    if "input" not in raw and "output" not in raw:
        raise CatalogError(f"{where}: needs multiplier or input/output rates")
    tier_above = raw.get("above_threshold")
    if tier_above is not None and (not isinstance(tier_above, dict) or above is None):
        raise CatalogError(f"{where}.above_threshold: needs an object and the entry's own above_threshold")
    return TierModifier(rates=_scaled_fill(raw, where, base),
                        above=_scaled_fill(tier_above, f"{where}.above_threshold", above)
                        if isinstance(tier_above, dict) and above is not None else None)


def _effective(raw: Mapping[str, Any], where: str) -> datetime:
    try:
        eff = datetime.fromisoformat(str(raw.get("effective_from", "1970-01-01T00:00:00+00:00")))
    except (ValueError, OverflowError):
        raise CatalogError(f"{where}.effective_from: not an ISO 8601 time in range") from None
    if eff.tzinfo is None:
        raise CatalogError(f"{where}.effective_from: needs a UTC offset")
    try:
        return eff.astimezone(UTC)
    except (ValueError, OverflowError):
        raise CatalogError(f"{where}.effective_from: not an ISO 8601 time in range") from None


def entry_from_dict(raw: Any, where: str = "entry", *, source: str = "", limits: bool = True) -> PriceEntry:
    """One entry in flyball's catalog format (also the body of ``POST /v1/prices``); ``limits``
    False only for entries already in force (the API's recorded changes: a price stored before
    the sanity limits existed is history, and history is not refused at start-up)."""
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected an object")
    for name in ("provider", "model", "input", "output"):
        if raw.get(name) in (None, ""):
            raise CatalogError(f"{where}.{name}: required")
    eff = _effective(raw, where)
    rates = _rates(raw, where)
    above_raw = raw.get("above_threshold")
    above = _rates(above_raw, f"{where}.above_threshold", rates) if isinstance(above_raw, dict) else None
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
        tiers[str(name).lower()] = _tier_modifier(value, f"{where}.service_tiers.{name}", rates, above)
    revision = raw.get("revision", 1)
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        raise CatalogError(f"{where}.revision: expected an integer >= 1")
    entry = PriceEntry(
        provider=str(raw["provider"]), model=str(raw["model"]), effective_from=eff, rates=rates,
        tier_threshold_tokens=threshold, above=above, source=str(raw.get("source") or source),
        service_tiers=tiers, revision=revision, as_of=str(raw.get("as_of") or ""),
    )
    return _bounded(entry, where) if limits else entry


def _rates_dict(rates: Rates) -> dict[str, str | None]:
    return {k: (None if getattr(rates, k) is None else _text(getattr(rates, k))) for k in RATE_FIELDS}


def _text(d: Decimal) -> str:
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _tier_dict(m: TierModifier) -> dict[str, Any]:
    if m.multiplier is not None:
        return {"multiplier": _text(m.multiplier)}
    assert m.rates is not None  # a modifier is a multiplier or has rates (the loader's rule)
    out: dict[str, Any] = _rates_dict(m.rates)
    if m.above is not None:
        out["above_threshold"] = _rates_dict(m.above)
    return out


def entry_to_dict(entry: PriceEntry) -> dict[str, Any]:
    """flyball's catalog format for one entry: ``entry_from_dict(entry_to_dict(e)) == e``."""
    out: dict[str, Any] = {"provider": entry.provider, "model": entry.model,
                           "effective_from": entry.effective_from.isoformat(), "version": entry.version,
                           "revision": entry.revision, "source": entry.source, **_rates_dict(entry.rates)}
    if entry.as_of:
        out["as_of"] = entry.as_of
    if entry.tier_threshold_tokens is not None:
        out["tier_threshold_tokens"] = entry.tier_threshold_tokens
    if entry.above is not None:
        out["above_threshold"] = _rates_dict(entry.above)
    if entry.service_tiers:
        out["service_tiers"] = {name: _tier_dict(m) for name, m in sorted(entry.service_tiers.items())}
    return out


def _flyball_entries(data: Mapping[str, Any], source: str) -> Iterable[PriceEntry]:
    prices = data.get("prices")
    if not isinstance(prices, list):
        raise CatalogError("prices: expected a list of entries")
    for i, raw in enumerate(prices):
        yield entry_from_dict(raw, f"prices[{i}]", source=source)


# ---------------------------------------------------------------------------- LiteLLM


def litellm_provider(name: str) -> str:
    """The book's provider name for a ``litellm_provider`` value."""
    return canonical_provider(name)


_LITELLM_RATES: Final = {
    "input_cost_per_token": "input", "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cache_read", "cache_creation_input_token_cost": "cache_write",
    "output_cost_per_reasoning_token": "reasoning",
}
_LITELLM_TIERS: Final = {"batches": "batch", "flex": "flex", "priority": "priority", "ultrafast": "ultrafast"}
_LITELLM_KEY = re.compile(
    r"^(input_cost_per_token|output_cost_per_token|cache_read_input_token_cost|cache_creation_input_token_cost"
    r"|output_cost_per_reasoning_token)(?:_above_(1|12)hr)?(?:_above_(\d+)k_tokens)?(?:_([a-z]+))?$")


def _litellm_table(raw: Mapping[str, Any], where: str) -> dict[tuple[str, int | None], dict[str, Decimal]]:
    """(tier, threshold) -> {rate field: value} for every token-rate key of one model."""
    table: dict[tuple[str, int | None], dict[str, Decimal]] = {}
    for key, value in raw.items():
        m = _LITELLM_KEY.match(key)
        if m is None or value is None:
            continue
        base, hours, thousands, suffix = m.groups()
        tier = ""
        if suffix is not None:
            if suffix not in _LITELLM_TIERS:
                continue  # tiers flyball does not price (ultrafast, decisions, ...)
            tier = _LITELLM_TIERS[suffix]
        name = _LITELLM_RATES[base]
        if hours is not None:
            if name != "cache_write":
                continue
            name = "cache_write_1h" if hours == "1" else "cache_write_12h"
        threshold = int(thousands) * 1000 if thousands is not None else None
        table.setdefault((tier, threshold), {})[name] = _dec(value, f"{where}.{key}")
    return table


def _fill(listed: Mapping[str, Decimal], like: Rates, where: str) -> Rates:
    """Rates as listed; what is not listed is ``like`` scaled the way the input was."""
    factor = Decimal(1)
    if "input" in listed and like.input:
        factor = listed["input"] / like.input
    elif "output" in listed and like.output:
        factor = listed["output"] / like.output
    filled = like.scaled(factor)
    values = {k: getattr(filled, k) for k in RATE_FIELDS}
    values.update(listed)
    if values["input"] is None or values["output"] is None:
        raise CatalogError(f"{where}: no input/output rate")
    return Rates(**values)


def _litellm_entry(key: str, raw: Mapping[str, Any], source: str, as_of: str) -> PriceEntry | None:
    table = _litellm_table(raw, key)
    base_listed = table.get(("", None), {})
    if "input" not in base_listed or "output" not in base_listed:
        return None  # image/audio/per-second models: not priced per token
    rates = Rates(input=base_listed["input"], output=base_listed["output"], cache_read=base_listed.get("cache_read"),
                  cache_write=base_listed.get("cache_write"), reasoning=base_listed.get("reasoning"),
                  cache_write_1h=base_listed.get("cache_write_1h"), cache_write_12h=base_listed.get("cache_write_12h"))
    thresholds = sorted({t for _, t in table if t is not None})
    threshold = thresholds[0] if thresholds else None  # one context tier is modelled: the lowest
    above = _fill(table.get(("", threshold), {}), rates, f"{key} above") if threshold is not None else None
    tiers: dict[str, TierModifier] = {}
    for tier in SERVICE_TIERS:
        listed = table.get((tier, None))
        if not listed:
            continue
        tier_rates = _fill(listed, rates, f"{key} {tier}")
        tier_above = None
        if threshold is not None and above is not None and table.get((tier, threshold)):
            tier_above = _fill(table[(tier, threshold)], above, f"{key} {tier} above")
        tiers[tier] = TierModifier(rates=tier_rates, above=tier_above)
    provider = litellm_provider(str(raw.get("litellm_provider", "")))
    model = key
    if "/" in key:
        prefix, rest = key.split("/", 1)
        if canonical_provider(prefix) == provider or prefix == raw.get("litellm_provider"):
            model = rest
    return _bounded(PriceEntry(provider=provider, model=model, effective_from=EPOCH, rates=rates,
                               tier_threshold_tokens=threshold, above=above, source=source, service_tiers=tiers,
                               as_of=as_of), key)


def _litellm_entries(data: Mapping[str, Any], source: str, as_of: str = "",
                     skipped: list[str] | None = None) -> Iterable[PriceEntry]:
    for key, raw in data.items():
        if key == "sample_spec":
            continue
        if not isinstance(raw, dict):
            if skipped is not None:
                skipped.append(f"{key[:100]}: expected an object, not {type(raw).__name__}")
            continue
        try:
            entry = _litellm_entry(key, raw, source, as_of)
        except CatalogError as exc:
            # LiteLLM has a few malformed rows; skip them rather than refuse the whole file
            if skipped is not None:
                skipped.append(str(exc)[:300])
            continue
        if entry is not None:
            yield entry


# ---------------------------------------------------------------------------- the default catalog

# the providers whose first-party APIs the default catalog covers (OpenTelemetry names)
DEFAULT_PROVIDERS: Final = ("openai", "anthropic", "gcp.gemini", "gcp.vertex_ai", "azure.ai.openai",
                            "aws.bedrock", "mistral_ai", "x_ai", "deepseek", "groq", "cohere")


def build_catalog(source_text: str | bytes, corrections_text: str | bytes | None, *, source: str,
                  as_of: str, providers: Iterable[str] | None = DEFAULT_PROVIDERS,
                  skipped: list[str] | None = None) -> dict[str, Any]:
    """A flyball-format catalog: the entries of ``source_text`` (either format; LiteLLM's
    limited to ``providers``, each recording ``source`` and ``as_of``) with flyball's
    corrections laid over them (a correction replaces the entry with its provider and model)."""
    wanted = None if providers is None else {canonical_provider(p) for p in providers}
    entries = {}
    for entry in catalog_entries(source_text, source=source, as_of=as_of, skipped=skipped):
        provider = canonical_provider(entry.provider)
        if wanted is not None and provider not in wanted:
            continue
        entries[(provider, entry.model.lower(), entry.effective_from)] = entry
    corrected = 0
    if corrections_text is not None:
        fixes = catalog_entries(corrections_text, source="flyball corrections")
        fixed_models = {(canonical_provider(e.provider), e.model.lower()) for e in fixes}
        entries = {k: v for k, v in entries.items() if (k[0], k[1]) not in fixed_models}
        for entry in fixes:
            entries[(canonical_provider(entry.provider), entry.model.lower(), entry.effective_from)] = entry
            corrected += 1
    rows = [entry_to_dict(e) for _, e in sorted(entries.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2]))]
    for row in rows:
        row.pop("version", None)
        if row.get("revision") == 1:
            del row["revision"]
        for name in [k for k, v in row.items() if v is None]:
            del row[name]
    return {"format": FORMAT,
            "note": (f"Built by `flyball prices update` from {source} (as of {as_of}) for "
                     f"{', '.join(sorted(wanted)) if wanted else 'every provider'}, with {corrected} of "
                     "flyball's verified corrections (their source says what each corrects). USD per token."),
            "prices": rows}
