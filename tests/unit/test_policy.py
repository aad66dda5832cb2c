"""Unit tests for policy decisions (``flyball.control_plane.policy``): actions and their brakes."""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from flyball.control_plane.policy import (
    Action,
    DIRECTIVE_NAMESPACE,
    History,
    Outcome,
    Policies,
    Policy,
    approve,
    decide_actions,
    expire,
    observe,
    pin,
    reject,
    revert,
)

from flyball.control_plane.policy_file import DEFAULT_POLICIES, dump_policies, load_policies, parse_policies, revise
from flyball.schemas import MAX_TTL_S, ActionKind, Alert, AlertKind, Directive, DirectiveState, Scope

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ALERT_ID = "9a4e3f58-4a57-5d2f-8f4c-5e0f3a2b1c0d"
THROTTLE = Policy(policy_id="cost-spike-throttle-tenant", alert_kind=AlertKind.COST_SPIKE,
                  action=ActionKind.THROTTLE, ttl_s=120, cooldown_s=60, rate_per_s=0.5, burst=1)
POLICIES = Policies(policies=(THROTTLE,))


def alert(tenant_id: str = "acme", **overrides: Any) -> Alert:
    fields: dict[str, Any] = {
        "alert_id": ALERT_ID, "kind": AlertKind.COST_SPIKE, "scope": Scope(tenant_id=tenant_id),
        "severity": "warning", "metric": "cost_usd_per_window", "observed": "10", "baseline": "1",
        "threshold": "4", "window_s": 10, "first_seen": NOW, "last_seen": NOW, "summary": "spend spike",
    }
    fields.update(overrides)
    return Alert(**fields)


def directive(tenant_id: str = "acme", *, expires_in: int = 60, **overrides: Any) -> Directive:
    fields: dict[str, Any] = {
        "directive_id": str(uuid.uuid5(uuid.NAMESPACE_URL, tenant_id)), "action": ActionKind.THROTTLE,
        "scope": Scope(tenant_id=tenant_id), "rate_per_s": 0.5, "burst": 1,
        "created_at": NOW - timedelta(seconds=60), "expires_at": NOW + timedelta(seconds=expires_in),
    }
    fields.update(overrides)
    return Directive(**fields)


def test_cost_spike_applies_one_throttle_on_that_tenant_with_a_ttl() -> None:
    (action,) = decide_actions(alert(), [], POLICIES, now=NOW)
    assert action.decision == Outcome.APPLIED
    d = action.directive
    assert (d.action, d.scope, d.state, d.rate_per_s, d.burst) == (
        ActionKind.THROTTLE, Scope(tenant_id="acme"), DirectiveState.ACTIVE, 0.5, 1)
    assert (d.created_at, d.expires_at) == (NOW, NOW + timedelta(seconds=120))
    assert (d.alert_id, d.policy_id) == (ALERT_ID, "cost-spike-throttle-tenant@v1")


def test_directive_id_is_deterministic() -> None:
    first = decide_actions(alert(), [], POLICIES, now=NOW)[0].directive
    later = decide_actions(alert(last_seen=NOW + timedelta(hours=1)), [], POLICIES, now=NOW + timedelta(hours=1))[0].directive
    assert first.directive_id == later.directive_id == str(
        uuid.uuid5(DIRECTIVE_NAMESPACE, f"{ALERT_ID}|cost-spike-throttle-tenant|1"))


def test_existing_automatic_directive_is_extended_to_now_plus_ttl() -> None:
    current = directive(expires_in=30)
    (action,) = decide_actions(alert(), [current], POLICIES, now=NOW)
    assert action.decision == Outcome.EXTENDED
    assert action.before == current
    assert action.directive == current.model_copy(update={"expires_at": NOW + timedelta(seconds=120)})


def test_existing_directive_lasting_longer_than_ttl_needs_no_action() -> None:
    assert decide_actions(alert(), [directive(expires_in=600)], POLICIES, now=NOW) == []


def test_pinned_directive_on_the_scope_is_never_touched() -> None:
    (action,) = decide_actions(alert(), [directive(pinned=True)], POLICIES, now=NOW)
    assert (action.decision, action.directive) == (Outcome.SKIPPED, None)


def test_manual_directive_on_the_scope_wins_over_automation() -> None:
    (action,) = decide_actions(alert(), [directive(actor="alice@sre")], POLICIES, now=NOW)
    assert (action.decision, action.directive) == (Outcome.SKIPPED, None)


