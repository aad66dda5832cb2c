"""Policy decisions: (alert, live directives, policies, now) -> actions. Pure.

No Kafka, no ClickHouse, no clock; the control loop and ``flyball replay`` call the same
functions. Policies are data (a YAML file, ``policy_file.load_policies``) that map an alert's kind,
severity and scope pattern to an action. Every automatic action has brakes:

- a TTL (``ttl_s``) after which it lapses unless the alert keeps it alive;
- a cooldown (``cooldown_s``) before automation fires again on the same scope;
- hysteresis (``hysteresis_s``): once its alert resolves, the action is reverted only after the
  alert has stayed resolved that long (a re-opened alert cancels the revert);
- a blast radius: at most ``max_active`` automatic directives at once (more are skipped), and
  at most ``max_traffic_share`` of recent traffic behind automatic restrictions (more waits
  for approval);
- dry-run per policy (decided and audited, never published);
- approval per policy (the directive waits as ``pending`` until an SRE approves it);
- manual overrides win: a pinned or manual directive is never touched by automation.

The first policy that matches an alert decides, per *lane*: one restriction (throttle, reroute,
disable_tool or block), and independently one ``pin_version`` and one ``strict_safety``, so a
safety burst can switch a feature to strict safety at once while a block waits for approval.
A ``pin_version`` pins the alert's ``version_field`` to its ``old_version`` (the incumbent of a
``version_regression``); an alert without them is skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any


from flyball.schemas import (
    MAX_TTL_S,
    PIN_FIELDS,
    SETTINGS,
    ActionKind,
    Alert,
    AlertKind,
    Directive,
    DirectiveState,
    Scope,
    directive_key,
)


DIRECTIVE_NAMESPACE = uuid.UUID("5d1b0a52-8a57-4a1e-b0b5-3f0a7f6f2a90")
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
AUTOMATION = "flyball"
RESTRICTIVE = (ActionKind.THROTTLE, ActionKind.BLOCK, ActionKind.DISABLE_TOOL)


class Outcome(StrEnum):
    """What became of an action: the ``decision`` column of the audit log."""

    APPLIED = "applied"
    EXTENDED = "extended"
    DRY_RUN = "dry_run"
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    EXPIRED = "expired"
    REVERTED = "reverted"
    PINNED = "pinned"
    NOTED = "noted"
    POLICIES_UPDATED = "policies_updated"
    FAILED = "failed"  # the directive could not be published: not in force (audited with the error)


# decisions that change what is in force (the control loop publishes their directive)
PUBLISHED = frozenset({Outcome.APPLIED, Outcome.EXTENDED, Outcome.APPROVED, Outcome.EXPIRED,
                       Outcome.REVERTED, Outcome.PINNED})


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
    # scope field -> glob pattern the alert's scope must match; None: the field must be absent
    match: tuple[tuple[str, str | None], ...] = ()
    # the scope fields the directive keeps from the alert's scope; () keeps them all
    target: tuple[str, ...] = ()
    hysteresis_s: int = 60
    auto_revert: bool = True
    approval: bool = False
    to_model: str | None = None  # reroute: a fixed target instead of the fallback chain
    description: str = ""

    @property
    def ref(self) -> str:
        return f"{self.policy_id}@v{self.version}"

    def matches(self, alert: Alert) -> bool:
        if alert.kind != self.alert_kind or SEVERITY_RANK[alert.severity] < SEVERITY_RANK[self.min_severity]:
            return False
        for name, pattern in self.match:
            value = getattr(alert.scope, name)
            if pattern is None:
                if value is not None:
                    return False
            elif value is None or not fnmatchcase(value, pattern):
                return False
        return True

    def target_scope(self, scope: Scope) -> Scope:
        if not self.target:
            return scope
        return Scope(**{k: v for k, v in scope.compact().items() if k in self.target})


@dataclass(frozen=True, slots=True)
class Policies:
    policies: tuple[Policy, ...]
    max_active: int = 50  # blast radius: automatic directives in force at once
    max_traffic_share: float = 1.0  # blast radius: share of recent traffic under automatic restrictions
    fallback_chains: tuple[tuple[str, ...], ...] = ()
    default_hysteresis_s: int = 60
    version: int = 1

    def for_alert(self, alert: Alert) -> Policy | None:
        """The first policy (in file order) that matches the alert."""
        return next((p for p in self.policies if p.matches(alert)), None)

    def all_for_alert(self, alert: Alert) -> list[Policy]:
        """The first matching policy of each lane (restrictions, pin_version, strict_safety), in
        file order."""
        out: list[Policy] = []
        lanes: set[str] = set()
        for p in self.policies:
            lane = str(p.action) if p.action in SETTINGS else "restrict"
            if lane not in lanes and p.matches(alert):
                lanes.add(lane)
                out.append(p)
        return out

    def by_ref(self, ref: str | None) -> Policy | None:
        policy_id = (ref or "").split("@v", 1)[0]
        return next((p for p in self.policies if p.policy_id == policy_id), None)


@dataclass(frozen=True, slots=True)
class Action:
    decision: Outcome
    scope: Scope
    reason: str
    directive: Directive | None = None
    before: Directive | None = None
    policy: Policy | None = None
    alert: Alert | None = None
    actor: str = AUTOMATION


@dataclass(frozen=True, slots=True)
class History:
    """What the decisions need to remember besides the directives themselves."""

    last_fired: Mapping[str, datetime] = field(default_factory=dict)  # directive scope key -> last applied
    resolved: Mapping[str, datetime] = field(default_factory=dict)  # alert key -> resolved since
    traffic: Mapping[str, float] = field(default_factory=dict)  # tenant -> recent calls (blast radius share)


def observe(history: History, alert: Alert) -> History:
    """History after seeing an alert: a resolution starts the hysteresis clock, a re-open stops it."""
    key = alert.key()
    resolved = dict(history.resolved)
    if alert.status == "resolved":
        resolved.setdefault(key, alert.last_seen)
    else:
        resolved.pop(key, None)
    return replace(history, resolved=resolved)


def is_automatic(d: Directive) -> bool:
    return d.actor == AUTOMATION and not d.pinned


def decide_actions(alert: Alert, active: Sequence[Directive], policies: Policies, *, now: datetime,
           history: History | None = None) -> list[Action]:
    """The actions an alert calls for. ``active`` holds the live directives (active and pending)."""
    history = history or History()
    if alert.status != "open":
        return [Action(Outcome.NOTED, alert.scope, "alert resolved; automatic directives revert after hysteresis",
                       alert=alert)]
    chosen = policies.all_for_alert(alert)
    if not chosen:
        return [Action(Outcome.NOTED, alert.scope, f"no policy for {alert.kind} at severity {alert.severity}",
                       alert=alert)]
    return [a for policy in chosen for a in _decide_one(alert, policy, active, policies, now, history)]


def _decide_one(alert: Alert, policy: Policy, active: Sequence[Directive], policies: Policies, now: datetime,
                history: History) -> list[Action]:
    if now - alert.last_seen > timedelta(seconds=policy.ttl_s):
        return [Action(Outcome.NOTED, alert.scope, "stale alert: last seen longer ago than the policy's TTL",
                       policy=policy, alert=alert)]
    scope = policy.target_scope(alert.scope)
    pin_field = alert.scope.version_field if policy.action == ActionKind.PIN_VERSION else None
    key = directive_key(scope, policy.action, pin_field)
    if not scope.key():
        return [Action(Outcome.NOTED, alert.scope, f"alert scope has none of {list(policy.target)}",
                       policy=policy, alert=alert)]
    on_key = [d for d in active if d.key() == key]
    current = next((d for d in on_key if d.state == DirectiveState.ACTIVE), None)
    if current is not None:
        return _keep_alive(current, alert, policy, scope, now)
    if any(d.state == DirectiveState.PENDING for d in on_key):
        return []  # already waiting for an SRE
    last = history.last_fired.get(key)
    if last is not None and now - last < timedelta(seconds=policy.cooldown_s):
        return [Action(Outcome.SKIPPED, scope, f"cooldown: acted on this scope {int((now - last).total_seconds())}s ago",
                       policy=policy, alert=alert)]
    automatic = [d for d in active if d.state == DirectiveState.ACTIVE and is_automatic(d)]
    if len(automatic) >= policies.max_active:
        return [Action(Outcome.SKIPPED, scope, f"blast radius: {len(automatic)} automatic directives already active",
                       policy=policy, alert=alert)]
    extra: dict[str, Any] = {}
    if policy.action == ActionKind.THROTTLE:
        extra = {"rate_per_s": policy.rate_per_s, "burst": policy.burst}
    elif policy.action == ActionKind.REROUTE:
        chain = _fallbacks(scope.model, policy, policies, active)
        if not chain:
            return [Action(Outcome.SKIPPED, scope, f"no fallback model for {scope.model}", policy=policy, alert=alert)]
        extra = {"to_model": chain[0], "chain": list(chain[1:])}
    elif policy.action == ActionKind.PIN_VERSION:
        if pin_field not in PIN_FIELDS or not alert.scope.old_version:
            return [Action(Outcome.SKIPPED, scope, "pin_version needs the alert's version_field and old_version",
                           policy=policy, alert=alert)]
        extra = {"pin_field": pin_field, "pin_value": alert.scope.old_version}
    elif policy.action == ActionKind.DISABLE_TOOL and scope.tool_name is None:
        return [Action(Outcome.SKIPPED, scope, "disable_tool needs a tool_name in the scope", policy=policy,
                       alert=alert)]
    pending_reason = ""
    if policy.approval or policy.action == ActionKind.BLOCK:
        pending_reason = "approval required by policy"
    else:
        share = _share_after(scope, policy, automatic, history.traffic)
        if share is not None and share > policies.max_traffic_share:
            pending_reason = (f"blast radius: would restrict {share:.0%} of recent traffic "
                              f"(max {policies.max_traffic_share:.0%}); approval required")
    if policy.dry_run:
        state, decision = DirectiveState.DRY_RUN, Outcome.DRY_RUN
    elif pending_reason:
        state, decision = DirectiveState.PENDING, Outcome.PENDING
    else:
        state, decision = DirectiveState.ACTIVE, Outcome.APPLIED
    directive = Directive(
        directive_id=str(uuid.uuid5(DIRECTIVE_NAMESPACE, f"{alert.alert_id}|{policy.policy_id}|{policy.version}")),
        action=policy.action, scope=scope, state=state, created_at=now,
        expires_at=now + timedelta(seconds=policy.ttl_s), reason=alert.summary or str(alert.kind),
        alert_id=alert.alert_id, alert_key=alert.key(), policy_id=policy.ref, **extra,
    )
    reason = f"{alert.kind} ({alert.severity}) -> {policy.action}"
    if pending_reason:
        reason += f"; {pending_reason}"
    return [Action(decision, scope, reason, directive=directive, policy=policy, alert=alert)]


def _keep_alive(current: Directive, alert: Alert, policy: Policy, scope: Scope, now: datetime) -> list[Action]:
    if not is_automatic(current):
        return [Action(Outcome.SKIPPED, scope, "a manual or pinned directive is in force on this scope",
                       policy=policy, alert=alert)]
    expires = max(current.expires_at, now + timedelta(seconds=policy.ttl_s))
    update: dict[str, Any] = {"expires_at": expires}
    if current.alert_key is not None and current.alert_key != alert.key():
        update |= {"alert_key": alert.key(), "alert_id": alert.alert_id}  # follow the alert that keeps it alive
    elif expires == current.expires_at:
        return []
    extended = current.model_copy(update=update)
    return [Action(Outcome.EXTENDED, scope, "alert still open", directive=extended, before=current, policy=policy,
                   alert=alert)]


def _fallbacks(model: str | None, policy: Policy, policies: Policies, active: Sequence[Directive]) -> tuple[str, ...]:
    """The models after ``model`` in its fallback chain, skipping models that are themselves
    rerouted away right now."""
    if model is None:
        return ()
    if policy.to_model:
        return (policy.to_model,)
    away = {d.scope.model for d in active if d.state == DirectiveState.ACTIVE and d.action == ActionKind.REROUTE}
    for chain in policies.fallback_chains:
        if model in chain:
            return tuple(m for m in chain[chain.index(model) + 1:] if m not in away)
    return ()


def _share_after(scope: Scope, policy: Policy, automatic: Sequence[Directive],
                 traffic: Mapping[str, float]) -> float | None:
    """Share of recent traffic under automatic restrictions if this action were applied; None
    when unknown (no traffic figures, or a scope without a tenant)."""
    total = sum(traffic.values())
    if policy.action not in RESTRICTIVE or scope.tenant_id is None or total <= 0:
        return None
    tenants = {d.scope.tenant_id for d in automatic if d.action in RESTRICTIVE and d.scope.tenant_id}
    tenants.add(scope.tenant_id)
    return sum(traffic.get(t, 0.0) for t in tenants) / total


def expire(active: Sequence[Directive], *, now: datetime, history: History | None = None,
           policies: Policies | None = None) -> list[Action]:
    """Directives whose time is up: TTL elapsed, approval never given, or (automatic ones) their
    alert resolved for longer than the hysteresis. Pinned directives never lapse: before half of
    the longest TTL a shim accepts (``MAX_TTL_S``) is left, they are renewed for that TTL, so
    the shims' view and the API's agree."""
    resolved = history.resolved if history else {}
    out = []
    for d in active:
        if d.pinned and d.state == DirectiveState.ACTIVE:
            if d.expires_at - now < timedelta(seconds=MAX_TTL_S / 2):
                until = now + timedelta(seconds=MAX_TTL_S)
                out.append(Action(Outcome.EXTENDED, d.scope, f"pinned: renewed until {until.isoformat()}",
                                  before=d, actor=d.actor, directive=d.model_copy(update={"expires_at": until})))
            continue
        if d.pinned or d.state not in (DirectiveState.ACTIVE, DirectiveState.PENDING):
            continue
        since = resolved.get(d.alert_key or "") if d.actor == AUTOMATION else None
        policy = policies.by_ref(d.policy_id) if policies else None
        hysteresis = policy.hysteresis_s if policy else (policies.default_hysteresis_s if policies else 60)
        settled = since is not None and now - since >= timedelta(seconds=hysteresis)
        if d.state == DirectiveState.PENDING:
            if d.expires_at <= now or settled:
                why = "approval not given within TTL" if d.expires_at <= now else "alert resolved before approval"
                out.append(Action(Outcome.EXPIRED, d.scope, why, before=d, policy=policy,
                                  directive=d.model_copy(update={"state": DirectiveState.EXPIRED})))
        elif d.expires_at <= now:
            out.append(Action(Outcome.EXPIRED, d.scope, "TTL elapsed", before=d, policy=policy,
                              directive=d.model_copy(update={"state": DirectiveState.EXPIRED})))
        elif settled and (policy is None or policy.auto_revert):
            assert since is not None
            out.append(Action(Outcome.REVERTED, d.scope,
                              f"alert resolved for {int((now - since).total_seconds())}s (hysteresis {hysteresis}s)",
                              before=d, policy=policy,
                              directive=d.model_copy(update={"state": DirectiveState.REVERTED, "expires_at": now})))
    return out


# ------------------------------------------------------------------ manual overrides
def revert(directive: Directive, *, actor: str, now: datetime) -> Action:
    return Action(Outcome.REVERTED, directive.scope, f"reverted by {actor}", before=directive, actor=actor,
                  directive=directive.model_copy(update={"state": DirectiveState.REVERTED, "expires_at": now}))


def pin(directive: Directive, *, actor: str) -> Action:
    return Action(Outcome.PINNED, directive.scope, f"pinned by {actor}", before=directive, actor=actor,
                  directive=directive.model_copy(update={"pinned": True}))


def extend(directive: Directive, *, actor: str, until: datetime) -> Action:
    return Action(Outcome.EXTENDED, directive.scope, f"extended by {actor} until {until.isoformat()}",
                  before=directive, actor=actor, directive=directive.model_copy(update={"expires_at": until}))


def approve(directive: Directive, *, actor: str, now: datetime) -> Action:
    """A pending directive goes into force now, for the TTL it was decided with."""
    ttl = directive.expires_at - directive.created_at
    return Action(Outcome.APPROVED, directive.scope, f"approved by {actor}", before=directive, actor=actor,
                  directive=directive.model_copy(update={"state": DirectiveState.ACTIVE, "created_at": now,
                                                         "expires_at": now + ttl}))


def reject(directive: Directive, *, actor: str, now: datetime) -> Action:
    return Action(Outcome.REJECTED, directive.scope, f"rejected by {actor}", before=directive, actor=actor,
                  directive=directive.model_copy(update={"state": DirectiveState.REJECTED, "expires_at": now}))


def create(directive: Directive, *, replaces: Directive | None = None) -> Action:
    """A directive an SRE creates by hand: in force at once, and automation leaves it alone."""
    return Action(Outcome.APPLIED, directive.scope, f"created by {directive.actor}", directive=directive,
                  before=replaces, actor=directive.actor)


def with_ttl(policy: Policy, ttl_s: int) -> Policy:
    return replace(policy, ttl_s=ttl_s)


# ------------------------------------------------------------------ policy files
