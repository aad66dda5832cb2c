"""The console under ``/ui``: server-rendered pages (Jinja2), a login with an API key, and
small JSON feeds for the charts.

Reads and every state change go through the API routes themselves (an in-process ASGI call
carrying the session's key), so the console has the API's roles, tenant binding, validation,
rate limit and audit actor, and no second copy of them. The charts' series come from
``queries`` with the principal's tenant scope applied. Security: session id in an HttpOnly,
SameSite=Strict cookie; a CSRF token in every form (compared in constant time) plus a same-
origin check on every POST; a Content-Security-Policy with no inline script and
``frame-ancestors 'none'``.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from flyball.schemas import Alert
from flyball.stream_processors.budgets import Period, period_bounds
from flyball.stream_processors.forecast import forecast as forecast_spend

from ..api.deps import dec_text
from ..auth import Principal, Role
from ..state import utc
from . import live, queries
from .session import COOKIE, Session, Sessions, csrf_ok

LOGIN_COOKIE = "flyball_login"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
TABLE_MAX = 200  # rows of a spend table on screen (top by cost); the CSV link says when there are more
PAGES = (("health", "Health", (Role.SRE,)), ("incidents", "Incidents", (Role.SRE,)),
         ("control", "Control", (Role.SRE,)), ("spend", "Spend", (Role.FINANCE, Role.SRE)),
         ("versions", "Versions", (Role.SRE,)), ("requests", "Request", (Role.SRE,)))
ALERT_ACTIONS = {"ack", "silence"}
DIRECTIVE_ACTIONS = {"revert", "pin", "extend", "approve", "reject"}
VERSION_DIMENSIONS = ("prompt_version", "model", "config_version")
SPEND_GROUPS = ("tenant_id", "feature", "model", "provider", "prompt_version", "environment", "day")


class ConsoleError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Api:
    """The API, called in process with the session's key."""

    client: httpx.AsyncClient
    key: str

    async def get(self, path: str, params: dict[str, Any] | None = None, *, accept: str = "application/json") -> Any:
        r = await self.client.get(path, params=params, headers={"Authorization": f"Bearer {self.key}",
                                                                 "Accept": accept})
        if r.status_code >= 400:
            raise ConsoleError(r.status_code, _detail(r))
        return r.text if accept == "text/csv" else r.json()

    async def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        r = await self.client.post(path, json=body, headers={"Authorization": f"Bearer {self.key}"})
        if r.status_code >= 400:
            raise ConsoleError(r.status_code, _detail(r))
        return r.json()


def _detail(r: httpx.Response) -> str:
    try:
        detail = r.json().get("detail", "")
    except ValueError:
        detail = r.text
    return str(detail)[:300] or f"HTTP {r.status_code}"


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        if request.url.path.startswith("/ui"):
            response.headers["Content-Security-Policy"] = CSP
            response.headers["X-Frame-Options"] = "DENY"
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Referrer-Policy"] = "same-origin"
            response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
            if not request.url.path.startswith("/ui/static/"):
                response.headers["Cache-Control"] = "no-store"
        return response


def _fmt_usd(value: Any, places: int = 2) -> str:
    d = Decimal(str(value or 0))
    return f"{d:,.{places}f}"