def test_cooldown_skips_refiring_on_the_same_scope() -> None:
    history = History(last_fired={"tenant_id=acme": NOW - timedelta(seconds=59)})
    (action,) = decide_actions(alert(), [], POLICIES, now=NOW, history=history)
    assert action.decision == Outcome.SKIPPED
    assert action.reason.startswith("cooldown")


def test_cooldown_elapsed_allows_acting_again() -> None:
    history = History(last_fired={"tenant_id=acme": NOW - timedelta(seconds=60)})
    assert decide_actions(alert(), [], POLICIES, now=NOW, history=history)[0].decision == Outcome.APPLIED


def test_blast_radius_limit_skips_a_new_automatic_directive() -> None:
    policies = Policies(policies=(THROTTLE,), max_active=2)
    active = [directive("globex"), directive("initech")]
    (action,) = decide_actions(alert(), active, policies, now=NOW)
    assert action.decision == Outcome.SKIPPED
    assert action.reason.startswith("blast radius")


def test_blast_radius_counts_only_automatic_directives() -> None:
    policies = Policies(policies=(THROTTLE,), max_active=1)
    (action,) = decide_actions(alert(), [directive("globex", actor="alice@sre")], policies, now=NOW)
    assert action.decision == Outcome.APPLIED


def test_dry_run_policy_records_a_dry_run_directive() -> None:
    policies = Policies(policies=(replace(THROTTLE, dry_run=True),))
    (action,) = decide_actions(alert(), [], policies, now=NOW)
    assert (action.decision, action.directive.state) == (Outcome.DRY_RUN, DirectiveState.DRY_RUN)


def test_resolved_alert_is_noted_without_action() -> None:
    (action,) = decide_actions(alert(status="resolved"), [directive()], POLICIES, now=NOW)
    assert (action.decision, action.directive) == (Outcome.NOTED, None)


def test_alert_below_policy_severity_is_noted() -> None:
    (action,) = decide_actions(alert(severity="info"), [], POLICIES, now=NOW)
    assert (action.decision, action.directive) == (Outcome.NOTED, None)


def test_expire_returns_expired_for_directives_past_their_ttl() -> None:
    due, running = directive("acme", expires_in=0), directive("globex", expires_in=1)
    (action,) = expire([due, running], now=NOW)
    assert (action.decision, action.before) == (Outcome.EXPIRED, due)
    assert action.directive.state == DirectiveState.EXPIRED


def test_expire_never_expires_a_pinned_directive() -> None:
    (renewal,) = expire([directive(expires_in=-3600, pinned=True)], now=NOW)
    assert renewal.decision == Outcome.EXTENDED and renewal.directive is not None
    assert renewal.directive.expires_at == NOW + timedelta(seconds=MAX_TTL_S)


def test_a_pinned_directive_is_renewed_only_when_half_the_max_ttl_is_left() -> None:
    fresh = directive(expires_in=MAX_TTL_S - 60, pinned=True)
    assert expire([fresh], now=NOW) == []


def test_revert_ends_the_directive_now_and_records_the_actor() -> None:
    action = revert(directive(), actor="alice@sre", now=NOW)
    assert (action.decision, action.actor) == (Outcome.REVERTED, "alice@sre")
    assert (action.directive.state, action.directive.expires_at) == (DirectiveState.REVERTED, NOW)


def test_pinned_directive_is_skipped_by_later_decisions() -> None:
    pinned = pin(directive(), actor="alice@sre").directive
    assert pinned.pinned
    assert decide_actions(alert(), [pinned], POLICIES, now=NOW)[0].decision == Outcome.SKIPPED


# ---------------------------------------------------------------- shipped defaults, by alert kind
def kind_alert(kind: AlertKind, severity: str = "warning", alert_id: str = ALERT_ID, **scope: str) -> Alert:
    return alert(kind=kind, severity=severity, alert_id=alert_id, scope=Scope(**scope))


