"""Unit tests for local enforcement of directives (``flyball.producers.enforcement``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from flyball.producers.enforcement import DirectiveView, enforce
from flyball.schemas import ActionKind, Directive, DirectiveState, Scope

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T = NOW.timestamp()  # enforce() takes wall time in seconds


def directive(action: ActionKind = ActionKind.THROTTLE, scope: Scope | None = None, *,
              ttl_s: int = 120, **overrides: Any) -> Directive:
    fields: dict[str, Any] = {
        "directive_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{action}|{scope}|{ttl_s}")), "action": action,
        "scope": scope or Scope(tenant_id="acme"), "created_at": NOW,
        "expires_at": NOW + timedelta(seconds=ttl_s),
    }
    if action == ActionKind.THROTTLE:
        fields.update(rate_per_s=0.5, burst=1)
    fields.update(overrides)
    return Directive(**fields)


def view_of(*directives: Directive) -> DirectiveView:
    view = DirectiveView()
    for d in directives:
        view.apply(d, now=T)
    return view


def test_empty_view_allows_with_the_requested_model() -> None:
    decision = enforce(DirectiveView(), tenant_id="acme", model="gpt-4o", tool="sql", now=T)
    assert (decision.allowed, decision.model, decision.directive_ids) == (True, "gpt-4o", ())


def test_throttle_allows_the_first_call_within_the_burst() -> None:
    d = directive()
    decision = enforce(view_of(d), tenant_id="acme", now=T)
    assert (decision.allowed, decision.directive_ids) == (True, (d.directive_id,))


def test_throttle_refuses_the_second_call_with_exact_retry_after() -> None:
    view = view_of(directive())
    enforce(view, tenant_id="acme", now=T)
    decision = enforce(view, tenant_id="acme", now=T)
    assert (decision.allowed, decision.retry_after_s, decision.reason) == (False, 2.0, "throttled")


def test_throttle_allows_again_once_a_token_has_refilled() -> None:
    view = view_of(directive())
    enforce(view, tenant_id="acme", now=T)
    assert not enforce(view, tenant_id="acme", now=T + 1.5).allowed
    assert enforce(view, tenant_id="acme", now=T + 2.0).allowed


def test_throttle_leaves_other_tenants_unaffected() -> None:
    view = view_of(directive())
    enforce(view, tenant_id="acme", now=T)
    assert [enforce(view, tenant_id="globex", now=T).allowed for _ in range(3)] == [True, True, True]


def test_retry_after_never_exceeds_the_time_left_on_the_directive() -> None:
    view = view_of(directive(ttl_s=1))
    enforce(view, tenant_id="acme", now=T)
    assert enforce(view, tenant_id="acme", now=T + 0.25).retry_after_s == 0.75


def test_extending_the_same_directive_keeps_its_token_bucket() -> None:
    d = directive()
    view = view_of(d)
    enforce(view, tenant_id="acme", now=T)
    view.apply(d.model_copy(update={"expires_at": NOW + timedelta(seconds=600)}), now=T)
    assert not enforce(view, tenant_id="acme", now=T).allowed


def test_expired_directive_still_in_the_view_is_ignored() -> None:
    view = view_of(directive(ActionKind.BLOCK, ttl_s=60))
    assert not enforce(view, tenant_id="acme", now=T + 59.999).allowed
    assert enforce(view, tenant_id="acme", now=T + 60).allowed


def test_directive_update_to_expired_removes_it() -> None:
    d = directive(ActionKind.BLOCK)
    view = view_of(d, d.model_copy(update={"state": DirectiveState.EXPIRED}))
    assert enforce(view, tenant_id="acme", now=T).allowed
    assert view.by_key == {}


def test_directive_update_to_reverted_removes_it() -> None:
    d = directive(ActionKind.BLOCK)
    view = view_of(d, d.model_copy(update={"state": DirectiveState.REVERTED}))
    assert enforce(view, tenant_id="acme", now=T).allowed


def test_reroute_returns_the_replacement_model() -> None:
    view = view_of(directive(ActionKind.REROUTE, Scope(model="gpt-4o"), to_model="gpt-4o-mini"))
    decision = enforce(view, tenant_id="acme", model="gpt-4o", now=T)
    assert (decision.allowed, decision.model) == (True, "gpt-4o-mini")


def test_disable_tool_refuses_only_that_tool() -> None:
    view = view_of(directive(ActionKind.DISABLE_TOOL, Scope(tool_name="sql")))
    assert not enforce(view, tenant_id="acme", tool="sql", now=T).allowed
    assert enforce(view, tenant_id="acme", tool="search", now=T).allowed
    assert enforce(view, tenant_id="acme", now=T).allowed


def test_block_refuses_until_the_directive_expires() -> None:
    decision = enforce(view_of(directive(ActionKind.BLOCK)), tenant_id="acme", feature="support-bot", now=T)
    assert (decision.allowed, decision.reason, decision.retry_after_s) == (False, "blocked", 120.0)


def test_feature_scoped_directive_applies_only_to_that_feature() -> None:
    view = view_of(directive(ActionKind.BLOCK, Scope(tenant_id="acme", feature="support-bot")))
    assert not enforce(view, tenant_id="acme", feature="support-bot", now=T).allowed
    assert enforce(view, tenant_id="acme", feature="search", now=T).allowed