def _ago(value: str | None, now: datetime) -> str:
    if not value:
        return ""
    seconds = (now - datetime.fromisoformat(value)).total_seconds()
    return _duration(abs(seconds)) + (" ago" if seconds >= 0 else " from now")


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 90:
        return f"{s}s"
    if s < 5400:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 172_800:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86_400}d {s % 86_400 // 3600}h"


def register(app: FastAPI, deps: Any, auth: Any, *, clock: Callable[[], float] = time.time) -> Sessions:
    """Mount the console on ``app`` (same keys and roles as the API). Returns its sessions."""
    base = resources.files("flyball.control_plane.ui")
    templates = Jinja2Templates(directory=str(base / "templates"))
    templates.env.filters["usd"] = _fmt_usd
    templates.env.filters["duration"] = _duration
    templates.env.filters["qs"] = lambda d: urlencode({k: v for k, v in d.items() if v not in (None, "")})
    sessions = Sessions()
    app.mount("/ui/static", StaticFiles(directory=str(base / "static")), name="ui-static")
    app.add_middleware(SecurityHeaders)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console", timeout=30)

    def now_dt() -> datetime:
        return deps.control.clock() if deps.control is not None else datetime.now(UTC)

    async def q(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return await deps.query(sql, params)

    def sync_q(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return deps.store.query(sql, params)  # type: ignore[no-any-return]  # runs on the ClickHouse thread

    async def on_store(fn: Callable[..., Any], *args: Any) -> Any:
        if deps.store is None:
            raise ConsoleError(503, "no ClickHouse store in this process")
        return await deps.store.run(fn, *args)

    # ------------------------------------------------------------------ sessions
    def session_of_sid(sid: str | None) -> Session | None:
        s = sessions.get(sid, now=clock())
        if s is not None and auth.keys.lookup(s.key) is None:  # the key was revoked: so is the session
            sessions.close(s.sid)
            return None
        return s

    def session_of(request: Request) -> Session | None:
        return session_of_sid(request.cookies.get(COOKIE))

    def same_origin(request: Request) -> bool:
        fetch_site = request.headers.get("sec-fetch-site")
        if fetch_site is not None:  # every current browser sends it; it cannot be forged from a page
            return fetch_site == "same-origin"
        origin = request.headers.get("origin") or request.headers.get("referer")
        if not origin or origin == "null":
            return False
        parts = urlsplit(origin)
        return parts.netloc == request.headers.get("host", "")

    def allowed(p: Principal, page: str) -> bool:
        roles = next(r for name, _, r in PAGES if name == page)
        return p.may(*roles)

    def nav(p: Principal) -> list[tuple[str, str]]:
        return [(name, title) for name, title, _ in PAGES if allowed(p, name)]

    def render(request: Request, s: Session, template: str, page: str, status: int = 200,
               **ctx: Any) -> HTMLResponse:
        context = {"request": request, "page": page, "nav": nav(s.principal), "principal": s.principal,
                   "csrf": s.csrf, "now": now_dt(), "flash": request.query_params.get("done", "")[:80],
                   "error": request.query_params.get("error", "")[:300], **ctx}
        return templates.TemplateResponse(request, template, context, status_code=status)

    def error_page(request: Request, s: Session | None, status: int, message: str) -> HTMLResponse:
        if s is None:
            return templates.TemplateResponse(request, "login.html", {"request": request, "error": message,
                                                                     "csrf": ""}, status_code=status)
        return render(request, s, "error.html", "", status=status, message=message)

    Handler = Callable[[Request, Session, Api], Awaitable[Response]]

    def page(name: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
        """A page for the roles in ``PAGES``: no session -> the login page; wrong role -> 403."""
        def wrap(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
            async def handler(request: Request) -> Response:
                s = session_of(request)
                if s is None:
                    return RedirectResponse("/ui/login?" + urlencode({"next": request.url.path}), 303)
                if name and not allowed(s.principal, name):
                    return error_page(request, s, 403, f"role {s.principal.role} may not see this page")
                try:
                    return await fn(request, s, Api(client, s.key))
                except ConsoleError as exc:
                    return error_page(request, s, exc.status, exc.message)
                except ValueError as exc:
                    return error_page(request, s, 422, str(exc)[:300])
            handler.__name__ = fn.__name__
            return handler
        return wrap

    def filters(request: Request, s: Session) -> queries.Filters:
        qp = request.query_params
        rng = qp.get("range", "1h")
        if rng not in queries.RANGES:
            raise ValueError(f"range: one of {', '.join(queries.RANGES)}")
        tenant = qp.get("tenant_id") or None
        if s.principal.tenant_id is not None:
            if tenant is not None and tenant != s.principal.tenant_id:
                raise ConsoleError(403, "this key is bound to a different tenant")
            tenant = s.principal.tenant_id
        values = {n: (qp.get(n) or None) for n in queries.FILTERS if n != "tenant_id"}
        for n, v in values.items():
            if v is not None and len(v) > 200:
                raise ValueError(f"{n}: at most 200 characters")
        end = _when(qp.get("end"), "end") or now_dt()  # a pinned window: the CSV of exactly what a page showed
        begin = _when(qp.get("start"), "start")
        if begin is not None and not timedelta(0) < end - begin <= timedelta(days=31):
            raise ValueError("start: before end, at most 31 days earlier")
        return queries.Filters(tenant_id=tenant, range=rng, end=end, begin=begin, **values)

    def filter_args(request: Request, s: Session) -> dict[str, str]:
        f = filters(request, s)
        out = {n: getattr(f, n) for n in queries.FILTERS if getattr(f, n)}
        if s.principal.tenant_id is not None:
            out.pop("tenant_id", None)
        if f.begin is not None:
            out["start"] = f.begin.isoformat()
        return {**out, "range": f.range}

    # ------------------------------------------------------------------ login
    @app.get("/ui", include_in_schema=False)
    @app.get("/ui/", include_in_schema=False)
    async def home(request: Request) -> Response:
        s = session_of(request)
        if s is None:
            return RedirectResponse("/ui/login", 303)
        first = nav(s.principal)
        return RedirectResponse(f"/ui/{first[0][0]}" if first else "/ui/login", 303)

    @app.get("/ui/login", include_in_schema=False)
    async def login_page(request: Request) -> Response:
        token = sessions_token()
        response = templates.TemplateResponse(request, "login.html", {"request": request, "csrf": token,
                                                                       "next": _safe_next(request.query_params.get("next")),
                                                                       "error": ""})
        _cookie(response, request, LOGIN_COOKIE, token, max_age=600)
        return response

    def sessions_token() -> str:
        return secrets.token_urlsafe(32)

    @app.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        token = str(form.get("csrf", ""))
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not same_origin(request) or not cookie or not csrf_ok(_Token(cookie), token):
            return templates.TemplateResponse(request, "login.html", {"request": request, "csrf": "", "next": "/ui",
                                                                     "error": "the login form expired: reload the page"},
                                              status_code=403)
        key = str(form.get("api_key", "")).strip()
        principal = auth.keys.lookup(key) if key else None
        if principal is None or not nav(principal):
            fresh = sessions_token()
            msg = "unknown API key" if principal is None else f"role {principal.role} has no console pages"
            response = templates.TemplateResponse(request, "login.html", {"request": request, "csrf": fresh,
                                                                         "next": "/ui", "error": msg}, status_code=401)
            _cookie(response, request, LOGIN_COOKIE, fresh, max_age=600)
            return response
        s = sessions.open(principal, key, now=clock())
        response = RedirectResponse(_safe_next(str(form.get("next", ""))), 303)
        _cookie(response, request, COOKIE, s.sid, max_age=None)
        response.delete_cookie(LOGIN_COOKIE, path="/ui")
        return response

    @app.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        s = session_of(request)
        form = await request.form()
        if s is not None and same_origin(request) and csrf_ok(s, str(form.get("csrf", ""))):
            sessions.close(s.sid)
        response = RedirectResponse("/ui/login", 303)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    # ------------------------------------------------------------------ state changes (CSRF)
    @app.post("/ui/alerts/{alert_id}/{verb}", include_in_schema=False)
    async def alert_action(request: Request, alert_id: str, verb: str) -> Response:
        return await act(request, f"/v1/alerts/{alert_id}/{verb}", verb, ALERT_ACTIONS, f"/ui/alerts/{alert_id}")

    @app.post("/ui/directives/{directive_id}/{verb}", include_in_schema=False)
    async def directive_action(request: Request, directive_id: str, verb: str) -> Response:
        return await act(request, f"/v1/directives/{directive_id}/{verb}", verb, DIRECTIVE_ACTIONS, "/ui/incidents")

    async def act(request: Request, path: str, verb: str, verbs: set[str], fallback: str) -> Response:
        s = session_of(request)
        if s is None:
            raise HTTPException(401, "log in first")
        form = await request.form()
        if not same_origin(request) or not csrf_ok(s, str(form.get("csrf", "") or request.headers.get("x-csrf-token", ""))):
            raise HTTPException(403, "CSRF check failed: reload the page and try again")
        if verb not in verbs:
            raise HTTPException(404, "no such action")
        back = _safe_next(str(form.get("back", "")) or fallback)
        body: dict[str, Any] | None = None
        if verb == "silence":
            body = {"duration_s": _int(form.get("duration_s"), 3600)}
        elif verb == "extend":
            body = {"seconds": _int(form.get("seconds"), 3600)}
        try:
            await Api(client, s.key).post(path, body)
        except ConsoleError as exc:
            return RedirectResponse(_with(back, error=exc.message), 303)
        return RedirectResponse(_with(back, done=verb), 303)

    # ------------------------------------------------------------------ pages
    @app.get("/ui/health", include_in_schema=False)
    @page("health")
    async def health(request: Request, s: Session, api: Api) -> Response:
        args = filter_args(request, s)
        return render(request, s, "health.html", "health", args=args, ranges=list(queries.RANGES),
                      dims=[d for d in queries.FILTERS if not (d == "tenant_id" and s.principal.tenant_id)])

    @app.get("/ui/incidents", include_in_schema=False)
    @page("incidents")
    async def incidents(request: Request, s: Session, api: Api) -> Response:
        alerts, pending, active = await asyncio.gather(
            api.get("/v1/alerts", {"limit": 200}), api.get("/v1/directives", {"state": "pending"}),
            api.get("/v1/directives", {"state": "active"}))
        now = now_dt()
        open_alerts = [a for a in alerts if a["status"] == "open"]
        recent = [a for a in alerts if a["status"] != "open"][:50]
        by_alert: dict[str, list[dict[str, Any]]] = {}
        for d in active + pending:
            if d.get("alert_id"):
                by_alert.setdefault(d["alert_id"], []).append(d)
        return render(request, s, "incidents.html", "incidents", open_alerts=open_alerts, recent=recent,
                      pending=_with_ttl(pending, now), by_alert=by_alert, ago=lambda v: _ago(v, now))

    @app.get("/ui/alerts/{alert_id}", include_in_schema=False)
    @page("incidents")
    async def alert_page(request: Request, s: Session, api: Api) -> Response:
        alert_id = request.path_params["alert_id"]
        tenant = s.principal.tenant_id
        rows = await q("SELECT body, kind, scope_key FROM alerts FINAL WHERE alert_id = {id:String} LIMIT 1",
                       {"id": alert_id})
        alert = Alert.model_validate_json(rows[0][0]) if rows else None
        if alert is None or (tenant is not None and alert.scope.tenant_id != tenant):
            raise ConsoleError(404, "no alert with this id")
        now = now_dt()
        body = deps.marks.annotate(alert.model_dump(mode="json"), alert_key=alert.key(), now=now)
        directives = await api.get("/v1/directives", {"state": "all"})
        caused = [d for d in directives if d.get("alert_id") == alert_id]
        timeline = await audit_for(alert_id, tenant)
        samples = await q_sync(queries.sample_events, alert.sample_event_ids, tenant)
        chains = sorted({e["request_id"] for e in samples if e["request_id"]})
        ever = sorted({a["directive_id"] for a in timeline if a["directive_id"]})
        return render(request, s, "alert.html", "incidents", alert=body, caused=_with_ttl(caused, now),
                      timeline=timeline, samples=samples, chains=chains, ever=ever, ago=lambda v: _ago(v, now),
                      scope={k: v for k, v in body["scope"].items() if v})

    async def audit_for(alert_id: str, tenant: str | None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"id": alert_id}
        extra = ""
        if tenant is not None:
            extra = " AND tenant_id = {t:String}"
            params["t"] = tenant
        rows = await q("SELECT at, decision, directive_id, policy_id, actor, reason FROM actions "
                       "WHERE (alert_id = {id:String} OR directive_id IN (SELECT directive_id FROM actions "
                       f"WHERE alert_id = {{id:String}} AND directive_id != '')){extra} ORDER BY at, action_id LIMIT 500",
                       params)
        return [{"at": (utc(at) or at).isoformat(), "decision": d, "directive_id": did, "policy_id": pid, "actor": a,
                 "reason": r} for at, d, did, pid, a, r in rows]

    async def q_sync(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await on_store(functools.partial(fn, sync_q, *args, **kwargs))

    @app.get("/ui/control", include_in_schema=False)
    @page("control")
    async def control(request: Request, s: Session, api: Api) -> Response:
        directives, policies, dry, changes = await asyncio.gather(
            api.get("/v1/directives", {"state": "all"}), api.get("/v1/policies"),
            api.get("/v1/actions", {"decision": "dry_run", "limit": 50}),
            api.get("/v1/actions", {"decision": "policies_updated", "limit": 5}))
        now = now_dt()
        scopes: dict[str, list[dict[str, Any]]] = {}
        for d in _with_ttl(directives, now):
            key = ", ".join(f"{k}={v}" for k, v in d["scope"].items() if v) or "(global)"
            scopes.setdefault(key, []).append(d)
        return render(request, s, "control.html", "control", scopes=scopes, policies=policies, dry=dry,
                      changes=changes, ago=lambda v: _ago(v, now))

    @app.get("/ui/spend", include_in_schema=False)
    @page("spend")
    async def spend(request: Request, s: Session, api: Api) -> Response:
        f = filters(request, s)
        group = request.query_params.get("group_by", "tenant_id")
        if group not in SPEND_GROUPS:
            raise ValueError(f"group_by: one of {', '.join(SPEND_GROUPS)}")
        by = request.query_params.get("by", "model")
        if by not in ("model", "feature"):
            raise ValueError("by: one of model, feature")
        prev_start = f.start - timedelta(seconds=f.seconds)
        month_start, _ = period_bounds(Period.MONTHLY, f.end)
        tenant_args = {"tenant_id": f.tenant_id} if f.tenant_id else None
        windows = [queries.SpendWindow(f.start, f.end, (group,)), queries.SpendWindow(prev_start, f.start, (group,)),
                   queries.SpendWindow(month_start, f.end, ("tenant_id", "day"), filtered=False)]
        budgets, (rows_now, rows_before, month_rows), split, users = await asyncio.gather(
            api.get("/v1/budgets", tenant_args), q_sync(queries.spend_windows, f, windows),
            q_sync(queries.tokens_split, f, cache_saving(f.end)), q_sync(queries.top_users, f))
        forecast = month_forecast(f, month_rows)
        total = sum((Decimal(r["cost_usd"]) for r in rows_now), Decimal(0))
        body = {"total_usd": dec_text(total), "events": sum(int(r["events"]) for r in rows_now), "rows": rows_now}
        rows = sorted(rows_now, key=lambda r: (-Decimal(r["cost_usd"]), str(r[group])))
        movers = queries.top_movers(rows_now, rows_before, group) if group != "day" else []
        unpriced = [m for m in split["models"] if m["unpriced_calls"]]
        args = filter_args(request, s)
        csv_args = {**args, "group_by": group, "end": f.end.isoformat()}
        # the request-cost panel's feed (loaded by the page's script, like the chart): pinned when the page is
        req_args = {**args, **({"end": f.end.isoformat()} if request.query_params.get("end") else {})}
        calls = int(body["events"])
        return render(request, s, "spend.html", "spend", body=body, rows=rows[:TABLE_MAX], n_rows=len(rows),
                      group=group, groups=SPEND_GROUPS, by=by, movers=movers, budgets=budgets,
                      forecast=forecast, split=split, unpriced=unpriced, users=users, req_args=req_args, args=args, csv_args=csv_args,
                      ranges=list(queries.RANGES), f=f,
                      avg_cost=(Decimal(body["total_usd"]) / calls) if calls else None,
                      dims=[d for d in queries.FILTERS if not (d == "tenant_id" and s.principal.tenant_id)])

    def month_forecast(f: queries.Filters, month_rows: list[dict[str, Any]]) -> dict[str, Any]:
        """``GET /v1/spend/forecast``'s answer for the month of ``f.end``, from the same exact
        daily spend the page shows (tenant x day over the month so far, tenant scope only; the
        forecast itself is the pure ``forecast`` core)."""
        daily: dict[str, dict[date, Decimal]] = {}
        for r in month_rows:
            daily.setdefault(r["tenant_id"], {})[date.fromisoformat(r["day"])] = Decimal(r["cost_usd"])
        out = []
        for name in sorted(daily):
            fc = forecast_spend(daily[name], period=Period.MONTHLY, now=f.end, confidence=0.9)
            out.append({"tenant_id": name, "spent_usd": fc.spent_to_date, "forecast_usd": fc.forecast,
                        "low_usd": fc.low, "high_usd": fc.high, "days_observed": fc.days_observed, "method": fc.method})
        return {"confidence": 0.9, "forecasts": out}

    def cache_saving(at: datetime) -> Callable[[str, str, int], Decimal]:
        book = deps.prices()

        def saving(provider: str, model: str, tokens: int) -> Decimal:
            entry = book.lookup(provider, model, at) if tokens else None
            if entry is None or entry.rates.cache_read is None:
                return Decimal(0)
            return (entry.rates.input - entry.rates.cache_read) * tokens
        return saving

    @app.get("/ui/spend.csv", include_in_schema=False)
    @page("spend")
    async def spend_csv(request: Request, s: Session, api: Api) -> Response:
        f = filters(request, s)
        group = request.query_params.get("group_by", "tenant_id")
        groups = [g for g in group.split(",") if g]
        text = queries.spend_csv(await q_sync(queries.spend_rows, f, groups), groups)
        name = f"flyball-spend-{group}-{f.start:%Y%m%dT%H%M}-{f.end:%Y%m%dT%H%M}.csv"
        return Response(text, media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/ui/versions", include_in_schema=False)
    @page("versions")
    async def versions_page(request: Request, s: Session, api: Api) -> Response:
        """The release comparison: ``GET /v1/versions`` itself (its query, roles and tenant
        binding), grouped per feature and dimension for the page."""
        qp = request.query_params
        chosen = {n: (qp.get(n) or "").strip() or None for n in ("feature", "dimension", "tenant_id")}
        if chosen["dimension"] is not None and chosen["dimension"] not in VERSION_DIMENSIONS:
            raise ValueError(f"dimension: one of {', '.join(VERSION_DIMENSIONS)}")
        scope = {"tenant_id": chosen["tenant_id"]} if chosen["tenant_id"] else None
        everything, body = await asyncio.gather(
            api.get("/v1/versions", scope), api.get("/v1/versions", {k: v for k, v in chosen.items() if v}))
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for v in body["versions"]:
            groups.setdefault((v["feature"], v["dimension"]), []).append(v)
        features = sorted({str(v["feature"]) for v in everything["versions"]}
                          | ({chosen["feature"]} if chosen["feature"] else set()))
        return render(request, s, "versions.html", "versions", body=body, groups=groups, features=features,
                      dimensions=VERSION_DIMENSIONS, chosen=chosen, ago=lambda v: _ago(v, now_dt()))

    @app.get("/ui/requests", include_in_schema=False)
    @page("requests")
    async def request_page(request: Request, s: Session, api: Api) -> Response:
        ident = (request.query_params.get("id") or "").strip()[:200]
        chain: dict[str, Any] | None = None
        if ident:
            chain = await api.get(f"/v1/requests/{ident}")
        return render(request, s, "request.html", "requests", ident=ident, chain=chain,
                      bars=_waterfall(chain["events"]) if chain else [])

    # ------------------------------------------------------------------ chart feeds (JSON)
    def feed(name: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
        def wrap(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
            async def handler(request: Request) -> Response:
                s = session_of(request)
                if s is None:
                    return Response(b'{"detail":"log in first"}', 401, media_type="application/json")
                if name and not allowed(s.principal, name):
                    return Response(b'{"detail":"role may not see this"}', 403, media_type="application/json")
                try:
                    return await fn(request, s, Api(client, s.key))
                except ConsoleError as exc:
                    return Response(orjson.dumps({"detail": exc.message}), exc.status, media_type="application/json")
                except ValueError as exc:
                    return Response(orjson.dumps({"detail": str(exc)[:300]}), 422, media_type="application/json")
            handler.__name__ = fn.__name__
            return handler
        return wrap

    def as_json(value: Any) -> Response:
        return Response(queries.dumps(value), media_type="application/json")

    @app.get("/ui/data/health", include_in_schema=False)
    @feed("health")
    async def health_data(request: Request, s: Session, api: Api) -> Response:
        f = filters(request, s)
        data = await q_sync(queries.health, f)
        data["markers"] = await q_sync(queries.markers, f)
        return as_json(data)

    @app.get("/ui/data/spend", include_in_schema=False)
    @feed("spend")
    async def spend_data(request: Request, s: Session, api: Api) -> Response:
        f = filters(request, s)
        data = await q_sync(queries.spend_series, f, request.query_params.get("by", "model"))
        data["markers"] = await q_sync(queries.markers, f)
        return as_json(data)

    @app.get("/ui/data/request-costs", include_in_schema=False)
    @feed("spend")
    async def request_costs_data(request: Request, s: Session, api: Api) -> Response:
        """p95 cost per request and per request chain for the Spend page (tenant scope only)."""
        return as_json(await q_sync(queries.request_costs, filters(request, s)))

    @app.get("/ui/data/alerts/{alert_id}", include_in_schema=False)
    @feed("incidents")
    async def alert_data(request: Request, s: Session, api: Api) -> Response:
        rows = await q("SELECT body FROM alerts FINAL WHERE alert_id = {id:String} LIMIT 1",
                       {"id": request.path_params["alert_id"]})
        alert = Alert.model_validate_json(rows[0][0]) if rows else None
        if alert is None or (s.principal.tenant_id is not None and alert.scope.tenant_id != s.principal.tenant_id):
            raise ConsoleError(404, "no alert with this id")
        data = await q_sync(queries.alert_series, alert.scope.model_dump(), alert.metric,
                            alert.opened_at or alert.first_seen, alert.last_seen, alert.window_s)
        data["baseline"], data["threshold"] = _num(alert.baseline), _num(alert.threshold)
        data["per_window"] = alert.window_s
        return as_json(data)

    versions = live.LiveVersions(q)

    @app.get("/ui/live", include_in_schema=False)
    async def live_stream(request: Request) -> Response:
        """Server-sent events: which live part of the pages changed (same session, roles and
        tenant scope as the pages; the page polls instead when this answers an error)."""
        s = session_of(request)
        if s is None:
            return Response(b'{"detail":"log in first"}', 401, media_type="application/json")
        if not nav(s.principal):
            return Response(b'{"detail":"role may not see this"}', 403, media_type="application/json")
        if deps.store is None:
            return Response(b'{"detail":"no ClickHouse store in this process"}', 503, media_type="application/json")
        if versions.streams >= live.MAX_STREAMS:
            return Response(b'{"detail":"too many live streams: polling"}', 503, media_type="application/json")
        sid = s.sid

        def alive() -> bool:
            return session_of_sid(sid) is not None

        body = live.stream(versions, s.principal.tenant_id, alive=alive)
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/ui/data/suggest", include_in_schema=False)
    @feed("")
    async def suggest(request: Request, s: Session, api: Api) -> Response:
        column = request.query_params.get("column", "")
        if column == "tenant_id" and s.principal.tenant_id is not None:
            return as_json([s.principal.tenant_id])
        prefix = request.query_params.get("prefix", "")[:100]
        return as_json(await q_sync(queries.suggestions, column, s.principal.tenant_id, prefix))

    return sessions


class _Token:
    """A bare token compared like a session's CSRF token (the login form has no session yet)."""

    def __init__(self, csrf: str) -> None:
        self.csrf = csrf


def _cookie(response: Response, request: Request, name: str, value: str, *, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/ui", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def _safe_next(target: str | None) -> str:
    """Only a path inside the console: never another site (open redirect)."""
    if not target or not target.startswith("/ui") or target.startswith("//") or "\\" in target:
        return "/ui"
    return target


def _with(path: str, **params: str) -> str:
    base = path.split("?", 1)[0]
    return f"{base}?{urlencode(params)}"


def _when(text: str | None, name: str) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text[:40])
    except ValueError:
        raise ValueError(f"{name}: an ISO 8601 time with a UTC offset") from None
    if value.tzinfo is None:
        raise ValueError(f"{name}: needs a UTC offset (e.g. 2026-03-01T00:00:00+00:00)")
    return value.astimezone(UTC)


def _int(value: Any, default: int) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def _num(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _with_ttl(directives: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    out = []
    for d in directives:
        left = (datetime.fromisoformat(d["expires_at"]) - now).total_seconds()
        out.append({**d, "ttl_left": "pinned" if d.get("pinned") else (_duration(left) if left > 0 else "expired")})
    return out


def _waterfall(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bars for the request page: each event ends at its ``ts`` and lasts its ``latency_ms``
    (percent of the chain's span, for an SVG drawn server side; no inline style)."""
    if not events:
        return []
    spans = []
    for e in events:
        end = datetime.fromisoformat(e["ts"]).timestamp() * 1000
        spans.append((end - float(e["latency_ms"] or 0), end, e))
    t0 = min(a for a, _, _ in spans)
    t1 = max(b for _, b, _ in spans)
    width = max(t1 - t0, 1.0)
    return [{"x": round(100 * (a - t0) / width, 3), "w": round(max(100 * (b - a) / width, 0.4), 3),
             "start_ms": round(a - t0, 1), "e": e} for a, b, e in spans]
