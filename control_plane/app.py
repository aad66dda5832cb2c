"""The HTTP API (FastAPI). Routes are thin: check the key, call a store or the control loop.

Every route but ``/healthz`` needs ``Authorization: Bearer <key>``. A tenant-bound key sees
only its tenant; asking for another tenant is refused without naming anything about it.
"""

# no `from __future__ import annotations`: FastAPI must resolve the route signatures, which
# refer to dependencies defined inside create_app

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from pydantic import BaseModel

from flyball.schemas import Directive

from .auth import KeyRing, Principal, Role
from .directives import ControlLoop
from .policy import Policies

GROUPABLE = ("tenant_id", "feature", "provider", "model", "hour", "day", "month")
TIME_BUCKETS = {"hour": "toStartOfHour(ts)", "day": "toDate(ts)", "month": "toStartOfMonth(ts)"}


@dataclass
class Deps:
    store: Any  # ClickHouseStore-like: run(fn, *args), query(sql, params)
    control: ControlLoop | None
    keys: KeyRing
    policies: Callable[[], Policies]
    prices: Callable[[], Any]
    stats: dict[str, Callable[[], float]] = field(default_factory=dict)
    ready: Callable[[], dict[str, bool]] = lambda: {}


class KeyRequest(BaseModel):
    role: Role
    tenant_id: str | None = None
    name: str = ""


