"""Policy decisions: (alert, active directives, policies, now) -> actions. Pure.

No Kafka, no ClickHouse, no clock; the control loop and ``flyball replay`` call the same
functions. Every automatic action has brakes: a TTL, a cooldown before re-firing on the same
scope, a blast-radius limit on concurrent automatic directives, a dry-run mode, and a manual
pin that automation never touches.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from flyball.schemas import ActionKind, Alert, AlertKind, Directive, DirectiveState, Scope

DIRECTIVE_NAMESPACE = uuid.UUID("5d1b0a52-8a57-4a1e-b0b5-3f0a7f6f2a90")
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


class Decision(StrEnum):
    APPLIED = "applied"
    EXTENDED = "extended"
    DRY_RUN = "dry_run"
    SKIPPED = "skipped"
    EXPIRED = "expired"
    REVERTED = "reverted"
    PINNED = "pinned"
    NOTED = "noted"


@dataclass(frozen=True, slots=True)
class Policy:
    policy_id: str
    alert_kind: AlertKind
    action: ActionKind
    version: int = 1
    min_severity: str = "warning"
    ttl_s: int = 120
    cooldown_s: int = 60
    rate_per_s: float | None = None
    burst: int | None = None
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class Policies:
    policies: tuple[Policy, ...]
    max_active: int = 50  # blast radius: automatic directives in force at once

    def for_alert(self, alert: Alert) -> Policy | None:
        for policy in self.policies:
            if policy.alert_kind == alert.kind and SEVERITY_RANK[alert.severity] >= SEVERITY_RANK[policy.min_severity]:
                return policy
        return None


DEFAULT_POLICIES = Policies(policies=(
    Policy(policy_id="cost-spike-throttle-tenant", alert_kind=AlertKind.COST_SPIKE, action=ActionKind.THROTTLE,
           ttl_s=120, cooldown_s=60, rate_per_s=0.5, burst=1),
))


@dataclass(frozen=True, slots=True)
class Action:
    decision: Decision
    scope: Scope
    reason: str
    directive: Directive | None = None
    before: Directive | None = None
    policy: Policy | None = None
    alert: Alert | None = None
    actor: str = "flyball"


@dataclass(frozen=True, slots=True)
class History:
    """When automation last acted on each scope key (for cooldowns)."""

    last_fired: Mapping[str, datetime] = field(default_factory=dict)


def decide(alert: Alert, active: Sequence[Directive], policies: Policies, *, now: datetime,
           history: History | None = None) -> list[Action]:
    scope = alert.scope
    if alert.status != "open":
        return [Action(Decision.NOTED, scope, "alert resolved; directive stays until its TTL", alert=alert)]
    policy = policies.for_alert(alert)
    if policy is None:
        return [Action(Decision.NOTED, scope, f"no policy for {alert.kind} at severity {alert.severity}", alert=alert)]
    key = scope.key()
    current = next((d for d in active if d.key() == key and d.state == DirectiveState.ACTIVE), None)
    if current is not None:
        if current.pinned or current.actor != "flyball":
            return [Action(Decision.SKIPPED, scope, "a manual directive is in force on this scope", policy=policy, alert=alert)]
        expires = max(current.expires_at, now + timedelta(seconds=policy.ttl_s))
        if expires == current.expires_at:
            return []
        extended = current.model_copy(update={"expires_at": expires})
        return [Action(Decision.EXTENDED, scope, "alert still open", directive=extended, before=current, policy=policy, alert=alert)]
    last = (history or History()).last_fired.get(key)
    if last is not None and now - last < timedelta(seconds=policy.cooldown_s):
        return [Action(Decision.SKIPPED, scope, f"cooldown: acted on this scope {int((now - last).total_seconds())}s ago",
                       policy=policy, alert=alert)]
    automatic = sum(1 for d in active if d.state == DirectiveState.ACTIVE and d.actor == "flyball")
    if automatic >= policies.max_active:
        return [Action(Decision.SKIPPED, scope, f"blast radius: {automatic} automatic directives already active",
                       policy=policy, alert=alert)]
    directive = Directive(
        directive_id=str(uuid.uuid5(DIRECTIVE_NAMESPACE, f"{alert.alert_id}|{policy.policy_id}|{policy.version}")),
        action=policy.action, scope=scope,
        state=DirectiveState.DRY_RUN if policy.dry_run else DirectiveState.ACTIVE,
        rate_per_s=policy.rate_per_s, burst=policy.burst, created_at=now,
        expires_at=now + timedelta(seconds=policy.ttl_s), reason=alert.summary or str(alert.kind),
        alert_id=alert.alert_id, policy_id=f"{policy.policy_id}@v{policy.version}",
    )
    decision = Decision.DRY_RUN if policy.dry_run else Decision.APPLIED
    return [Action(decision, scope, f"{alert.kind} ({alert.severity}) -> {policy.action}", directive=directive,
                   policy=policy, alert=alert)]


def expire(active: Sequence[Directive], *, now: datetime) -> list[Action]:
    """Directives whose TTL has run out (pinned ones excepted)."""
    out = []
    for d in active:
        if d.state == DirectiveState.ACTIVE and not d.pinned and d.expires_at <= now:
            out.append(Action(Decision.EXPIRED, d.scope, "TTL elapsed",
                              directive=d.model_copy(update={"state": DirectiveState.EXPIRED}), before=d))
    return out


def revert(directive: Directive, *, actor: str, now: datetime) -> Action:
    return Action(Decision.REVERTED, directive.scope, f"reverted by {actor}", before=directive, actor=actor,
                  directive=directive.model_copy(update={"state": DirectiveState.REVERTED, "expires_at": now}))


def pin(directive: Directive, *, actor: str) -> Action:
    return Action(Decision.PINNED, directive.scope, f"pinned by {actor}", before=directive, actor=actor,
                  directive=directive.model_copy(update={"pinned": True}))


def with_ttl(policy: Policy, ttl_s: int) -> Policy:
    return replace(policy, ttl_s=ttl_s)
