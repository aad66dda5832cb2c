"""Enforcement: answer ``guard()`` from the local directive view. Pure, no I/O, no clock.

``now`` is wall time in seconds (the caller passes ``time.time()``), so that directive
expiry, which is absolute, is honoured locally even if the control plane is gone.

The view indexes directives by the *shape* of their scope (which scope fields are set): a
request is answered with one dict lookup per shape in use (a handful), whatever the number
of directives, and with no string building. What ``guard`` decides:

- ``block``: refused until the directive expires.
- ``disable_tool``: refused when the request names that tool.
- ``throttle``: a token bucket per directive (``rate_per_s``, ``burst``); refused with the
  exact wait for the next token (never beyond the directive's expiry). When several
  throttles match, a call is admitted only if every bucket has a token.
- ``reroute``: the effective model is the first of ``[to_model, *chain]`` that is not itself
  rerouted; if all are, the reroute of the first unvisited one is followed. A loop stops at
  the last model not yet visited; the chain never cycles.
- ``pin_version``: the answer names the version to use for the scope: ``d.prompt_version``,
  ``d.config_version`` (None when no pin is in force: use your own), or ``d.model`` (a model pin
  replaces the requested model before reroutes apply, so ``d.model`` keeps meaning "the model to
  call": a pinned model that is itself rerouted is rerouted). When pins of one dimension on a
  feature-wide and a tenant+feature scope both match, the more specific scope wins.
- ``strict_safety``: ``d.safety_level == "strict"``; None when no such directive is in force
  (the caller's own default applies). Settings never refuse a call.
- Request-scoped directives (``request_id``, e.g. a runaway agent loop): matched by the
  ``request_id`` passed to ``guard``, in a separate index so per-request ids never enter the
  answer cache; ``tenant_id`` in such a scope must match too when set.
- Staleness: when the view has not heard from the control plane for longer than
  ``Staleness.max_age_s``, requests in a high-risk scope are refused (fail-closed); every
  other request is answered from the last known view (fail-open).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, NamedTuple

from flyball.schemas import (
    DIRECTIVES,
    MAX_TTL_S,
    SETTINGS,
    ActionKind,
    Directive,
    DirectiveState,
    KeySet,
    SignatureError,
    verify,
)

# the request fields a directive scope can match, in the order of the request tuple
REQUEST_FIELDS = ("tenant_id", "feature", "provider", "model", "tool_name")
_INDEX = {name: i for i, name in enumerate(REQUEST_FIELDS)}
MAX_REROUTE_HOPS = 16
MAX_PLANS = 65_536  # cached answers per distinct request; cleared when full


class Decision(NamedTuple):
    """The answer of ``guard``. Immutable; truthy exactly when the call is allowed, so
    ``if tel.guard(...):`` reads as intended. (A NamedTuple: built in a fraction of the time
    of a frozen dataclass, and guard builds one per call.)"""

    allowed: bool
    model: str | None = None
    retry_after_s: float | None = None
    reason: str = ""
    directive_ids: tuple[str, ...] = ()
    stale: bool = False
    prompt_version: str | None = None  # pin_version: the prompt version to use; None: unpinned
    config_version: str | None = None  # pin_version: the config version to use; None: unpinned
    safety_level: str | None = None  # "strict" under a strict_safety directive, else None

    def __bool__(self) -> bool:
        return self.allowed


ALLOW = Decision(allowed=True)


@dataclass(frozen=True, slots=True)
class Staleness:
    """Fail-open by default; fail-closed for ``high_risk`` scopes once the view is older
    than ``max_age_s``. A scope is a mapping of request fields (``tenant_id``, ``feature``,
    ``provider``, ``model``, ``tool_name``) that must all match."""

    max_age_s: float = 300.0
    high_risk: tuple[dict[str, str], ...] = ()

    def __post_init__(self) -> None:
        for scope in self.high_risk:
            unknown = set(scope) - set(REQUEST_FIELDS)
            if unknown or not scope:
                raise ValueError(f"high_risk scope {scope!r}: use one or more of {', '.join(REQUEST_FIELDS)}")


@dataclass(slots=True, eq=False)  # identity: the same entry is the same directive
class _Entry:
    directive: Directive
    directive_id: str
    action: ActionKind
    expires: float
    rate: float = 0.0
    burst: float = 1.0
    targets: tuple[str, ...] = ()
    tokens: float = -1.0  # -1: bucket not started (full on first use)
    updated: float = 0.0
    specificity: int = 0  # settings: scope fields matched (the most specific pin wins)


def _share(rate: float, directive: Directive) -> float:
    """This instance's part of a throttle shared by ``replicas`` shim instances."""
    return float(rate) / directive.replicas


