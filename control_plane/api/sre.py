"""SRE routes: alerts (ack, silence), directives (and the overrides that win over automation),
the audit log, and the policies in force."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

from flyball.schemas.events import PlausibleTime
from flyball.schemas import MAX_BURST, MAX_CHAIN, MAX_MODEL, MAX_RATE, MAX_TTL_S, ActionKind, Alert, Directive, DirectiveState, Scope

from .. import queries
from ..auth import Principal, Role
from ..policy import Action
from ..policy_file import dump_policies
from ..state import Mark, utc
from .deps import Auth, Deps, actor, ordered, tenant_scope

WEEK_S = 7 * 86_400


class AckRequest(BaseModel):
    note: str = Field(default="", max_length=1000)


class SilenceRequest(BaseModel):
    duration_s: int = Field(gt=0, le=WEEK_S, description="how long notifications for this alert stay silent")
    note: str = Field(default="", max_length=1000)


class ExtendRequest(BaseModel):
    seconds: int = Field(default=3600, gt=0, le=WEEK_S, description="added to the directive's expiry")


class CreateDirective(BaseModel):
    action: ActionKind
    scope: Scope
    ttl_s: int = Field(default=3600, gt=0, le=min(WEEK_S, MAX_TTL_S))
    rate_per_s: float | None = Field(default=None, ge=0, le=MAX_RATE, allow_inf_nan=False)
    burst: int | None = Field(default=None, ge=0, le=MAX_BURST)
    to_model: str | None = Field(default=None, min_length=1, max_length=MAX_MODEL)
    chain: list[Annotated[str, Field(min_length=1, max_length=MAX_MODEL)]] = Field(default_factory=list,
                                                                                max_length=MAX_CHAIN)
    reason: str = Field(default="", max_length=1000)
    pinned: bool = False
    # pin_version: the dimension to pin and the version guard() hands back for it
    pin_field: Literal["prompt_version", "model", "config_version"] | None = None
    pin_value: str | None = Field(default=None, min_length=1, max_length=MAX_MODEL)


def known_models(deps: Deps) -> frozenset[str]:
    """Models a reroute may send traffic to: the catalog's and the policies' fallback chains'."""
    chains = {m.lower() for chain in deps.policies().fallback_chains for m in chain}
    return frozenset(deps.prices().by_model) | chains


def _iso(value: datetime) -> str:
    return (utc(value) or value).isoformat()


