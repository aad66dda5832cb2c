"""Unit tests for policy decisions (``flyball.control_plane.policy``): actions and their brakes."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from flyball.control_plane.policy import (
    DIRECTIVE_NAMESPACE,
    Decision,
    History,
    Policies,
    Policy,
    decide,
    expire,
    pin,
    revert,
)
from flyball.schemas import ActionKind, Alert, AlertKind, Directive, DirectiveState, Scope

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
    (action,) = decide(alert(), [], POLICIES, now=NOW)
    assert action.decision == Decision.APPLIED
    d = action.directive
    assert (d.action, d.scope, d.state, d.rate_per_s, d.burst) == (
        ActionKind.THROTTLE, Scope(tenant_id="acme"), DirectiveState.ACTIVE, 0.5, 1)
    assert (d.created_at, d.expires_at) == (NOW, NOW + timedelta(seconds=120))
    assert (d.alert_id, d.policy_id) == (ALERT_ID, "cost-spike-throttle-tenant@v1")


def test_directive_id_is_deterministic() -> None:
    first = decide(alert(), [], POLICIES, now=NOW)[0].directive
    later = decide(alert(), [], POLICIES, now=NOW + timedelta(hours=1))[0].directive
    assert first.directive_id == later.directive_id == str(
        uuid.uuid5(DIRECTIVE_NAMESPACE, f"{ALERT_ID}|cost-spike-throttle-tenant|1"))


def test_existing_automatic_directive_is_extended_to_now_plus_ttl() -> None:
    current = directive(expires_in=30)
    (action,) = decide(alert(), [current], POLICIES, now=NOW)
    assert action.decision == Decision.EXTENDED
    assert action.before == current
    assert action.directive == current.model_copy(update={"expires_at": NOW + timedelta(seconds=120)})


def test_existing_directive_lasting_longer_than_ttl_needs_no_action() -> None:
    assert decide(alert(), [directive(expires_in=600)], POLICIES, now=NOW) == []


def test_pinned_directive_on_the_scope_is_never_touched() -> None:
    (action,) = decide(alert(), [directive(pinned=True)], POLICIES, now=NOW)
    assert (action.decision, action.directive) == (Decision.SKIPPED, None)


def test_manual_directive_on_the_scope_wins_over_automation() -> None:
    (action,) = decide(alert(), [directive(actor="alice@sre")], POLICIES, now=NOW)
    assert (action.decision, action.directive) == (Decision.SKIPPED, None)


def test_cooldown_skips_refiring_on_the_same_scope() -> None:
    history = History(last_fired={"tenant_id=acme": NOW - timedelta(seconds=59)})
    (action,) = decide(alert(), [], POLICIES, now=NOW, history=history)
    assert action.decision == Decision.SKIPPED
    assert action.reason.startswith("cooldown")


def test_cooldown_elapsed_allows_acting_again() -> None:
    history = History(last_fired={"tenant_id=acme": NOW - timedelta(seconds=60)})
    assert decide(alert(), [], POLICIES, now=NOW, history=history)[0].decision == Decision.APPLIED


def test_blast_radius_limit_skips_a_new_automatic_directive() -> None:
    policies = Policies(policies=(THROTTLE,), max_active=2)
    active = [directive("globex"), directive("initech")]
    (action,) = decide(alert(), active, policies, now=NOW)
    assert action.decision == Decision.SKIPPED
    assert action.reason.startswith("blast radius")


def test_blast_radius_counts_only_automatic_directives() -> None:
    policies = Policies(policies=(THROTTLE,), max_active=1)
    (action,) = decide(alert(), [directive("globex", actor="alice@sre")], policies, now=NOW)
    assert action.decision == Decision.APPLIED


def test_dry_run_policy_records_a_dry_run_directive() -> None:
    policies = Policies(policies=(replace(THROTTLE, dry_run=True),))
    (action,) = decide(alert(), [], policies, now=NOW)
    assert (action.decision, action.directive.state) == (Decision.DRY_RUN, DirectiveState.DRY_RUN)


def test_resolved_alert_is_noted_without_action() -> None:
    (action,) = decide(alert(status="resolved"), [directive()], POLICIES, now=NOW)
    assert (action.decision, action.directive) == (Decision.NOTED, None)


def test_alert_below_policy_severity_is_noted() -> None:
    (action,) = decide(alert(severity="info"), [], POLICIES, now=NOW)
    assert (action.decision, action.directive) == (Decision.NOTED, None)


def test_expire_returns_expired_for_directives_past_their_ttl() -> None:
    due, running = directive("acme", expires_in=0), directive("globex", expires_in=1)
    (action,) = expire([due, running], now=NOW)
    assert (action.decision, action.before) == (Decision.EXPIRED, due)
    assert action.directive.state == DirectiveState.EXPIRED


def test_expire_never_expires_a_pinned_directive() -> None:
    assert expire([directive(expires_in=-3600, pinned=True)], now=NOW) == []


def test_revert_ends_the_directive_now_and_records_the_actor() -> None:
    action = revert(directive(), actor="alice@sre", now=NOW)
    assert (action.decision, action.actor) == (Decision.REVERTED, "alice@sre")
    assert (action.directive.state, action.directive.expires_at) == (DirectiveState.REVERTED, NOW)


def test_pinned_directive_is_skipped_by_later_decisions() -> None:
    pinned = pin(directive(), actor="alice@sre").directive
    assert pinned.pinned
    assert decide(alert(), [pinned], POLICIES, now=NOW)[0].decision == Decision.SKIPPED