def _burst(directive: Directive) -> float:
    burst = float(directive.burst if directive.burst is not None else 1)
    return burst if burst <= 1.0 else max(1.0, burst / directive.replicas)  # 0: nothing admitted at once


def _shape_of(values: dict[str, Any]) -> tuple[int, ...] | None:
    """Indices into the request tuple of a scope's fields, or None if guard cannot match it
    (a scope on category, index_name or request_id is not about a guarded call)."""
    if not values or any(name not in _INDEX for name in values):
        return None
    return tuple(sorted(_INDEX[name] for name in values))


def _setting_shape(values: dict[str, Any]) -> tuple[int, ...] | None:
    """A setting's scope shape: its request fields; the version fields describe the pin, they
    do not narrow the match. () matches every call."""
    matched = {k: v for k, v in values.items() if k not in ("version_field", "old_version", "new_version")}
    if not matched:
        return ()
    return _shape_of(matched)


def _getter(shape: tuple[int, ...]) -> Any:
    # itemgetter of one index returns the bare value; of several, a tuple: keys use the same
    return itemgetter(*shape)


def _key(shape: tuple[int, ...], values: dict[str, Any]) -> Any:
    ordered = tuple(values[REQUEST_FIELDS[i]] for i in shape)
    return ordered[0] if len(ordered) == 1 else ordered


@dataclass(slots=True)
class DirectiveView:
    """The directives in force, keyed by scope key, indexed by scope shape for ``enforce``.

    Written by one thread (the shim's follower), read by any number of caller threads: every
    structure the readers use is replaced or updated with single atomic operations."""

    by_key: dict[str, Directive] = field(default_factory=dict)
    updated_at: float | None = None  # last time the follower heard from the control plane
    created_at: float | None = None
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _tables: dict[tuple[int, ...], dict[Any, _Entry]] = field(default_factory=dict)
    _lookups: tuple[tuple[Any, dict[Any, _Entry]], ...] = ()
    _plans: dict[tuple[Any, ...], _Plan] = field(default_factory=dict)
    _requests: dict[str, _Entry] = field(default_factory=dict)  # request_id -> entry
    # pin_version / strict_safety, apart from the restrictions: several may share a scope
    _settings: dict[tuple[int, ...], dict[Any, dict[str, _Entry]]] = field(default_factory=dict)
    _setting_lookups: tuple[tuple[Any, dict[Any, dict[str, _Entry]]], ...] = ()
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def apply(self, directive: Directive, *, now: float | None = None) -> None:
        key = directive.key()
        values = directive.scope.compact()
        request_id = values.get("request_id")
        if directive.action in SETTINGS:
            self._apply_setting(directive, key, values, now)
            return
        shape = _shape_of(values)
        if request_id is not None:
            if directive.state == DirectiveState.ACTIVE:
                self._requests[request_id] = _Entry(
                    directive, directive.directive_id, directive.action, directive.expires_at.timestamp(),
                    rate=_share(directive.rate_per_s or 0.0, directive), burst=_burst(directive))
            else:
                self._requests.pop(request_id, None)
        if directive.state != DirectiveState.ACTIVE:
            self.by_key.pop(key, None)
            old = self._entries.pop(key, None)
            if old is not None and shape is not None:
                self._tables.get(shape, {}).pop(_key(shape, values), None)
        else:
            self.by_key[key] = directive
            previous = self._entries.get(key)
            entry = _Entry(directive, directive.directive_id, directive.action, directive.expires_at.timestamp(),
                           rate=_share(directive.rate_per_s or 0.0, directive), burst=_burst(directive),
                           targets=tuple(m for m in (directive.to_model, *directive.chain) if m))
            if previous is not None and previous.directive_id == directive.directive_id:
                entry.tokens, entry.updated = previous.tokens, previous.updated  # an extension keeps its bucket
            self._entries[key] = entry
            if shape is not None:
                self._tables.setdefault(shape, {})[_key(shape, values)] = entry
        self._lookups = tuple((_getter(s), t) for s, t in sorted(self._tables.items()) if t)
        self._plans = {}
        if now is not None:
            self.updated_at = now

    def _apply_setting(self, directive: Directive, key: str, values: dict[str, Any], now: float | None) -> None:
        shape = _setting_shape(values)
        matched = {k: v for k, v in values.items() if k in _INDEX}
        slot = None if shape is None else (_key(shape, matched) if shape else None)
        if directive.state != DirectiveState.ACTIVE:
            self.by_key.pop(key, None)
            self._entries.pop(key, None)
            if shape is not None:
                self._settings.get(shape, {}).get(slot, {}).pop(key, None)
        else:
            self.by_key[key] = directive
            entry = _Entry(directive, directive.directive_id, directive.action, directive.expires_at.timestamp(),
                           specificity=len(matched))
            self._entries[key] = entry
            if shape is not None:
                self._settings.setdefault(shape, {}).setdefault(slot, {})[key] = entry
        self._setting_lookups = tuple((_getter(s) if s else _everything, t) for s, t in sorted(self._settings.items())
                                      if any(t.values()))
        self._plans = {}
        if now is not None:
            self.updated_at = now

    def replace_all(self, directives: Iterable[Directive], *, now: float) -> None:
        """Make the view equal a snapshot (HTTP polling answers with all active directives)."""
        fresh = {d.key(): d for d in directives if d.state == DirectiveState.ACTIVE}
        for key, gone in list(self.by_key.items()):
            if key not in fresh:
                self.apply(gone.model_copy(update={"state": DirectiveState.EXPIRED}))
        for directive in fresh.values():
            self.apply(directive)
        self.updated_at = now

    def mark_synced(self, now: float) -> None:
        self.updated_at = now

    def prune(self, *, now: float) -> None:
        entries = self._entries
        expired = [d for k, d in list(self.by_key.items()) if (e := entries.get(k)) is not None and e.expires <= now]
        expired += [e.directive for e in list(self._requests.values()) if e.expires <= now]
        for directive in expired:
            self.apply(directive.model_copy(update={"state": DirectiveState.EXPIRED}))

    def active(self, *, now: float) -> list[Directive]:
        return [e.directive for e in self._entries.values() if e.expires > now]

    def age(self, now: float) -> float:
        since = self.updated_at if self.updated_at is not None else self.created_at
        return 0.0 if since is None else now - since


