"""Policy decisions: (alert, live directives, policies, now) -> actions. Pure.

No Kafka, no ClickHouse, no clock; the control loop and ``flyball replay`` call the same
functions. Policies are data (a YAML file, ``load_policies``) that map an alert's kind,
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
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from fnmatch import fnmatchcase
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flyball.schemas import ActionKind, Alert, AlertKind, Directive, DirectiveState, Scope
from flyball.schemas.alerts import SCOPE_FIELDS

from .errors import PolicyError

DIRECTIVE_NAMESPACE = uuid.UUID("5d1b0a52-8a57-4a1e-b0b5-3f0a7f6f2a90")
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
AUTOMATION = "flyball"
RESTRICTIVE = (ActionKind.THROTTLE, ActionKind.BLOCK, ActionKind.DISABLE_TOOL)


class Decision(StrEnum):
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
PUBLISHED = frozenset({Decision.APPLIED, Decision.EXTENDED, Decision.APPROVED, Decision.EXPIRED,
                       Decision.REVERTED, Decision.PINNED})


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

    def by_ref(self, ref: str | None) -> Policy | None:
        policy_id = (ref or "").split("@v", 1)[0]
        return next((p for p in self.policies if p.policy_id == policy_id), None)


@dataclass(frozen=True, slots=True)
class Action:
    decision: Decision
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


def decide(alert: Alert, active: Sequence[Directive], policies: Policies, *, now: datetime,
           history: History | None = None) -> list[Action]:
    """The actions an alert calls for. ``active`` holds the live directives (active and pending)."""
    history = history or History()
    if alert.status != "open":
        return [Action(Decision.NOTED, alert.scope, "alert resolved; automatic directives revert after hysteresis",
                       alert=alert)]
    policy = policies.for_alert(alert)
    if policy is None:
        return [Action(Decision.NOTED, alert.scope, f"no policy for {alert.kind} at severity {alert.severity}",
                       alert=alert)]
    if now - alert.last_seen > timedelta(seconds=policy.ttl_s):
        return [Action(Decision.NOTED, alert.scope, "stale alert: last seen longer ago than the policy's TTL",
                       policy=policy, alert=alert)]
    scope = policy.target_scope(alert.scope)
    key = scope.key()
    if not key:
        return [Action(Decision.NOTED, alert.scope, f"alert scope has none of {list(policy.target)}",
                       policy=policy, alert=alert)]
    on_key = [d for d in active if d.key() == key]
    current = next((d for d in on_key if d.state == DirectiveState.ACTIVE), None)
    if current is not None:
        return _keep_alive(current, alert, policy, scope, now)
    if any(d.state == DirectiveState.PENDING for d in on_key):
        return []  # already waiting for an SRE
    last = history.last_fired.get(key)
    if last is not None and now - last < timedelta(seconds=policy.cooldown_s):
        return [Action(Decision.SKIPPED, scope, f"cooldown: acted on this scope {int((now - last).total_seconds())}s ago",
                       policy=policy, alert=alert)]
    automatic = [d for d in active if d.state == DirectiveState.ACTIVE and is_automatic(d)]
    if len(automatic) >= policies.max_active:
        return [Action(Decision.SKIPPED, scope, f"blast radius: {len(automatic)} automatic directives already active",
                       policy=policy, alert=alert)]
    extra: dict[str, Any] = {}
    if policy.action == ActionKind.THROTTLE:
        extra = {"rate_per_s": policy.rate_per_s, "burst": policy.burst}
    elif policy.action == ActionKind.REROUTE:
        chain = _fallbacks(scope.model, policy, policies, active)
        if not chain:
            return [Action(Decision.SKIPPED, scope, f"no fallback model for {scope.model}", policy=policy, alert=alert)]
        extra = {"to_model": chain[0], "chain": list(chain[1:])}
    elif policy.action == ActionKind.DISABLE_TOOL and scope.tool_name is None:
        return [Action(Decision.SKIPPED, scope, "disable_tool needs a tool_name in the scope", policy=policy,
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
        state, decision = DirectiveState.DRY_RUN, Decision.DRY_RUN
    elif pending_reason:
        state, decision = DirectiveState.PENDING, Decision.PENDING
    else:
        state, decision = DirectiveState.ACTIVE, Decision.APPLIED
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
        return [Action(Decision.SKIPPED, scope, "a manual or pinned directive is in force on this scope",
                       policy=policy, alert=alert)]
    expires = max(current.expires_at, now + timedelta(seconds=policy.ttl_s))
    update: dict[str, Any] = {"expires_at": expires}
    if current.alert_key is not None and current.alert_key != alert.key():
        update |= {"alert_key": alert.key(), "alert_id": alert.alert_id}  # follow the alert that keeps it alive
    elif expires == current.expires_at:
        return []
    extended = current.model_copy(update=update)
    return [Action(Decision.EXTENDED, scope, "alert still open", directive=extended, before=current, policy=policy,
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
    alert resolved for longer than the hysteresis. Pinned directives are never touched."""
    resolved = history.resolved if history else {}
    out = []
    for d in active:
        if d.pinned or d.state not in (DirectiveState.ACTIVE, DirectiveState.PENDING):
            continue
        since = resolved.get(d.alert_key or "") if d.actor == AUTOMATION else None
        policy = policies.by_ref(d.policy_id) if policies else None
        hysteresis = policy.hysteresis_s if policy else (policies.default_hysteresis_s if policies else 60)
        settled = since is not None and now - since >= timedelta(seconds=hysteresis)
        if d.state == DirectiveState.PENDING:
            if d.expires_at <= now or settled:
                why = "approval not given within TTL" if d.expires_at <= now else "alert resolved before approval"
                out.append(Action(Decision.EXPIRED, d.scope, why, before=d, policy=policy,
                                  directive=d.model_copy(update={"state": DirectiveState.EXPIRED})))
        elif d.expires_at <= now:
            out.append(Action(Decision.EXPIRED, d.scope, "TTL elapsed", before=d, policy=policy,
                              directive=d.model_copy(update={"state": DirectiveState.EXPIRED})))
        elif settled and (policy is None or policy.auto_revert):
            assert since is not None
            out.append(Action(Decision.REVERTED, d.scope,
                              f"alert resolved for {int((now - since).total_seconds())}s (hysteresis {hysteresis}s)",
                              before=d, policy=policy,
                              directive=d.model_copy(update={"state": DirectiveState.REVERTED, "expires_at": now})))
    return out


