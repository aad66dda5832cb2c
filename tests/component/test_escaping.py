"""Tenant-chosen names stay text in spreadsheets and chat: no formula, mention or link."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

from decimal import Decimal

import orjson
import pytest
from flyball.control_plane.escaping import csv_text
from flyball.control_plane.notify import WebhookTarget, alert_notice, render
from flyball.control_plane.replay import replay
from flyball.control_plane.runtime import load_prices
from flyball.schemas import Alert, AlertKind, Scope

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HOSTILE = "<!channel> <http://evil.example|click> & co"


def alert() -> Alert:
    return Alert(alert_id="a1", kind=AlertKind.COST_SPIKE, scope=Scope(tenant_id=HOSTILE, feature="<@U123>"),
                 severity="critical", metric="cost_usd", observed="9", baseline="1", threshold="2", window_s=60,
                 first_seen=NOW, last_seen=NOW, summary="spend of <!here>")


def test_slack_text_carries_no_mention_or_link_from_tenant_names() -> None:
    body = render(alert_notice(alert(), "open"), WebhookTarget(url="https://hooks.example", format="slack"),
                  runbook_base="https://docs.example")
    texts = [body["text"], body["blocks"][0]["text"]["text"], body["blocks"][1]["text"]["text"]]
    for text in texts:
        assert "<!" not in text and "<http" not in text and "<@" not in text
    assert "&lt;!channel&gt;" in body["text"]
    assert "<https://docs.example/cost_spike.md|Runbook: cost_spike>" in body["blocks"][2]["elements"][0]["text"]


def test_pagerduty_summary_carries_no_markup_from_tenant_names() -> None:
    body = render(alert_notice(alert(), "open"), WebhookTarget(url="https://pd.example", format="pagerduty"),
                  runbook_base="https://docs.example")
    assert "<" not in body["payload"]["summary"] and ">" not in body["payload"]["summary"]
    assert "!channel" in body["payload"]["summary"]


@pytest.mark.parametrize("name", ["=HYPERLINK(\"http://x\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\r=x"])
def test_a_text_cell_that_a_spreadsheet_would_run_is_quoted(name: str) -> None:
    assert csv_text(name) == "'" + name
    assert csv_text("acme") == "acme" and csv_text(12) == 12


def test_replay_spend_csv_quotes_formula_like_tenant_names(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(orjson.dumps({"schema_version": 1, "event_type": "llm_call",
                                     "event_id": "0b6c3f7e-2f1a-4f61-9d8e-6a2b9c1d0f11", "ts": NOW.isoformat(),
                                     "tenant_id": "=cmd|' /C calc'!A0", "feature": "@x", "provider": "openai",
                                     "model": "gpt-4o-mini", "input_tokens": 10, "output_tokens": 1}) + b"\n")
    replay(events, tmp_path / "out", book=load_prices(None))
    rows = list(csv.reader(io.StringIO((tmp_path / "out" / "spend.csv").read_text())))
    assert rows[1][:2] == ["'=cmd|' /C calc'!A0", "'@x"]
    assert Decimal(rows[1][6]) > 0  # the cost stays a plain decimal