def register(app: FastAPI, deps: Deps, auth: Auth) -> None:
    sre = auth.require(Role.SRE)

    def now() -> datetime:
        return deps.control.clock() if deps.control else datetime.now(UTC)

    # ------------------------------------------------------------------ alerts
    @app.get("/v1/alerts", tags=["sre"])
    async def alerts(
        p: Annotated[Principal, Depends(sre)],
        status: Annotated[str | None, Query(pattern="^(open|resolved)$")] = None,
        kind: str | None = None, tenant_id: str | None = None,
        severity: Annotated[str | None, Query(pattern="^(info|warning|critical)$")] = None,
        acknowledged: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """Alerts, newest first, each with its acknowledgement and silence (if any)."""
        tenant = tenant_scope(p, tenant_id)
        found = await deps.read(queries.alerts, limit=limit, status=status, kind=kind, severity=severity, tenant_id=tenant)
        at = now()
        out = [deps.marks.annotate(body, alert_key=key, now=at) for body, key in found]
        if acknowledged is not None:
            out = [a for a in out if (a["acknowledged_by"] is not None) == acknowledged]
        return out

    async def find_alert(alert_id: str, p: Principal) -> Alert:
        body = await deps.read(queries.alert_body, alert_id)
        found = Alert.model_validate_json(body) if body is not None else None
        if found is None or (p.tenant_id is not None and found.scope.tenant_id != p.tenant_id):
            raise HTTPException(404, "no alert with this id")
        return found

    async def mark(alert: Alert, mark: Mark) -> dict[str, Any]:
        await deps.persisted().save_mark(mark)
        deps.marks.add(mark)
        return deps.marks.annotate(alert.model_dump(mode="json"), alert_key=alert.key(), now=mark.at)

    @app.post("/v1/alerts/{alert_id}/ack", tags=["sre"])
    async def ack_alert(alert_id: str, p: Annotated[Principal, Depends(sre)],
                        body: Annotated[AckRequest | None, Body()] = None) -> dict[str, Any]:
        """Acknowledge: someone is on it (recorded with who and when)."""
        alert = await find_alert(alert_id, p)
        return await mark(alert, Mark(alert.alert_id, alert.key(), "ack", actor(p), now(), None,
                                      body.note if body else ""))

    @app.post("/v1/alerts/{alert_id}/silence", tags=["sre"])
    async def silence_alert(alert_id: str, body: SilenceRequest,
                            p: Annotated[Principal, Depends(sre)]) -> dict[str, Any]:
        """Silence notifications for this alert's kind and scope for a while (automation is
        not affected: silence is about people, brakes are about actions)."""
        alert = await find_alert(alert_id, p)
        at = now()
        return await mark(alert, Mark(alert.alert_id, alert.key(), "silence", actor(p), at,
                                      at + timedelta(seconds=body.duration_s), body.note))

    @app.post("/v1/alerts/{alert_id}/unsilence", tags=["sre"])
    async def unsilence_alert(alert_id: str, p: Annotated[Principal, Depends(sre)]) -> dict[str, Any]:
        alert = await find_alert(alert_id, p)
        return await mark(alert, Mark(alert.alert_id, alert.key(), "unsilence", actor(p), now()))

    # ------------------------------------------------------------------ directives
    @app.get("/v1/directives", tags=["sre"])
    async def directives(p: Annotated[Principal, Depends(auth.require(Role.SERVICE, Role.SRE))],
                         tenant_id: str | None = None,
                         state: Annotated[Literal["active", "pending", "all"], Query()] = "active") -> list[Directive]:
        """Directives in force (``state=pending``: waiting for approval; ``all``: both)."""
        tenant = tenant_scope(p, tenant_id)
        control = deps.control
        found: list[Directive] = []
        if control is not None:
            if state in ("active", "all"):
                found += control.active()
            if state in ("pending", "all"):
                found += list(control.pending.values())
        if tenant is not None:
            found = [d for d in found if d.scope.tenant_id == tenant]
        return found

    def loop() -> Any:
        if deps.control is None:
            raise HTTPException(503, "control loop not running in this process")
        return deps.control

    def answer(action: Action | None, what: str) -> dict[str, Any]:
        if action is None or action.directive is None:
            raise HTTPException(404, f"no {what} directive with this id")
        return {"decision": str(action.decision), "directive": action.directive.model_dump(mode="json")}

    def visible(directive_id: str, p: Principal, *states: DirectiveState) -> None:
        target = loop().find(directive_id)
        if target is None or target.state not in states or (
                p.tenant_id is not None and target.scope.tenant_id != p.tenant_id):
            raise HTTPException(404, f"no {'/'.join(states)} directive with this id")

    @app.post("/v1/directives", status_code=201, tags=["sre"])
    async def create_directive(body: CreateDirective, p: Annotated[Principal, Depends(sre)]) -> dict[str, Any]:
        """A manual directive: in force at once, wins over automation on its scope."""
        if not body.scope.key():
            raise HTTPException(422, "scope: name at least one of tenant_id, feature, tool_name, model, ...")
        if p.tenant_id is not None and body.scope.tenant_id != p.tenant_id:
            raise HTTPException(403, "scope.tenant_id: a tenant-bound key may only act on its own tenant")
        if body.action == ActionKind.THROTTLE and body.rate_per_s is None:
            raise HTTPException(422, "rate_per_s: a throttle needs a rate")
        if body.action == ActionKind.REROUTE and not body.to_model:
            raise HTTPException(422, "to_model: a reroute needs a target model")
        if body.action == ActionKind.DISABLE_TOOL and not body.scope.tool_name:
            raise HTTPException(422, "scope.tool_name: disable_tool needs a tool")
        if body.action == ActionKind.PIN_VERSION and (body.pin_field is None or body.pin_value is None):
            raise HTTPException(422, f"{'pin_field' if body.pin_field is None else 'pin_value'}: "
                                "pin_version needs the dimension to pin and its value")
        if body.action != ActionKind.PIN_VERSION and (body.pin_field is not None or body.pin_value is not None):
            raise HTTPException(422, "pin_field: only a pin_version takes pin_field and pin_value")
        if body.action == ActionKind.PIN_VERSION and body.scope.version_field not in (None, body.pin_field):
            raise HTTPException(422, "scope.version_field: must be absent or equal pin_field")
        if body.scope.tenant_id is None and body.scope.request_id is None and p.role != Role.ADMIN:
            raise HTTPException(403, "scope.tenant_id: a directive on every tenant needs an admin key")
        if body.action == ActionKind.REROUTE:
            known = known_models(deps)
            for name, model in (("to_model", body.to_model), *((f"chain.{i}", m) for i, m in enumerate(body.chain))):
                if model is not None and model.lower() not in known:
                    raise HTTPException(422, f"{name}: not a model of the price catalog or of a fallback chain")
        at = now()
        directive = Directive(
            directive_id=str(uuid.uuid4()), action=body.action, scope=body.scope, rate_per_s=body.rate_per_s,
            burst=body.burst, to_model=body.to_model, chain=body.chain, created_at=at,
            expires_at=at + timedelta(seconds=body.ttl_s), reason=body.reason or "manual", actor=actor(p),
            pinned=body.pinned, pin_field=body.pin_field, pin_value=body.pin_value)
        return answer(await loop().create(directive), "")

    @app.post("/v1/directives/{directive_id}/revert", tags=["sre"])
    async def revert_directive(directive_id: str, p: Annotated[Principal, Depends(sre)]) -> dict[str, Any]:
        """End a directive now (a pending one is rejected). Automation will not re-apply it
        within the policy's cooldown."""
        visible(directive_id, p, DirectiveState.ACTIVE, DirectiveState.PENDING)
        return answer(await loop().revert(directive_id, actor=actor(p)), "active")

    @app.post("/v1/directives/{directive_id}/pin", tags=["sre"])
    async def pin_directive(directive_id: str, p: Annotated[Principal, Depends(sre)]) -> dict[str, Any]:
        """Pin: never expires, never reverted by automation, until an SRE reverts it."""
        visible(directive_id, p, DirectiveState.ACTIVE)
        return answer(await loop().pin(directive_id, actor=actor(p)), "active")

    @app.post("/v1/directives/{directive_id}/extend", tags=["sre"])
    async def extend_directive(directive_id: str, p: Annotated[Principal, Depends(sre)],
                               body: Annotated[ExtendRequest | None, Body()] = None) -> dict[str, Any]:
        visible(directive_id, p, DirectiveState.ACTIVE, DirectiveState.PENDING)
        seconds = (body or ExtendRequest()).seconds
        return answer(await loop().extend(directive_id, actor=actor(p), seconds=seconds), "active")

    @app.post("/v1/directives/{directive_id}/approve", tags=["sre"])
    async def approve_directive(directive_id: str, p: Annotated[Principal, Depends(sre)]) -> dict[str, Any]:
        visible(directive_id, p, DirectiveState.PENDING)
        return answer(await loop().approve(directive_id, actor=actor(p)), "pending")

    @app.post("/v1/directives/{directive_id}/reject", tags=["sre"])
    async def reject_directive(directive_id: str, p: Annotated[Principal, Depends(sre)]) -> dict[str, Any]:
        visible(directive_id, p, DirectiveState.PENDING)
        return answer(await loop().reject(directive_id, actor=actor(p)), "pending")

    # ------------------------------------------------------------------ audit
    @app.get("/v1/actions", tags=["sre"])
    async def actions(
        p: Annotated[Principal, Depends(sre)], tenant_id: str | None = None,
        decision: str | None = None, directive_id: str | None = None, alert_id: str | None = None,
        actor_: Annotated[str | None, Query(alias="actor")] = None, policy_id: str | None = None,
        from_: Annotated[PlausibleTime | None, Query(alias="from")] = None, to: PlausibleTime | None = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 200,
    ) -> list[dict[str, Any]]:
        """The audit log, newest first: one row per decision, with evidence and before/after."""
        ordered(from_, to)
        tenant = tenant_scope(p, tenant_id)
        filters = {"tenant_id": tenant, "decision": decision, "directive_id": directive_id, "alert_id": alert_id,
                   "actor": actor_}
        out = await deps.read(queries.actions, filters, limit=limit, policy_id=policy_id, from_ts=from_, to_ts=to)
        for item in out:
            item["at"] = _iso(item["at"])
        return out

    # ------------------------------------------------------------------ policies (read)
    @app.get("/v1/policies", tags=["sre"])
    async def policies(_: Annotated[Principal, Depends(sre)]) -> dict[str, Any]:
        """The policies in force (``PUT /v1/policies`` as admin to change them)."""
        return dump_policies(deps.policies())