def create_app(deps: Deps) -> FastAPI:
    app = FastAPI(title="flyball", version="0.1.0",
                  description="Telemetry and control plane for LLM calls: spend, alerts, directives, audit.")
    registry = CollectorRegistry()
    for name, fn in deps.stats.items():
        Gauge(f"flyball_{name}", f"flyball {name.replace('_', ' ')}", registry=registry).set_function(fn)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"] if p not in ("query", "body", "path")),
                   "message": e["msg"]} for e in exc.errors()]
        fields = ", ".join(e["field"] for e in errors)
        return JSONResponse(status_code=422, content={"detail": f"invalid request: {fields}", "errors": errors})

    def principal(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "missing API key: send Authorization: Bearer <key>",
                                headers={"WWW-Authenticate": "Bearer"})
        found = deps.keys.lookup(token.strip())
        if found is None:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        return found

    def require(*roles: Role) -> Callable[..., Principal]:
        def check(p: Annotated[Principal, Depends(principal)]) -> Principal:
            if not p.may(*roles):
                raise HTTPException(403, f"role {p.role} may not use this route")
            return p
        return check

    def tenant_scope(p: Principal, tenant_id: str | None) -> str | None:
        if p.tenant_id is None:
            return tenant_id
        if tenant_id is not None and tenant_id != p.tenant_id:
            raise HTTPException(403, "this key is bound to a different tenant")
        return p.tenant_id

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", **deps.ready()}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(_: Annotated[Principal, Depends(principal)]) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    @app.get("/v1/spend")
    async def spend(
        request: Request,
        p: Annotated[Principal, Depends(require(Role.FINANCE, Role.SRE))],
        tenant_id: str | None = None, feature: str | None = None, provider: str | None = None,
        model: str | None = None,
        from_: Annotated[datetime | None, Query(alias="from")] = None,
        to: datetime | None = None,
        group_by: Annotated[list[str] | None, Query()] = None,
    ) -> Response:
        tenant = tenant_scope(p, tenant_id)
        groups = [g.strip() for item in (group_by or []) for g in item.split(",") if g.strip()]
        for g in groups:
            if g not in GROUPABLE:
                raise HTTPException(422, f"group_by: unknown value {g!r} (one of {', '.join(GROUPABLE)})")
        where, params = ["event_type = 'llm_call'"], {}
        for name, value in (("tenant_id", tenant), ("feature", feature), ("provider", provider), ("model", model)):
            if value is not None:
                where.append(f"{name} = {{{name}:String}}")
                params[name] = value
        if from_ is not None:
            where.append("ts >= {from_ts:DateTime64(3, 'UTC')}")
            params["from_ts"] = from_
        if to is not None:
            where.append("ts < {to_ts:DateTime64(3, 'UTC')}")
            params["to_ts"] = to
        cols = [f"toString({TIME_BUCKETS[g]}) AS {g}" if g in TIME_BUCKETS else g for g in groups]
        select = ", ".join([*cols, "count() AS events", "toString(sumOrNull(cost_usd)) AS cost_usd",
                            "countIf(unpriced = 1) AS unpriced_events"])
        sql = f"SELECT {select} FROM events FINAL WHERE {' AND '.join(where)}"
        if groups:
            sql += f" GROUP BY {', '.join(groups)} ORDER BY {', '.join(groups)}"
        rows = await deps.store.run(deps.store.query, sql, params)
        names = [*groups, "events", "cost_usd", "unpriced_events"]
        items = []
        for row in rows:
            item = dict(zip(names, row, strict=True))
            item["cost_usd"] = _dec_text(item["cost_usd"])
            items.append(item)
        total = sum((Decimal(i["cost_usd"]) for i in items), Decimal(0))
        events = sum(int(i["events"]) for i in items)
        if "text/csv" in request.headers.get("accept", ""):
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(names)
            for item in items:
                writer.writerow([item[n] for n in names])
            return Response(buf.getvalue(), media_type="text/csv")
        body = {"currency": "USD", "total_usd": _dec_text(total), "events": events, "group_by": groups, "rows": items}
        return Response(orjson.dumps(body), media_type="application/json")

    @app.get("/v1/alerts")
    async def alerts(
        p: Annotated[Principal, Depends(require(Role.SRE))],
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
        rows = await deps.store.run(deps.store.query, sql, params)
        return [orjson.loads(r[0]) for r in rows]

    @app.get("/v1/directives")
    async def directives(p: Annotated[Principal, Depends(require(Role.SERVICE, Role.SRE))],
                         tenant_id: str | None = None) -> list[Directive]:
        tenant = tenant_scope(p, tenant_id)
        active = deps.control.active() if deps.control else []
        if tenant is not None:
            active = [d for d in active if d.scope.tenant_id == tenant]
        return active

    @app.post("/v1/directives/{directive_id}/revert")
    async def revert_directive(directive_id: str, p: Annotated[Principal, Depends(require(Role.SRE))]) -> dict[str, Any]:
        return await _override(directive_id, p, "revert")

    @app.post("/v1/directives/{directive_id}/pin")
    async def pin_directive(directive_id: str, p: Annotated[Principal, Depends(require(Role.SRE))]) -> dict[str, Any]:
        return await _override(directive_id, p, "pin")

    async def _override(directive_id: str, p: Principal, verb: str) -> dict[str, Any]:
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

    @app.get("/v1/actions")
    async def actions(p: Annotated[Principal, Depends(require(Role.SRE))], tenant_id: str | None = None,
                      limit: Annotated[int, Query(ge=1, le=5000)] = 200) -> list[dict[str, Any]]:
        tenant = tenant_scope(p, tenant_id)
        where, params = "1", {"limit": limit}
        if tenant:
            where, params["tenant"] = "tenant_id = {tenant:String}", tenant
        cols = ["action_id", "at", "decision", "directive_id", "scope_key", "tenant_id", "alert_id",
                "policy_id", "actor", "reason", "before", "after", "evidence"]
        sql = f"SELECT {', '.join(cols)} FROM actions WHERE {where} ORDER BY at DESC LIMIT {{limit:UInt32}}"
        rows = await deps.store.run(deps.store.query, sql, params)
        out = []
        for row in rows:
            item = dict(zip(cols, row, strict=True))
            item["at"] = item["at"].isoformat() + ("Z" if item["at"].tzinfo is None else "")
            for name in ("before", "after", "evidence"):
                item[name] = orjson.loads(item[name]) if item[name] else None
            out.append(item)
        return out

    @app.get("/v1/prices")
    async def prices(_: Annotated[Principal, Depends(require(Role.FINANCE, Role.SRE))],
                     provider: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        book = deps.prices()
        out = []
        for (prov, mod), versions in sorted(book.entries.items()):
            if (provider and prov != provider.lower()) or (model and mod != model.lower()):
                continue
            for e in versions:
                r = e.rates
                out.append({"provider": e.provider, "model": e.model, "version": e.version,
                            "effective_from": e.effective_from.isoformat(), "source": e.source,
                            **{k: (None if getattr(r, k) is None else _dec_text(getattr(r, k)))
                               for k in ("input", "output", "cache_read", "cache_write", "reasoning", "per_request")}})
        return out

    @app.get("/v1/policies")
    async def policies(_: Annotated[Principal, Depends(require(Role.SRE))]) -> dict[str, Any]:
        pol = deps.policies()
        return {"max_active": pol.max_active, "policies": [
            {"policy_id": x.policy_id, "version": x.version, "alert_kind": str(x.alert_kind), "action": str(x.action),
             "min_severity": x.min_severity, "ttl_s": x.ttl_s, "cooldown_s": x.cooldown_s,
             "rate_per_s": x.rate_per_s, "burst": x.burst, "dry_run": x.dry_run} for x in pol.policies]}

    @app.post("/v1/keys", status_code=201)
    async def create_key(body: KeyRequest, _: Annotated[Principal, Depends(require(Role.ADMIN))]) -> dict[str, Any]:
        key, who = deps.keys.create(body.role, tenant_id=body.tenant_id, name=body.name)
        return {"key": key, "key_id": who.key_id, "role": str(who.role), "tenant_id": who.tenant_id}

    return app


def _dec_text(value: Any) -> str:
    """Exact decimal text without exponent or trailing zeros beyond the cents."""
    if value is None:
        return "0"
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"
