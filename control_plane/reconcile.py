"""Reconciliation with a provider's usage export: parse the provider's CSV (lenient header
names), compare with flyball's spend per (day, model). Pure: text and decimals in, lines out;
``flyball reconcile`` fetches flyball's side through the HTTP API.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from flyball.stream_processors.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class ReconLine:
    day: str
    model: str
    provider_usd: Decimal
    ours_usd: Decimal

    @property
    def diff_usd(self) -> Decimal:
        return self.ours_usd - self.provider_usd


_DAY = ("day", "date", "usage_date", "start_time", "bucket_start")
_MODEL = ("model", "model_id", "model_name", "line_item", "sku")
_COST = ("cost_usd", "cost", "amount", "amount_usd", "usd", "total_cost")


class ReconcileError(InvalidInput):
    """A provider export that cannot be read; the message names the line and column."""


def parse_provider_csv(text: str) -> dict[tuple[str, str], Decimal]:
    """A provider's usage/invoice CSV (day, model, cost; header names matched leniently) ->
    cost per (day, model). Rows for the same day and model are summed."""
    reader = csv.DictReader(io.StringIO(text))
    names = {n.strip().lower(): n for n in (reader.fieldnames or [])}

    def pick(options: tuple[str, ...], what: str) -> str:
        for option in options:
            if option in names:
                return names[option]
        raise ReconcileError(f"header: no {what} column (one of {', '.join(options)})")

    day_c, model_c, cost_c = pick(_DAY, "day"), pick(_MODEL, "model"), pick(_COST, "cost")
    out: dict[tuple[str, str], Decimal] = {}
    for n, row in enumerate(reader, start=2):
        raw_day = (row.get(day_c) or "").strip()
        try:
            day = date.fromisoformat(raw_day[:10]).isoformat()
        except ValueError:
            raise ReconcileError(f"line {n}: {day_c}: not a date: {raw_day!r}") from None
        raw_cost = (row.get(cost_c) or "").strip().lstrip("$").replace(",", "")
        try:
            cost = Decimal(raw_cost)
        except InvalidOperation:
            raise ReconcileError(f"line {n}: {cost_c}: not a number: {raw_cost!r}") from None
        if not cost.is_finite():
            raise ReconcileError(f"line {n}: {cost_c}: not a finite number")
        key = (day, (row.get(model_c) or "").strip())
        out[key] = out.get(key, Decimal(0)) + cost
    return out


def reconcile(provider: dict[tuple[str, str], Decimal], ours: dict[tuple[str, str], Decimal]) -> list[ReconLine]:
    """One line per (day, model) in either side, sorted; a side that lacks it counts 0."""
    keys = sorted(set(provider) | set(ours))
    return [ReconLine(d, m, provider.get((d, m), Decimal(0)), ours.get((d, m), Decimal(0))) for d, m in keys]


def ours_from_spend_rows(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str], Decimal]:
    out: dict[tuple[str, str], Decimal] = {}
    for r in rows:
        key = (str(r["day"])[:10], str(r["model"]))
        out[key] = out.get(key, Decimal(0)) + Decimal(str(r["cost_usd"]))
    return out
