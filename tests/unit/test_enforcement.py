"""Unit tests for local enforcement of directives (``flyball.producers.enforcement``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flyball.producers.enforcement import DirectiveView, Staleness, enforce
from flyball.schemas import ActionKind, Directive, DirectiveState, Scope

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T = NOW.timestamp()  # enforce() takes wall time in seconds


def directive(action: ActionKind = ActionKind.THROTTLE, scope: Scope | None = None, *,
              ttl_s: int = 120, **overrides: Any) -> Directive:
    fields: dict[str, Any] = {
        "directive_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{action}|{scope}|{ttl_s}|{sorted(overrides.items())}")),
        "action": action,
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


# ------------------------------------------------------------------ reroute chains


def reroute(frm: str, to: str, *chain: str, scope: Scope | None = None) -> Directive:
    return directive(ActionKind.REROUTE, scope or Scope(model=frm), to_model=to, chain=list(chain),
                     directive_id=f"reroute-{frm}")


def test_reroute_follows_a_chain_of_reroutes_to_a_model_that_is_not_rerouted() -> None:
    view = view_of(reroute("gpt-4o", "claude"), reroute("claude", "gemini"))
    decision = enforce(view, tenant_id="acme", model="gpt-4o", now=T)
    assert (decision.model, decision.directive_ids) == ("gemini", ("reroute-gpt-4o", "reroute-claude"))


def test_reroute_takes_the_first_fallback_of_the_chain_that_is_not_itself_rerouted() -> None:
    view = view_of(reroute("gpt-4o", "claude", "gemini", "mistral"), reroute("claude", "llama"))
    assert enforce(view, tenant_id="acme", model="gpt-4o", now=T).model == "gemini"


def test_reroute_loop_stops_at_the_last_model_not_yet_visited() -> None:
    view = view_of(reroute("a", "b"), reroute("b", "c"), reroute("c", "a"))
    decision = enforce(view, tenant_id="acme", model="a", now=T)
    assert decision.allowed and decision.model == "c"


def test_a_two_model_reroute_cycle_ends_on_the_fallback() -> None:
    view = view_of(reroute("a", "b"), reroute("b", "a"))
    assert enforce(view, tenant_id="acme", model="a", now=T).model == "b"


def test_tenant_scoped_reroute_leaves_other_tenants_on_their_model() -> None:
    view = view_of(reroute("gpt-4o", "gpt-4o-mini", scope=Scope(tenant_id="acme", model="gpt-4o")))
    assert enforce(view, tenant_id="acme", model="gpt-4o", now=T).model == "gpt-4o-mini"
    assert enforce(view, tenant_id="globex", model="gpt-4o", now=T).model == "gpt-4o"


def test_an_expired_hop_is_not_followed() -> None:
    view = view_of(reroute("a", "b"), directive(ActionKind.REROUTE, Scope(model="b"), ttl_s=10, to_model="c"))
    assert enforce(view, tenant_id="acme", model="a", now=T + 5).model == "c"
    assert enforce(view, tenant_id="acme", model="a", now=T + 10).model == "b"


def test_a_throttle_on_the_fallback_model_applies_to_rerouted_calls() -> None:
    view = view_of(reroute("a", "b"), directive(ActionKind.THROTTLE, Scope(model="b"), rate_per_s=0.0, burst=1))
    assert enforce(view, tenant_id="acme", model="a", now=T).allowed
    refused = enforce(view, tenant_id="acme", model="a", now=T)
    assert (refused.allowed, refused.model, refused.reason) == (False, "b", "throttled")


# ------------------------------------------------------------------ throttle rates and tools


def test_throttle_admits_burst_then_rate_per_second_over_time() -> None:
    view = view_of(directive(rate_per_s=10.0, burst=5))
    admitted = sum(enforce(view, tenant_id="acme", now=T + i * 0.01).allowed for i in range(300))
    # 5 from the burst + 10/s over the 2.99 s the calls span
    assert admitted == 5 + 29


def test_two_matching_throttles_admit_only_when_both_have_a_token() -> None:
    view = view_of(directive(rate_per_s=0.0, burst=3),
                   directive(ActionKind.THROTTLE, Scope(tenant_id="acme", feature="bot"), rate_per_s=0.0, burst=1))
    assert enforce(view, tenant_id="acme", feature="bot", now=T).allowed
    assert not enforce(view, tenant_id="acme", feature="bot", now=T).allowed
    # the refused call took no token from the tenant's bucket: two left for other features
    assert [enforce(view, tenant_id="acme", feature="other", now=T).allowed for _ in range(3)] == [True, True, False]


def test_disabled_tool_for_one_tenant_only() -> None:
    view = view_of(directive(ActionKind.DISABLE_TOOL, Scope(tenant_id="acme", tool_name="sql")))
    refused = enforce(view, tenant_id="acme", tool="sql", now=T)
    assert (refused.allowed, refused.reason) == (False, "tool sql disabled")
    assert enforce(view, tenant_id="globex", tool="sql", now=T).allowed


def test_provider_scoped_block() -> None:
    view = view_of(directive(ActionKind.BLOCK, Scope(provider="openai")))
    assert not enforce(view, tenant_id="acme", provider="openai", now=T).allowed
    assert enforce(view, tenant_id="acme", provider="anthropic", now=T).allowed


def test_scope_on_fields_guard_never_sees_is_ignored() -> None:
    view = view_of(directive(ActionKind.BLOCK, Scope(category="pii")))
    assert enforce(view, tenant_id="acme", now=T).allowed


def test_decision_is_truthy_exactly_when_allowed() -> None:
    view = view_of(directive(ActionKind.BLOCK))
    assert not enforce(view, tenant_id="acme", now=T)
    assert enforce(view, tenant_id="globex", now=T)


def test_a_snapshot_replaces_the_view() -> None:
    kept, gone = directive(ActionKind.BLOCK), directive(ActionKind.BLOCK, Scope(tenant_id="globex"))
    view = view_of(kept, gone)
    view.replace_all([kept], now=T + 1)
    assert not enforce(view, tenant_id="acme", now=T).allowed
    assert enforce(view, tenant_id="globex", now=T).allowed
    assert view.updated_at == T + 1


def test_prune_drops_expired_directives() -> None:
    view = view_of(directive(ActionKind.BLOCK, ttl_s=5), directive(ActionKind.BLOCK, Scope(tenant_id="b"), ttl_s=50))
    view.prune(now=T + 10)
    assert [d.scope.tenant_id for d in view.active(now=T + 10)] == ["b"]
    assert list(view.by_key) == ["tenant_id=b"]


# ------------------------------------------------------------------ staleness

HIGH_RISK = Staleness(max_age_s=60, high_risk=({"tenant_id": "bank"}, {"feature": "payments"}))


def test_fresh_view_answers_normally_for_high_risk_scopes() -> None:
    view = view_of()
    view.mark_synced(T)
    decision = enforce(view, tenant_id="bank", now=T + 60, staleness=HIGH_RISK)
    assert decision.allowed and not decision.stale


def test_stale_view_fails_closed_for_a_high_risk_tenant() -> None:
    view = view_of()
    view.mark_synced(T)
    decision = enforce(view, tenant_id="bank", now=T + 60.5, staleness=HIGH_RISK)
    assert (decision.allowed, decision.stale) == (False, True)
    assert "stale" in decision.reason and decision.retry_after_s == 60


def test_stale_view_fails_closed_for_a_high_risk_feature_of_any_tenant() -> None:
    view = view_of()
    view.mark_synced(T)
    assert not enforce(view, tenant_id="acme", feature="payments", now=T + 61, staleness=HIGH_RISK).allowed


def test_stale_view_fails_open_elsewhere_and_still_enforces_what_it_knows() -> None:
    view = view_of(directive(ActionKind.BLOCK, Scope(tenant_id="acme")))
    view.mark_synced(T)
    open_ = enforce(view, tenant_id="globex", feature="chat", now=T + 100, staleness=HIGH_RISK)
    assert (open_.allowed, open_.stale) == (True, True)
    assert not enforce(view, tenant_id="acme", now=T + 100, staleness=HIGH_RISK).allowed


def test_a_view_that_never_synced_is_stale_from_its_creation() -> None:
    view = DirectiveView(created_at=T)
    assert enforce(view, tenant_id="bank", now=T + 30, staleness=HIGH_RISK).allowed
    assert not enforce(view, tenant_id="bank", now=T + 61, staleness=HIGH_RISK).allowed


def test_directive_expiry_is_honoured_while_the_view_is_stale() -> None:
    view = view_of(directive(ActionKind.BLOCK, ttl_s=120))
    view.mark_synced(T)
    assert enforce(view, tenant_id="acme", now=T + 120, staleness=HIGH_RISK).allowed


def test_high_risk_scope_with_an_unknown_field_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="high_risk"):
        Staleness(high_risk=({"category": "pii"},))


def test_request_scoped_throttle_applies_only_to_that_request() -> None:
    d = directive(scope=Scope(tenant_id="acme", request_id="req-loop"), rate_per_s=0.0, burst=1)
    view = view_of(d)
    assert enforce(view, tenant_id="acme", request_id="req-loop", now=T).allowed  # the burst of one
    refused = enforce(view, tenant_id="acme", request_id="req-loop", now=T + 1)
    assert (refused.allowed, refused.reason, refused.directive_ids) == (False, "throttled", (d.directive_id,))
    assert refused.retry_after_s == pytest.approx(119.0)
    assert enforce(view, tenant_id="acme", request_id="req-other", now=T + 1).allowed
    assert enforce(view, tenant_id="acme", now=T + 1).allowed
    assert enforce(view, tenant_id="globex", request_id="req-loop", now=T + 1).allowed


def test_request_scoped_directive_is_forgotten_when_it_ends() -> None:
    d = directive(scope=Scope(request_id="req-loop"), rate_per_s=0.0, burst=0)
    view = view_of(d)
    assert not enforce(view, tenant_id="acme", request_id="req-loop", now=T).allowed
    view.apply(d.model_copy(update={"state": DirectiveState.REVERTED}), now=T)
    assert enforce(view, tenant_id="acme", request_id="req-loop", now=T).allowed