@pytest.mark.parametrize(("kind", "severity", "scope", "decision", "action", "target"), [
    (AlertKind.COST_SPIKE, "warning", {"tenant_id": "acme"}, Outcome.APPLIED, ActionKind.THROTTLE,
     {"tenant_id": "acme"}),
    (AlertKind.COST_SPIKE, "critical", {"tenant_id": "acme", "feature": "chat"}, Outcome.APPLIED,
     ActionKind.THROTTLE, {"tenant_id": "acme", "feature": "chat"}),
    (AlertKind.BUDGET_THRESHOLD, "critical", {"tenant_id": "acme"}, Outcome.APPLIED, ActionKind.THROTTLE,
     {"tenant_id": "acme"}),
    (AlertKind.ERROR_RATE, "warning", {"provider": "openai", "model": "gpt-4o"}, Outcome.APPLIED,
     ActionKind.REROUTE, {"model": "gpt-4o"}),
    (AlertKind.LATENCY, "critical", {"provider": "openai", "model": "gpt-4o"}, Outcome.APPLIED,
     ActionKind.REROUTE, {"model": "gpt-4o"}),
    (AlertKind.TOOL_FAILURE, "warning", {"tool_name": "sql"}, Outcome.APPLIED, ActionKind.DISABLE_TOOL,
     {"tool_name": "sql"}),
    (AlertKind.SAFETY_BURST, "warning", {"tenant_id": "acme", "tool_name": "browser"}, Outcome.APPLIED,
     ActionKind.DISABLE_TOOL, {"tenant_id": "acme", "tool_name": "browser"}),
    (AlertKind.SAFETY_BURST, "critical", {"tenant_id": "acme", "feature": "chat", "category": "pii"},
     Outcome.PENDING, ActionKind.BLOCK, {"tenant_id": "acme", "feature": "chat"}),
    (AlertKind.RUNAWAY_LOOP, "warning", {"tenant_id": "acme", "request_id": "r1"}, Outcome.APPLIED,
     ActionKind.THROTTLE, {"tenant_id": "acme", "request_id": "r1"}),
])
def test_shipped_defaults_map_each_alert_kind_to_its_action(kind: AlertKind, severity: str, scope: dict[str, str],
                                                            decision: Outcome, action: ActionKind,
                                                            target: dict[str, str]) -> None:
    # the restriction lane comes first; a safety burst on a feature also switches it to strict safety
    act, *settings = decide_actions(kind_alert(kind, severity, **scope), [], DEFAULT_POLICIES, now=NOW)
    assert all(a.directive is not None and a.directive.action == ActionKind.STRICT_SAFETY for a in settings)
    assert (act.decision, act.directive.action, act.directive.scope.compact()) == (decision, action, target)


def test_budget_threshold_below_100_percent_is_only_noted() -> None:
    (act,) = decide_actions(kind_alert(AlertKind.BUDGET_THRESHOLD, "warning", tenant_id="acme"), [], DEFAULT_POLICIES, now=NOW)
    assert (act.decision, act.directive) == (Outcome.NOTED, None)


def test_reroute_goes_to_the_next_model_of_the_fallback_chain() -> None:
    (act,) = decide_actions(kind_alert(AlertKind.ERROR_RATE, provider="openai", model="gpt-4o"), [], DEFAULT_POLICIES, now=NOW)
    assert (act.directive.to_model, act.directive.chain) == ("gpt-4.1-mini", ["gpt-4o-mini"])


def test_reroute_skips_a_fallback_that_is_itself_rerouted_away() -> None:
    away = directive(action=ActionKind.REROUTE, scope=Scope(model="gpt-4.1-mini"), to_model="gpt-4o-mini",
                     rate_per_s=None, burst=None)
    (act,) = decide_actions(kind_alert(AlertKind.ERROR_RATE, provider="openai", model="gpt-4o"), [away], DEFAULT_POLICIES,
                    now=NOW)
    assert act.directive.to_model == "gpt-4o-mini"


def test_reroute_without_a_fallback_is_skipped() -> None:
    (act,) = decide_actions(kind_alert(AlertKind.ERROR_RATE, provider="openai", model="gpt-4o-mini"), [], DEFAULT_POLICIES,
                    now=NOW)
    assert (act.decision, act.directive) == (Outcome.SKIPPED, None)
    assert "no fallback" in act.reason


# ---------------------------------------------------------------- hysteresis and automatic revert
HYST = replace(THROTTLE, hysteresis_s=60)
HYST_POLICIES = Policies(policies=(HYST,))


def applied(a: Alert = None) -> Directive:  # type: ignore[assignment]
    return decide_actions(a or alert(), [], HYST_POLICIES, now=NOW)[0].directive


