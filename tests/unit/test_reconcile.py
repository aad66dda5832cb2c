"""Unit tests for reconciling a provider's usage export with our spend (pure helpers in
``flyball.control_plane.finance``)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from flyball.control_plane.reconcile import ReconcileError, ours_from_spend_rows, parse_provider_csv, reconcile


def test_provider_csv_headers_are_matched_leniently_and_rows_summed() -> None:
    text = "Date,Model,Amount\n2026-03-01,gpt-4o,\"$1,000.50\"\n2026-03-01,gpt-4o,0.25\n2026-03-02T00:00:00Z,o3,2\n"
    assert parse_provider_csv(text) == {("2026-03-01", "gpt-4o"): Decimal("1000.75"), ("2026-03-02", "o3"): Decimal(2)}


@pytest.mark.parametrize(("text", "message"), [
    ("when,model,cost\n2026-03-01,m,1\n", "header: no day column"),
    ("day,model,cost\nyesterday,m,1\n", "line 2: day: not a date"),
    ("day,model,cost\n2026-03-01,m,lots\n", "line 2: cost: not a number"),
])
def test_unreadable_export_names_the_line_and_column(text: str, message: str) -> None:
    with pytest.raises(ReconcileError, match=message):
        parse_provider_csv(text)


def test_reconcile_reports_every_day_and_model_on_either_side() -> None:
    provider = {("2026-03-01", "gpt-4o"): Decimal("1.5"), ("2026-03-02", "gpt-4o"): Decimal(1)}
    ours = ours_from_spend_rows([{"day": "2026-03-01", "model": "gpt-4o", "cost_usd": "1.25"},
                                 {"day": "2026-03-01", "model": "o3", "cost_usd": "0.5"}])
    lines = reconcile(provider, ours)
    assert [(ln.day, ln.model, ln.diff_usd) for ln in lines] == [
        ("2026-03-01", "gpt-4o", Decimal("-0.25")), ("2026-03-01", "o3", Decimal("0.5")),
        ("2026-03-02", "gpt-4o", Decimal(-1))]
