"""Unit tests for the release-safety actions: ``pin_version`` and ``strict_safety`` in the
directive contract, the shipped policies and the shim's guard (pure, fixed clock)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from pydantic import ValidationError

from flyball.control_plane.policy import Outcome, Policies, Policy, decide_actions, expire, observe, History
from flyball.control_plane.policy_file import DEFAULT_POLICIES
from flyball.producers.enforcement import DirectiveView, enforce, pins_in_force
from flyball.schemas import ActionKind, Alert, AlertKind, Directive, DirectiveState, Scope

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T = NOW.timestamp()


def directive(action: ActionKind, scope: Scope, *, ttl_s: int = 600, **fields: Any) -> Directive:
    return Directive(directive_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{action}|{scope.key()}|{fields}")),
                     action=action, scope=scope, created_at=NOW, expires_at=NOW + timedelta(seconds=ttl_s), **fields)


def pin(scope: Scope, field: str, value: str, **kw: Any) -> Directive:
    return directive(ActionKind.PIN_VERSION, scope, pin_field=field, pin_value=value, **kw)


def view_of(*directives: Directive) -> DirectiveView:
    view = DirectiveView()
    for d in directives:
        view.apply(d, now=T)
    return view


def regression(severity: Literal["info", "warning", "critical"] = "critical", *, tenant_id: str | None = None,
               field: str = "prompt_version",
               status: Literal["open", "resolved"] = "open") -> Alert:
    return Alert(alert_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{severity}{tenant_id}{field}")),
                 kind=AlertKind.VERSION_REGRESSION, severity=severity, status=status,
                 scope=Scope(tenant_id=tenant_id, feature="support-bot", version_field=field, old_version="v1",
                             new_version="v2"),
                 metric="failure_rate", observed="0.2", baseline="0.02", threshold="0.005", window_s=60,
                 first_seen=NOW, last_seen=NOW, verdict="rollback", summary="v2 regresses")


def safety_burst(**scope: str) -> Alert:
    return Alert(alert_id="a1", kind=AlertKind.SAFETY_BURST, severity="critical", scope=Scope(**scope),
                 metric="triggers", observed="30", baseline="1", threshold="5", window_s=60, first_seen=NOW,
                 last_seen=NOW)


# ------------------------------------------------------------------ contract
def test_pin_version_without_its_value_is_refused() -> None:
    with pytest.raises(ValidationError, match="pin_field and pin_value"):
        directive(ActionKind.PIN_VERSION, Scope(feature="f"), pin_field="prompt_version")


def test_pin_fields_on_another_action_are_refused() -> None:
    with pytest.raises(ValidationError, match="belong to pin_version"):
        directive(ActionKind.BLOCK, Scope(feature="f"), pin_field="model", pin_value="gpt-4o")


def test_settings_do_not_share_a_key_with_a_restriction_or_each_other() -> None:
    scope = Scope(tenant_id="acme", feature="f")
    keys = {directive(ActionKind.BLOCK, scope).key(), directive(ActionKind.STRICT_SAFETY, scope).key(),
            pin(scope, "prompt_version", "v1").key(), pin(scope, "model", "gpt-4o").key()}
    assert len(keys) == 4
    assert directive(ActionKind.BLOCK, scope).key() == scope.key()  # restrictions keep their key


# ------------------------------------------------------------------ guard
def test_guard_hands_back_the_pinned_prompt_version_for_the_feature() -> None:
    view = view_of(pin(Scope(feature="support-bot"), "prompt_version", "v1"))
    d = enforce(view, tenant_id="acme", feature="support-bot", model="gpt-4o", now=T)
    assert (d.allowed, d.prompt_version, d.model, d.config_version, d.safety_level) == (
        True, "v1", "gpt-4o", None, None)
    assert enforce(view, tenant_id="acme", feature="search", model="gpt-4o", now=T).prompt_version is None


def test_the_tenant_pin_wins_over_the_feature_pin() -> None:
    view = view_of(pin(Scope(feature="f"), "prompt_version", "v1"),
                   pin(Scope(tenant_id="acme", feature="f"), "prompt_version", "v0"))
    assert enforce(view, tenant_id="acme", feature="f", now=T).prompt_version == "v0"
    assert enforce(view, tenant_id="other", feature="f", now=T).prompt_version == "v1"


def test_a_model_pin_is_the_model_to_call_and_reroutes_still_apply_to_it() -> None:
    view = view_of(pin(Scope(feature="f"), "model", "gpt-4o"))
    assert enforce(view, tenant_id="acme", feature="f", model="gpt-5", now=T).model == "gpt-4o"
    view.apply(directive(ActionKind.REROUTE, Scope(model="gpt-4o"), to_model="gpt-4o-mini"), now=T)
    assert enforce(view, tenant_id="acme", feature="f", model="gpt-5", now=T).model == "gpt-4o-mini"


def test_config_pin_and_strict_safety_combine_with_a_throttle() -> None:
    scope = Scope(tenant_id="acme", feature="f")
    view = view_of(pin(scope, "config_version", "c1"), directive(ActionKind.STRICT_SAFETY, scope),
                   directive(ActionKind.THROTTLE, scope, rate_per_s=0.01, burst=1))
    first = enforce(view, tenant_id="acme", feature="f", now=T)
    second = enforce(view, tenant_id="acme", feature="f", now=T)
    assert (first.allowed, first.config_version, first.safety_level) == (True, "c1", "strict")
    assert (second.allowed, second.reason, second.config_version, second.safety_level) == (
        False, "throttled", "c1", "strict")
    assert len(first.directive_ids) == 3


def test_settings_lapse_at_expiry_and_on_revert() -> None:
    strict = directive(ActionKind.STRICT_SAFETY, Scope(tenant_id="acme", feature="f"), ttl_s=60)
    view = view_of(strict)
    assert enforce(view, tenant_id="acme", feature="f", now=T + 59).safety_level == "strict"
    assert enforce(view, tenant_id="acme", feature="f", now=T + 61).safety_level is None
    view = view_of(strict)
    view.apply(strict.model_copy(update={"state": DirectiveState.REVERTED}), now=T)
    assert enforce(view, tenant_id="acme", feature="f", now=T).safety_level is None
    assert view.by_key == {}


def test_pins_in_force_takes_no_throttle_token() -> None:
    scope = Scope(tenant_id="acme", feature="f")
    view = view_of(pin(scope, "prompt_version", "v1"), directive(ActionKind.THROTTLE, scope, rate_per_s=0.01, burst=1))
    assert pins_in_force(view, tenant_id="acme", feature="f", now=T) == {"prompt_version": "v1"}
    assert enforce(view, tenant_id="acme", feature="f", now=T).allowed  # the one token is still there


# ------------------------------------------------------------------ shipped policies
@pytest.mark.parametrize(("severity", "state"), [("critical", DirectiveState.ACTIVE),
                                                 ("warning", DirectiveState.PENDING)])
def test_shipped_policy_pins_the_incumbent(severity: Literal["warning", "critical"], state: DirectiveState) -> None:
    (action,) = decide_actions(regression(severity), [], DEFAULT_POLICIES, now=NOW)
    d = action.directive
    assert d is not None
    assert (d.action, d.state, d.pin_field, d.pin_value, d.scope) == (
        ActionKind.PIN_VERSION, state, "prompt_version", "v1", Scope(feature="support-bot"))


def test_shipped_policy_pins_per_tenant_when_the_comparison_is_per_tenant() -> None:
    (action,) = decide_actions(regression(tenant_id="acme", field="model"), [], DEFAULT_POLICIES, now=NOW)
    assert action.directive is not None
    assert (action.directive.scope, action.directive.pin_field) == (Scope(tenant_id="acme", feature="support-bot"),
                                                                     "model")


def test_shipped_safety_burst_on_a_feature_goes_strict_now_and_proposes_a_block() -> None:
    actions = decide_actions(safety_burst(tenant_id="acme", feature="f"), [], DEFAULT_POLICIES, now=NOW)
    by_action = {a.directive.action: a.decision for a in actions if a.directive is not None}
    assert by_action == {ActionKind.STRICT_SAFETY: Outcome.APPLIED, ActionKind.BLOCK: Outcome.PENDING}


def test_shipped_safety_burst_on_a_tool_does_not_go_strict() -> None:
    actions = decide_actions(safety_burst(tenant_id="acme", feature="f", tool_name="sql"), [], DEFAULT_POLICIES,
                             now=NOW)
    assert [a.directive.action for a in actions if a.directive is not None] == [ActionKind.DISABLE_TOOL]


def test_a_live_pin_is_kept_alive_not_duplicated() -> None:
    (first,) = decide_actions(regression(), [], DEFAULT_POLICIES, now=NOW)
    assert first.directive is not None
    later = NOW + timedelta(hours=3)
    again = decide_actions(regression().model_copy(update={"last_seen": later}), [first.directive], DEFAULT_POLICIES,
                           now=later)
    assert [a.decision for a in again] == [Outcome.EXTENDED]


def test_a_rollback_pin_is_not_reverted_when_its_alert_resolves() -> None:
    (first,) = decide_actions(regression(), [], DEFAULT_POLICIES, now=NOW)
    assert first.directive is not None
    history = observe(History(), regression(status="resolved"))
    assert expire([first.directive], now=NOW + timedelta(hours=1), history=history, policies=DEFAULT_POLICIES) == []
    lapsed = expire([first.directive], now=NOW + timedelta(hours=5), history=history, policies=DEFAULT_POLICIES)
    assert [a.decision for a in lapsed] == [Outcome.EXPIRED]


def test_pin_policy_on_an_alert_without_versions_is_skipped() -> None:
    policies = Policies(policies=(Policy(policy_id="p", alert_kind=AlertKind.ERROR_RATE,
                                         action=ActionKind.PIN_VERSION, target=("feature",)),))
    alert = safety_burst(feature="f").model_copy(update={"kind": AlertKind.ERROR_RATE})
    (action,) = decide_actions(alert, [], policies, now=NOW)
    assert action.decision == Outcome.SKIPPED and "version_field" in action.reason


def test_first_match_per_lane_leaves_restriction_order_unchanged() -> None:
    a = Policy(policy_id="a", alert_kind=AlertKind.SAFETY_BURST, action=ActionKind.DISABLE_TOOL, target=("tool_name",))
    b = Policy(policy_id="b", alert_kind=AlertKind.SAFETY_BURST, action=ActionKind.THROTTLE, rate_per_s=1.0)
    s = Policy(policy_id="s", alert_kind=AlertKind.SAFETY_BURST, action=ActionKind.STRICT_SAFETY)
    s2 = Policy(policy_id="s2", alert_kind=AlertKind.SAFETY_BURST, action=ActionKind.STRICT_SAFETY)
    chosen = Policies(policies=(a, b, s, s2)).all_for_alert(safety_burst(tenant_id="t", tool_name="x"))
    assert [p.policy_id for p in chosen] == ["a", "s"]


def test_a_dry_run_pin_is_decided_and_not_put_in_force() -> None:
    policies = Policies(policies=(Policy(policy_id="p", alert_kind=AlertKind.VERSION_REGRESSION,
                                         action=ActionKind.PIN_VERSION, target=("tenant_id", "feature"),
                                         dry_run=True),))
    (action,) = decide_actions(regression(), [], policies, now=NOW)
    assert action.decision == Outcome.DRY_RUN and action.directive is not None
    assert (action.directive.state, action.directive.pin_value) == (DirectiveState.DRY_RUN, "v1")


def test_cooldown_applies_to_a_pin_on_its_own_key() -> None:
    (first,) = decide_actions(regression(), [], DEFAULT_POLICIES, now=NOW)
    assert first.directive is not None
    history = History(last_fired={first.directive.key(): NOW})
    (again,) = decide_actions(regression(), [], DEFAULT_POLICIES, now=NOW + timedelta(seconds=10), history=history)
    assert again.decision == Outcome.SKIPPED and "cooldown" in again.reason