def test_revert_waits_for_the_hysteresis_after_the_alert_resolves() -> None:
    d = applied()
    history = observe(History(), alert(status="resolved", last_seen=NOW + timedelta(seconds=10)))
    assert expire([d], now=NOW + timedelta(seconds=69), history=history, policies=HYST_POLICIES) == []
    (act,) = expire([d], now=NOW + timedelta(seconds=70), history=history, policies=HYST_POLICIES)
    assert (act.decision, act.directive.state) == (Outcome.REVERTED, DirectiveState.REVERTED)


def test_a_reopened_alert_cancels_the_pending_revert() -> None:
    d = applied()
    history = observe(History(), alert(status="resolved", last_seen=NOW + timedelta(seconds=10)))
    history = observe(history, alert(last_seen=NOW + timedelta(seconds=30)))
    assert expire([d], now=NOW + timedelta(seconds=100), history=history, policies=HYST_POLICIES) == []


@pytest.mark.parametrize("override", [{"pinned": True}, {"actor": "key:alice"}])
def test_automatic_revert_never_touches_pinned_or_manual_directives(override: dict[str, Any]) -> None:
    d = applied().model_copy(update=override)
    history = observe(History(), alert(status="resolved", last_seen=NOW))
    actions = expire([d], now=NOW + timedelta(seconds=110), history=history, policies=HYST_POLICIES)
    assert [a.decision for a in actions] in ([], [Outcome.EXTENDED])  # a pin is renewed, never reverted


# ---------------------------------------------------------------- approval and blast radius share
APPROVAL = Policies(policies=(replace(THROTTLE, approval=True),))


def test_approval_policy_leaves_the_directive_pending_and_does_not_repeat() -> None:
    (act,) = decide_actions(alert(), [], APPROVAL, now=NOW)
    assert (act.decision, act.directive.state) == (Outcome.PENDING, DirectiveState.PENDING)
    assert decide_actions(alert(), [act.directive], APPROVAL, now=NOW + timedelta(seconds=5)) == []


def test_approving_puts_the_directive_in_force_for_its_full_ttl() -> None:
    pending = decide_actions(alert(), [], APPROVAL, now=NOW)[0].directive
    later = NOW + timedelta(seconds=90)
    act = approve(pending, actor="key:alice", now=later)
    assert (act.decision, act.actor, act.directive.state) == (Outcome.APPROVED, "key:alice", DirectiveState.ACTIVE)
    assert act.directive.expires_at == later + timedelta(seconds=120)


def test_rejecting_ends_a_pending_directive() -> None:
    pending = decide_actions(alert(), [], APPROVAL, now=NOW)[0].directive
    assert reject(pending, actor="key:alice", now=NOW).directive.state == DirectiveState.REJECTED


def test_a_pending_directive_not_approved_within_its_ttl_expires() -> None:
    pending = decide_actions(alert(), [], APPROVAL, now=NOW)[0].directive
    (act,) = expire([pending], now=NOW + timedelta(seconds=120))
    assert (act.decision, act.reason) == (Outcome.EXPIRED, "approval not given within TTL")


def test_restricting_more_than_the_traffic_share_waits_for_approval() -> None:
    policies = Policies(policies=(THROTTLE,), max_traffic_share=0.5)
    history = History(traffic={"acme": 40.0, "globex": 30.0, "initech": 30.0})
    (first,) = decide_actions(alert("acme"), [], policies, now=NOW, history=history)
    assert first.decision == Outcome.APPLIED  # 40% of traffic
    (second,) = decide_actions(alert("globex"), [first.directive], policies, now=NOW, history=history)
    assert second.decision == Outcome.PENDING and "70%" in second.reason


def test_block_policies_require_approval() -> None:
    with pytest.raises(ValueError, match=r"policies\[0\].*approval"):
        parse_policies({"policies": [{"policy_id": "b", "alert_kind": "safety_burst", "action": "block"}]})


@pytest.mark.parametrize(("doc", "field"), [
    ("policies:\n  - {policy_id: a, alert_kind: cost_spike, action: throttle, rate_per_s: 1, ttl_s: -1}",
     "policies[0].ttl_s"),
    ("policies:\n  - {policy_id: a, alert_kind: nope, action: throttle}", "policies[0].alert_kind"),
    ("policies:\n  - {policy_id: a, alert_kind: cost_spike, action: throttle, rate_per_s: 1, match: {colour: x}}",
     "policies[0].match"),
    ("max_traffic_share: 2\npolicies: []", "max_traffic_share"),
])
def test_policy_file_errors_name_the_field(doc: str, field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(field)):
        load_policies(doc)


