"""SRE routes: alerts, directives (and overrides), the audit log, policies."""

from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Query

from flyball.schemas import Directive

from ..auth import Principal, Role
from .deps import Auth, Deps, tenant_scope

ACTION_COLUMNS = ["action_id", "at", "decision", "directive_id", "scope_key", "tenant_id", "alert_id",
                  "policy_id", "actor", "reason", "before", "after", "evidence"]


def register(app: FastAPI, deps: Deps, auth: Auth) -> None:
    @app.get("/v1/alerts", tags=["sre"])
    async def alerts(
        p: Annotated[Principal, Depends(auth.require(Role.SRE))],
        status: Annotated[str | None, Query(pattern="^(open|resolved)$")] = None,
        kind: str | None = None, tenant_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        tenant = tenant_scope(p, tenant_id)
        where, params = ["1"], {"limit": limit}
        if status:
            where.append("status = {status:String}")
            params["status"] = status
        if kind:
            where.append("kind = {kind:String}")
            params["kind"] = kind
        if tenant:
            where.append("JSONExtractString(scope, 'tenant_id') = {tenant:String}")
            params["tenant"] = tenant
        sql = (f"SELECT body FROM alerts FINAL WHERE {' AND '.join(where)} "
               "ORDER BY last_seen DESC LIMIT {limit:UInt32}")
        return [orjson.loads(r[0]) for r in await deps.query(sql, params)]

    @app.get("/v1/directives", tags=["sre"])
    async def directives(p: Annotated[Principal, Depends(auth.require(Role.SERVICE, Role.SRE))],
                         tenant_id: str | None = None) -> list[Directive]:
        tenant = tenant_scope(p, tenant_id)
        active = deps.control.active() if deps.control else []
        if tenant is not None:
            active = [d for d in active if d.scope.tenant_id == tenant]
        return active

    async def override(directive_id: str, p: Principal, verb: str) -> dict[str, Any]:
        if deps.control is None:
            raise HTTPException(503, "control loop not running in this process")
        target = next((d for d in deps.control.active() if d.directive_id == directive_id), None)
        if target is None or (p.tenant_id is not None and target.scope.tenant_id != p.tenant_id):
            raise HTTPException(404, "no active directive with this id")
        actor = f"key:{p.key_id}"
        action = await (deps.control.revert if verb == "revert" else deps.control.pin)(directive_id, actor=actor)
        if action is None or action.directive is None:
            raise HTTPException(404, "no active directive with this id")
        return {"decision": str(action.decision), "directive": action.directive.model_dump(mode="json")}

    @app.post("/v1/directives/{directive_id}/revert", tags=["sre"])
    async def revert_directive(directive_id: str,
                               p: Annotated[Principal, Depends(auth.require(Role.SRE))]) -> dict[str, Any]:
        return await override(directive_id, p, "revert")

    @app.post("/v1/directives/{directive_id}/pin", tags=["sre"])
    async def pin_directive(directive_id: str,
                            p: Annotated[Principal, Depends(auth.require(Role.SRE))]) -> dict[str, Any]:
        return await override(directive_id, p, "pin")

    @app.get("/v1/actions", tags=["sre"])
    async def actions(p: Annotated[Principal, Depends(auth.require(Role.SRE))], tenant_id: str | None = None,
                      limit: Annotated[int, Query(ge=1, le=5000)] = 200) -> list[dict[str, Any]]:
        tenant = tenant_scope(p, tenant_id)
        where, params = "1", {"limit": limit}
        if tenant:
            where, params["tenant"] = "tenant_id = {tenant:String}", tenant
        sql = f"SELECT {', '.join(ACTION_COLUMNS)} FROM actions WHERE {where} ORDER BY at DESC LIMIT {{limit:UInt32}}"
        out = []
        for row in await deps.query(sql, params):
            item = dict(zip(ACTION_COLUMNS, row, strict=True))
            item["at"] = item["at"].isoformat() + ("Z" if item["at"].tzinfo is None else "")
            for name in ("before", "after", "evidence"):
                item[name] = orjson.loads(item[name]) if item[name] else None
            out.append(item)
        return out

    @app.get("/v1/policies", tags=["sre"])
    async def policies(_: Annotated[Principal, Depends(auth.require(Role.SRE))]) -> dict[str, Any]:
        pol = deps.policies()
        return {"max_active": pol.max_active, "policies": [
            {"policy_id": x.policy_id, "version": x.version, "alert_kind": str(x.alert_kind), "action": str(x.action),
             "min_severity": x.min_severity, "ttl_s": x.ttl_s, "cooldown_s": x.cooldown_s,
             "rate_per_s": x.rate_per_s, "burst": x.burst, "dry_run": x.dry_run} for x in pol.policies]}
