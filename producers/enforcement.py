"""Enforcement: answer ``guard()`` from the local directive view. Pure, no I/O, no clock.

``now`` is a monotonic-free wall time in seconds (the caller passes ``time.time()``), so that
directive expiry, which is absolute, is honoured locally even if the control plane is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flyball.schemas import ActionKind, Directive, DirectiveState, scope_key


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    model: str | None = None
    retry_after_s: float | None = None
    reason: str = ""
    directive_ids: tuple[str, ...] = ()


ALLOW = Decision(allowed=True)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass(slots=True)
class DirectiveView:
    """The directives in force, keyed by scope key, plus the token buckets of throttles."""

    by_key: dict[str, Directive] = field(default_factory=dict)
    expires: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, _Bucket] = field(default_factory=dict)
    updated_at: float | None = None

    def apply(self, directive: Directive, *, now: float | None = None) -> None:
        key = directive.key()
        if directive.state != DirectiveState.ACTIVE:
            self.by_key.pop(key, None)
            self.expires.pop(key, None)
            self.buckets.pop(key, None)
        else:
            previous = self.by_key.get(key)
            self.by_key[key] = directive
            self.expires[key] = directive.expires_at.timestamp()
            if previous is None or previous.directive_id != directive.directive_id:
                self.buckets.pop(key, None)
        if now is not None:
            self.updated_at = now

    def active(self, *, now: float) -> list[Directive]:
        return [d for k, d in self.by_key.items() if self.expires[k] > now]


def enforce(view: DirectiveView, *, tenant_id: str, feature: str | None = None, model: str | None = None,
            tool: str | None = None, now: float) -> Decision:
    if not view.by_key:
        return Decision(allowed=True, model=model)
    keys = [scope_key(tenant_id=tenant_id)]
    if feature:
        keys.append(scope_key(tenant_id=tenant_id, feature=feature))
    if tool:
        keys.append(scope_key(tool_name=tool))
        keys.append(scope_key(tenant_id=tenant_id, tool_name=tool))
    if model:
        keys.append(scope_key(model=model))
    effective_model = model
    ids: list[str] = []
    for key in keys:
        directive = view.by_key.get(key)
        if directive is None or view.expires[key] <= now:
            continue
        ids.append(directive.directive_id)
        if directive.action == ActionKind.BLOCK:
            return Decision(False, effective_model, view.expires[key] - now, "blocked", tuple(ids))
        if directive.action == ActionKind.DISABLE_TOOL:
            return Decision(False, effective_model, view.expires[key] - now, f"tool {tool} disabled", tuple(ids))
        if directive.action == ActionKind.REROUTE and directive.to_model:
            effective_model = directive.to_model
        if directive.action == ActionKind.THROTTLE:
            wait = _take(view, key, directive, now)
            if wait is not None:
                return Decision(False, effective_model, wait, "throttled", tuple(ids))
    return Decision(True, effective_model, None, "", tuple(ids))


def _take(view: DirectiveView, key: str, directive: Directive, now: float) -> float | None:
    """Token bucket: None if a token was taken, else seconds until one is available."""
    rate = directive.rate_per_s or 0.0
    burst = float(directive.burst if directive.burst is not None else 1)
    bucket = view.buckets.get(key)
    if bucket is None:
        bucket = view.buckets[key] = _Bucket(tokens=burst, updated=now)
    else:
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
    if bucket.tokens >= 1.0:
        bucket.tokens -= 1.0
        return None
    until_expiry = view.expires[key] - now
    if rate <= 0:
        return until_expiry
    return min((1.0 - bucket.tokens) / rate, until_expiry)