def test_policies_round_trip_through_their_file_form() -> None:
    assert parse_policies(dump_policies(DEFAULT_POLICIES)) == DEFAULT_POLICIES


def test_revising_policies_bumps_only_the_changed_ones() -> None:
    other = replace(THROTTLE, policy_id="other")
    old = Policies(policies=(THROTTLE, other), version=3)
    new = revise(old, Policies(policies=(replace(THROTTLE, ttl_s=999), other)))
    assert new.version == 4
    assert [(p.policy_id, p.version) for p in new.policies] == [("cost-spike-throttle-tenant", 2), ("other", 1)]


# ---------------------------------------------------------------- no flapping
def run_loop(opens: list[bool], policies: Policies, *, step_s: int = 10) -> list[tuple[datetime, Action]]:
    """The control loop's bookkeeping over a metric that is above (True) or below the
    threshold at each step; a new alert id per open episode (the worst case)."""
    directives: dict[str, Directive] = {}
    history, last_fired = History(), {}
    out: list[tuple[datetime, Action]] = []
    episode, was_open = 0, False
    for i, is_open in enumerate(opens):
        now = NOW + timedelta(seconds=i * step_s)
        if is_open and not was_open:
            episode += 1
        if is_open or was_open:
            a = alert(alert_id=f"episode-{episode}", status="open" if is_open else "resolved", last_seen=now)
            history = observe(history, a)
            live = [d for d in directives.values() if d.state in ("active", "pending")]
            actions = expire(live, now=now, history=history, policies=policies)
            live = [d for d in live if d.directive_id not in {x.directive.directive_id for x in actions}]
            actions += decide_actions(a, live, policies, now=now, history=replace(history, last_fired=last_fired))
        else:
            live = [d for d in directives.values() if d.state in ("active", "pending")]
            actions = expire(live, now=now, history=history, policies=policies)
        was_open = is_open
        for act in actions:
            if act.directive is not None and act.decision not in (Outcome.SKIPPED, Outcome.NOTED):
                directives[act.directive.key()] = act.directive
                if act.decision == Outcome.APPLIED:
                    last_fired[act.directive.key()] = now
            out.append((now, act))
    return out


def changes(log: list[tuple[datetime, Action]]) -> list[tuple[datetime, Outcome]]:
    return [(t, a.decision) for t, a in log if a.decision in (Outcome.APPLIED, Outcome.REVERTED, Outcome.EXPIRED)]


def test_metric_oscillating_around_the_threshold_applies_once_and_holds() -> None:
    """Open 10 s, resolved 10 s, for half an hour: one throttle, kept in force throughout."""
    policies = Policies(policies=(replace(THROTTLE, ttl_s=300, cooldown_s=300, hysteresis_s=60),))
    log = run_loop([i % 2 == 0 for i in range(180)], policies)
    assert [d for _, d in changes(log)] == [Outcome.APPLIED]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=240), st.integers(min_value=0, max_value=120),
       st.integers(min_value=30, max_value=600))
def test_no_flapping_at_most_one_action_per_cooldown(opens: list[bool], hysteresis: int, cooldown: int) -> None:
    policies = Policies(policies=(replace(THROTTLE, ttl_s=300, cooldown_s=cooldown, hysteresis_s=hysteresis),))
    applied_at = [t for t, d in changes(run_loop(opens, policies)) if d == Outcome.APPLIED]
    for earlier, later in zip(applied_at, applied_at[1:]):
        assert later - earlier >= timedelta(seconds=cooldown)


def test_after_a_long_calm_automation_acts_again_once_the_cooldown_has_passed() -> None:
    """The brakes do not make automation deaf: separate incidents get separate actions."""
    policies = Policies(policies=(replace(THROTTLE, ttl_s=300, cooldown_s=300, hysteresis_s=60),))
    log = run_loop(([True] + [False] * 40) * 3, policies)
    assert [d for _, d in changes(log)] == [Outcome.APPLIED, Outcome.REVERTED] * 3


def test_a_stale_alert_replayed_from_the_topic_is_not_acted_on() -> None:
    (act,) = decide_actions(alert(), [], POLICIES, now=NOW + timedelta(seconds=121))
    assert (act.decision, act.directive) == (Outcome.NOTED, None) and act.reason.startswith("stale")
