"""Many price changes at once give what applying them one by one gives (the book is built once,
not once per change: ``bench/prices.py`` measures it)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from flyball.stream_processors.pricing import PriceBook, PriceEntry, Rates


def entry(rng: random.Random, n: int) -> PriceEntry:
    provider = rng.choice(["openai", "OpenAI", "anthropic"])
    model = f"m{rng.randrange(30)}"
    day = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=rng.randrange(5))
    return PriceEntry(provider, model, day, Rates(input=Decimal(n) / 10**9, output=Decimal(n) / 10**8))


def reference(book: PriceBook, entries: list[PriceEntry]) -> tuple[list[PriceEntry], list[tuple[PriceEntry, PriceEntry | None]]]:
    """Sequential semantics written out independently: same (provider, model, effective_from),
    case-insensitive, is a correction with the next revision."""
    current = {((e.provider.lower(), e.model.lower()), e.effective_from): e for e in book.all()}
    changes = []
    for e in entries:
        slot = ((e.provider.lower(), e.model.lower()), e.effective_from)
        old = current.get(slot)
        if old is not None:
            e = PriceEntry(e.provider, e.model, e.effective_from, e.rates, revision=max(e.revision, old.revision + 1))
        current[slot] = e
        changes.append((e, old))
    return sorted(current.values(), key=lambda e: (e.provider.lower(), e.model.lower(), e.effective_from)), changes


def test_many_changes_at_once_equal_the_changes_one_by_one() -> None:
    rng = random.Random(3)
    base = PriceBook.of(entry(rng, n) for n in range(200))
    batch = [entry(rng, n) for n in range(200, 600)]
    book, changes = base.with_entries(batch)
    want_entries, want_changes = reference(base, batch)
    assert [(e.version, e.rates) for e in book.all()] == [(e.version, e.rates) for e in want_entries]
    assert [(new.version, old.version if old else None) for new, old in changes] == \
           [(new.version, old.version if old else None) for new, old in want_changes]
    one_by_one = base
    for e in batch:
        one_by_one, _ = one_by_one.with_entry(e)
    assert [e.version for e in one_by_one.all()] == [e.version for e in book.all()]
