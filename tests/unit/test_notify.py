"""Unit tests for webhook payloads (``flyball.control_plane.notify.render``): Slack-compatible
and PagerDuty Events v2, with a dedupe key and the runbook link."""

from __future__ import annotations

from datetime import UTC, datetime

from flyball.control_plane.notify import WebhookTarget, action_notice, alert_notice, render
from flyball.control_plane.policy import decide_actions, revert
from flyball.control_plane.policy_file import DEFAULT_POLICIES
from flyball.schemas import Alert, AlertKind, Scope

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ALERT = Alert(alert_id="a-1", kind=AlertKind.TOOL_FAILURE, scope=Scope(tool_name="sql"), severity="critical",
              metric="tool_error_rate", observed="0.6", baseline="0.01", threshold="0.2", window_s=60,
              first_seen=NOW, last_seen=NOW, summary="sql tool failing")
SLACK = WebhookTarget(url="http://127.0.0.1:1/hook", format="slack")
PD = WebhookTarget(url="http://127.0.0.1:1/v2/enqueue", format="pagerduty", routing_key="R0UT1NG")
BASE = "https://runbooks.example/flyball"


def test_pagerduty_alert_opens_and_resolves_one_incident_by_dedup_key() -> None:
    opened = render(alert_notice(ALERT, "open"), PD, runbook_base=BASE)
    resolved = render(alert_notice(ALERT.model_copy(update={"status": "resolved"}), "resolved"), PD, runbook_base=BASE)
    assert (opened["event_action"], resolved["event_action"]) == ("trigger", "resolve")
    assert opened["dedup_key"] == resolved["dedup_key"] == "flyball:alert:a-1"
    assert opened["routing_key"] == "R0UT1NG"
    assert opened["payload"]["severity"] == "critical" and opened["payload"]["source"] == "flyball"
    assert opened["links"] == [{"href": f"{BASE}/tool_failure.md", "text": "Runbook: tool_failure"}]


def test_slack_alert_has_text_blocks_runbook_and_dedupe_key() -> None:
    body = render(alert_notice(ALERT, "open"), SLACK, runbook_base=BASE)
    assert "tool_failure open" in body["text"] and "tool_name=sql" in body["text"]
    context = body["blocks"][-1]["elements"][0]["text"]
    assert "flyball:alert:a-1" in context and f"{BASE}/tool_failure.md" in context


def test_an_automatic_action_is_a_pagerduty_incident_that_resolves_on_revert() -> None:
    (applied,) = decide_actions(ALERT, [], DEFAULT_POLICIES, now=NOW)
    opened = render(action_notice(applied, now=NOW), PD, runbook_base=BASE)
    reverted = render(action_notice(revert(applied.directive, actor="flyball", now=NOW), now=NOW), PD,
                      runbook_base=BASE)
    assert opened["event_action"] == "trigger" and reverted["event_action"] == "resolve"
    assert opened["dedup_key"] == reverted["dedup_key"] == f"flyball:directive:{applied.directive.directive_id}"
    assert "disable_tool" in opened["payload"]["summary"]