class DirectiveRefused(ValueError):
    """A directive message the shim will not apply; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class DirectiveIntake:
    """What a message on the directive topic must pass before the view applies it.

    - Authenticity: with a key set, the signature must verify (``schemas/signing.py``); without
      one (development) every message is taken, and the caller warns once.
    - Order: per scope, a version not newer than the last one applied is refused, so a replayed
      or reordered old message cannot resurrect a reverted directive or lift a newer one.
    - Expiry: clamped to ``max_ttl_s`` from the moment the message is read, whatever it says.
    """

    keys: KeySet = field(default_factory=KeySet)
    max_ttl_s: float = MAX_TTL_S
    versions: dict[str, int] = field(default_factory=dict)

    def admit(self, message: bytes, *, now: float) -> Directive:
        if self.keys.enabled:
            try:
                message = verify(message, topic=DIRECTIVES, keys=self.keys)
            except SignatureError as exc:
                raise DirectiveRefused(str(exc)) from None
        try:
            directive = Directive.model_validate_json(message)
        except ValueError as exc:
            raise DirectiveRefused(f"directive: invalid ({str(exc)[:200]})") from None
        key = directive.key()
        last = self.versions.get(key)
        if last is not None and (directive.version < last or (directive.version == last and last > 0)):
            raise DirectiveRefused(f"version: {directive.version} is not newer than {last} on {key[:200]}")
        if self.keys.enabled and directive.version == 0:
            raise DirectiveRefused("version: missing on a signed directive")
        self.versions[key] = directive.version
        latest = datetime.fromtimestamp(now, UTC) + timedelta(seconds=self.max_ttl_s)
        if directive.expires_at > latest:
            directive = directive.model_copy(update={"expires_at": latest})
        return directive


def _everything(request: tuple[Any, ...]) -> None:
    return None  # the slot of a setting whose scope is empty


def _settings_of(view: DirectiveView, request: tuple[Any, ...], now: float) -> list[_Entry]:
    hits: list[_Entry] = []
    for getter, table in view._setting_lookups:
        entries = table.get(getter(request))
        if entries:
            hits.extend(e for e in entries.values() if e.expires > now)
    return hits


def pins_in_force(view: DirectiveView, *, tenant_id: str, feature: str | None, now: float) -> dict[str, str]:
    """The versions pinned for a tenant's feature (``prompt_version``, ``model``,
    ``config_version``) and ``safety_level``; takes no token from any bucket."""
    if not view._setting_lookups:
        return {}
    settings = _settings_of(view, (tenant_id, feature, None, None, None), now)
    return _pins(settings) if settings else {}


def _matches(view: DirectiveView, request: tuple[Any, ...], now: float) -> list[_Entry]:
    hits = []
    for getter, table in view._lookups:
        entry = table.get(getter(request))
        if entry is not None and entry.expires > now:
            hits.append(entry)
    return hits


@dataclass(slots=True, eq=False)
class _Plan:
    """What the directives in force say about one request shape, until ``valid_until``."""

    valid_until: float
    effective: str | None
    ids: tuple[str, ...]
    refuse: _Entry | None
    reason: str
    throttles: tuple[_Entry, ...]
    allow: Decision


def enforce(view: DirectiveView, *, tenant_id: str, feature: str | None = None, model: str | None = None,
            tool: str | None = None, provider: str | None = None, request_id: str | None = None, now: float,
            staleness: Staleness | None = None) -> Decision:
    """What the view says about one call at ``now`` (token buckets are taken from)."""
    return enforce_tuple(view, (tenant_id, feature, provider, model, tool), now, staleness, request_id)


def enforce_tuple(view: DirectiveView, request: tuple[Any, ...], now: float, staleness: Staleness | None,
                  request_id: str | None = None) -> Decision:
    """``enforce`` with the request as a tuple in ``REQUEST_FIELDS`` order: the hot path."""
    if request_id is not None and view._requests:
        entry = view._requests.get(request_id)
        if entry is not None and entry.expires > now and entry.directive.scope.tenant_id in (None, request[0]):
            base = enforce_tuple(view, request, now, staleness)
            if not base.allowed:
                return base
            ids = (*base.directive_ids, entry.directive_id)
            if entry.action in (ActionKind.BLOCK, ActionKind.DISABLE_TOOL):
                return base._replace(allowed=False, retry_after_s=entry.expires - now, reason="request blocked",
                                     directive_ids=ids)
            if entry.action is ActionKind.THROTTLE:
                wait = _take(view, (entry,), now)
                if wait is not None:
                    return base._replace(allowed=False, retry_after_s=wait, reason="throttled", directive_ids=ids)
            return base._replace(directive_ids=ids)
    stale = False
    if staleness is not None:
        since = view.updated_at if view.updated_at is not None else view.created_at
        if since is not None and now - since > staleness.max_age_s:
            stale = True
            if staleness.high_risk:
                for scope in staleness.high_risk:
                    if all(request[_INDEX[k]] == v for k, v in scope.items()):
                        return Decision(False, request[3], staleness.max_age_s,
                                        "directives stale: fail-closed for a high-risk scope", (), True)
    if not view._lookups and not view._setting_lookups:
        return _allow(request[3], stale)
    plans = view._plans  # a reader stores into the dict it read: apply() swaps in a new one
    plan = plans.get(request)
    if plan is None or plan.valid_until <= now:
        plan = _plan(view, request, now)
        if len(plans) >= MAX_PLANS:
            plans.clear()
        plans[request] = plan
    if plan.refuse is not None:
        return Decision(False, plan.effective, plan.refuse.expires - now, plan.reason, plan.ids, stale,
                        *plan.allow[6:])
    if plan.throttles:
        wait = _take(view, plan.throttles, now)
        if wait is not None:
            return Decision(False, plan.effective, wait, "throttled", plan.ids, stale, *plan.allow[6:])
    return plan.allow._replace(stale=True) if stale else plan.allow


def _pins(settings: list[_Entry]) -> dict[str, str]:
    """What the settings in force say: the most specific directive per pinned dimension."""
    out: dict[str, str] = {}
    best: dict[str, tuple[int, float, str]] = {}
    for entry in settings:
        d = entry.directive
        name, value = ("safety_level", "strict") if entry.action is ActionKind.STRICT_SAFETY else (d.pin_field, d.pin_value)
        if name is None or value is None:  # pragma: no cover - the schema requires both for a pin
            continue
        rank = (entry.specificity, d.created_at.timestamp(), entry.directive_id)
        if name not in best or rank > best[name]:
            best[name], out[name] = rank, value
    return out


def _plan(view: DirectiveView, request: tuple[Any, ...], now: float) -> _Plan:
    settings = _settings_of(view, request, now) if view._setting_lookups else []
    pins = _pins(settings) if settings else {}
    if "model" in pins and request[3] != pins["model"]:
        request = (*request[:3], pins["model"], request[4])  # the pinned model is the one requested
    tenant_id, feature, provider, model, tool = request
    hits = _matches(view, request, now)
    effective = model
    for entry in hits:
        if entry.action is ActionKind.REROUTE and model is not None:
            effective, hops = _reroute(view, request, entry, now)
            hits = hits + [h for h in hops if all(h is not x for x in hits)]
            break
    if effective != model:
        # directives scoped to the model actually used apply too (a throttle on the fallback)
        rerouted = (tenant_id, feature, provider, effective, tool)
        hits = hits + [h for h in _matches(view, rerouted, now) if all(h is not x for x in hits)]
    ids = tuple([e.directive_id for e in hits] + [e.directive_id for e in settings])
    valid_until = min([e.expires for e in hits] + [e.expires for e in settings], default=float("inf"))
    refuse, reason, throttles = None, "", []
    for entry in hits:
        action = entry.action
        if action is ActionKind.BLOCK:
            refuse, reason = entry, "blocked"
            break
        if action is ActionKind.DISABLE_TOOL and tool is not None and entry.directive.scope.tool_name == tool:
            refuse, reason = entry, f"tool {tool} disabled"
            break
        if action is ActionKind.THROTTLE:
            throttles.append(entry)
    if settings:
        allow = Decision(True, effective, None, "", ids, False, pins.get("prompt_version"), pins.get("config_version"),
                         pins.get("safety_level"))
    else:
        allow = Decision(True, effective, None, "", ids, False) if hits else _allow(model, False)
    return _Plan(valid_until, effective, ids, refuse, reason, tuple(throttles), allow)


_ALLOWS: dict[tuple[str | None, bool], Decision] = {}


def _allow(model: str | None, stale: bool) -> Decision:
    decision = _ALLOWS.get((model, stale))
    if decision is None:
        if len(_ALLOWS) > 4096:  # models are few; a caller passing unbounded names must not grow this
            _ALLOWS.clear()
        decision = _ALLOWS[(model, stale)] = Decision(True, model, None, "", (), stale)
    return decision


def _reroute(view: DirectiveView, request: tuple[Any, ...], first: _Entry,
             now: float) -> tuple[str | None, list[_Entry]]:
    """Follow reroutes from the requested model; return the effective model and the hops."""
    tenant_id, feature, provider, model, tool = request
    visited = {model}
    hops = [first]
    entry = first
    current = model
    for _ in range(MAX_REROUTE_HOPS):
        fresh = [m for m in entry.targets if m not in visited]
        if not fresh:
            return current, hops
        for candidate in fresh:
            if _reroute_of(view, (tenant_id, feature, provider, candidate, tool), now) is None:
                return candidate, hops
        current = fresh[0]
        visited.add(current)
        nxt = _reroute_of(view, (tenant_id, feature, provider, current, tool), now)
        if nxt is None:  # pragma: no cover - checked just above
            return current, hops
        hops.append(nxt)
        entry = nxt
    return current, hops


def _reroute_of(view: DirectiveView, request: tuple[Any, ...], now: float) -> _Entry | None:
    for entry in _matches(view, request, now):
        if entry.action is ActionKind.REROUTE and entry.targets:
            return entry
    return None


def _take(view: DirectiveView, throttles: Sequence[_Entry], now: float) -> float | None:
    """Token buckets: None if every bucket gave a token, else seconds until all can."""
    if len(throttles) == 1:  # the common case, without the two passes
        entry = throttles[0]
        with view._lock:
            tokens = entry.tokens
            if tokens < 0:
                tokens = entry.burst
            elif now > entry.updated:
                tokens = min(entry.burst, tokens + (now - entry.updated) * entry.rate)
            entry.updated = max(entry.updated, now)
            if tokens >= 1.0:
                entry.tokens = tokens - 1.0
                return None
            entry.tokens = tokens
        until_expiry = entry.expires - now
        return until_expiry if entry.rate <= 0 else min((1.0 - tokens) / entry.rate, until_expiry)
    with view._lock:
        wait = 0.0
        for entry in throttles:
            if entry.tokens < 0:
                entry.tokens, entry.updated = entry.burst, now
            elif now > entry.updated:
                entry.tokens = min(entry.burst, entry.tokens + (now - entry.updated) * entry.rate)
                entry.updated = now
            if entry.tokens < 1.0:
                until_expiry = entry.expires - now
                need = until_expiry if entry.rate <= 0 else min((1.0 - entry.tokens) / entry.rate, until_expiry)
                wait = max(wait, need)
        if wait > 0:
            return wait
        for entry in throttles:
            entry.tokens -= 1.0
        return None