# ------------------------------------------------------------------ manual overrides
def revert(directive: Directive, *, actor: str, now: datetime) -> Action:
    return Action(Decision.REVERTED, directive.scope, f"reverted by {actor}", before=directive, actor=actor,
                  directive=directive.model_copy(update={"state": DirectiveState.REVERTED, "expires_at": now}))


def pin(directive: Directive, *, actor: str) -> Action:
    return Action(Decision.PINNED, directive.scope, f"pinned by {actor}", before=directive, actor=actor,
                  directive=directive.model_copy(update={"pinned": True}))


def extend(directive: Directive, *, actor: str, until: datetime) -> Action:
    return Action(Decision.EXTENDED, directive.scope, f"extended by {actor} until {until.isoformat()}",
                  before=directive, actor=actor, directive=directive.model_copy(update={"expires_at": until}))


def approve(directive: Directive, *, actor: str, now: datetime) -> Action:
    """A pending directive goes into force now, for the TTL it was decided with."""
    ttl = directive.expires_at - directive.created_at
    return Action(Decision.APPROVED, directive.scope, f"approved by {actor}", before=directive, actor=actor,
                  directive=directive.model_copy(update={"state": DirectiveState.ACTIVE, "created_at": now,
                                                         "expires_at": now + ttl}))


def reject(directive: Directive, *, actor: str, now: datetime) -> Action:
    return Action(Decision.REJECTED, directive.scope, f"rejected by {actor}", before=directive, actor=actor,
                  directive=directive.model_copy(update={"state": DirectiveState.REJECTED, "expires_at": now}))


def create(directive: Directive, *, replaces: Directive | None = None) -> Action:
    """A directive an SRE creates by hand: in force at once, and automation leaves it alone."""
    return Action(Decision.APPLIED, directive.scope, f"created by {directive.actor}", directive=directive,
                  before=replaces, actor=directive.actor)


def with_ttl(policy: Policy, ttl_s: int) -> Policy:
    return replace(policy, ttl_s=ttl_s)


# ------------------------------------------------------------------ policy files
class PolicySpec(BaseModel):
    """One policy as written in a policies file (flat keys)."""

    model_config = ConfigDict(extra="forbid")

    policy_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    alert_kind: AlertKind
    action: ActionKind
    version: int = Field(default=1, ge=1)
    min_severity: Literal["info", "warning", "critical"] = "warning"
    match: dict[str, str | None] = Field(default_factory=dict)
    target: list[str] = Field(default_factory=list)
    ttl_s: int = Field(default=120, gt=0)
    cooldown_s: int = Field(default=60, ge=0)
    hysteresis_s: int = Field(default=60, ge=0)
    auto_revert: bool = True
    rate_per_s: float | None = Field(default=None, ge=0)
    burst: int | None = Field(default=None, ge=0)
    to_model: str | None = None
    dry_run: bool = False
    approval: bool = False
    description: str = ""

    @field_validator("match")
    @classmethod
    def _match_fields(cls, v: dict[str, str | None]) -> dict[str, str | None]:
        unknown = sorted(set(v) - set(SCOPE_FIELDS))
        if unknown:
            raise ValueError(f"unknown scope field(s) {unknown}; one of {list(SCOPE_FIELDS)}")
        return v

    @field_validator("target")
    @classmethod
    def _target_fields(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(SCOPE_FIELDS))
        if unknown:
            raise ValueError(f"unknown scope field(s) {unknown}; one of {list(SCOPE_FIELDS)}")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> PolicySpec:
        if self.action == ActionKind.THROTTLE and self.rate_per_s is None:
            raise ValueError("a throttle needs rate_per_s")
        if self.action == ActionKind.BLOCK and not self.approval:
            raise ValueError("block is a last resort: it needs approval: true")
        return self


class PoliciesSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(default=1, ge=1)
    max_active: int = Field(default=50, ge=0)
    max_traffic_share: float = Field(default=1.0, gt=0, le=1)
    default_hysteresis_s: int = Field(default=60, ge=0)
    fallback_chains: list[list[str]] = Field(default_factory=list)
    policies: list[PolicySpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> PoliciesSpec:
        seen: set[str] = set()
        for p in self.policies:
            if p.policy_id in seen:
                raise PolicyError(f"duplicate policy_id {p.policy_id!r}")
            seen.add(p.policy_id)
        return self


def parse_policies(data: Any) -> Policies:
    """Policies from decoded JSON/YAML; a ValueError names the offending field."""
    if isinstance(data, list):
        data = {"policies": data}
    try:
        spec = PoliciesSpec.model_validate(data)
    except ValidationError as exc:
        errors = "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise PolicyError(f"invalid policies: {errors}") from None
    return Policies(
        policies=tuple(Policy(
            policy_id=p.policy_id, alert_kind=p.alert_kind, action=p.action, version=p.version,
            min_severity=p.min_severity, ttl_s=p.ttl_s, cooldown_s=p.cooldown_s, rate_per_s=p.rate_per_s,
            burst=p.burst, dry_run=p.dry_run, match=tuple(sorted(p.match.items())), target=tuple(p.target),
            hysteresis_s=p.hysteresis_s, auto_revert=p.auto_revert, approval=p.approval, to_model=p.to_model,
            description=p.description) for p in spec.policies),
        max_active=spec.max_active, max_traffic_share=spec.max_traffic_share,
        fallback_chains=tuple(tuple(c) for c in spec.fallback_chains),
        default_hysteresis_s=spec.default_hysteresis_s, version=spec.version,
    )


def _loc(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "policies"


def load_policies(text: str) -> Policies:
    """Policies from the text of a YAML (or JSON) file."""
    import yaml

    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PolicyError(f"policies file is neither JSON nor YAML: {exc}") from None
    return parse_policies(data if data is not None else {})


def dump_policies(policies: Policies) -> dict[str, Any]:
    """The JSON/YAML form of the policies (round-trips through ``parse_policies``)."""
    return {
        "version": policies.version, "max_active": policies.max_active,
        "max_traffic_share": policies.max_traffic_share, "default_hysteresis_s": policies.default_hysteresis_s,
        "fallback_chains": [list(c) for c in policies.fallback_chains],
        "policies": [_dump_one(p) for p in policies.policies],
    }


def _dump_one(p: Policy) -> dict[str, Any]:
    return {"policy_id": p.policy_id, "version": p.version, "alert_kind": str(p.alert_kind), "action": str(p.action),
            "min_severity": p.min_severity, "match": dict(p.match), "target": list(p.target), "ttl_s": p.ttl_s,
            "cooldown_s": p.cooldown_s, "hysteresis_s": p.hysteresis_s, "auto_revert": p.auto_revert,
            "rate_per_s": p.rate_per_s, "burst": p.burst, "to_model": p.to_model, "dry_run": p.dry_run,
            "approval": p.approval, "description": p.description}


def revise(old: Policies, new: Policies) -> Policies:
    """``new`` as the next version after ``old``: the set's version goes up by one, and each
    policy whose content changed gets its own version bumped past the old one."""
    before = {p.policy_id: p for p in old.policies}
    out = []
    for p in new.policies:
        prev = before.get(p.policy_id)
        if prev is None:
            out.append(p)
        elif replace(p, version=prev.version) == prev:
            out.append(replace(p, version=prev.version))
        else:
            out.append(replace(p, version=max(p.version, prev.version + 1)))
    return replace(new, policies=tuple(out), version=old.version + 1)


# The shipped defaults are data, read once at import; decide() itself never reads anything.
SHIPPED_POLICIES_TEXT = resources.files("flyball.control_plane").joinpath("policies.yaml").read_text()
DEFAULT_POLICIES = load_policies(SHIPPED_POLICIES_TEXT)
