"""The HTTP API (FastAPI): wiring only. Routes live in ``api/``, one module per audience;
they check the key and call a store or the control loop.

Every route but ``/healthz`` needs ``Authorization: Bearer <key>``. A tenant-bound key sees
only its tenant; asking for another tenant is refused without naming anything about it.
"""

# no ``from __future__ import annotations`` here: FastAPI reads the routes' annotations, which
# name objects local to create_app
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import generate_latest

from .api import admin, finance, kpis, openapi, otlp, requests, slos, sre, versions
from .api.deps import Auth, Deps
from .api.limits import DEFAULT_MAX_BODY, BodyLimit
from .auth import Principal
from .errors import InvalidInput, NotFound, PermanentError, TemporaryError, Unavailable
from .metrics import registry_of

__all__ = ["Deps", "create_app"]


def create_app(deps: Deps, *, console: bool = True) -> FastAPI:
    app = FastAPI(title="flyball", version="0.1.0",
                  description="Telemetry and control plane for LLM calls: spend, alerts, directives, audit.")
    auth = Auth(deps.keys, deps.limiter, read_limiter=deps.read_limiter)
    # a price catalog upload is the one large document (its entry count is capped by the route)
    app.add_middleware(BodyLimit, max_bytes=DEFAULT_MAX_BODY,
                       by_prefix={"/v1/prices": 16 * DEFAULT_MAX_BODY, "/v1/traces": 8 * DEFAULT_MAX_BODY})
    registry = registry_of(deps.stats)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"] if p not in ("query", "body", "path")),
                   "message": e["msg"]} for e in exc.errors()]
        fields = ", ".join(e["field"] for e in errors)
        return JSONResponse(status_code=422, content={"detail": f"invalid request: {fields}", "errors": errors})

    def _problem(message: str) -> JSONResponse:
        """A 422 in the documented shape: ``detail`` and ``errors`` naming the field (the text
        before the colon of a ``field: why`` message)."""
        head, sep, _ = message.partition(":")
        field = head.strip() if sep and " " not in head.strip() else ""
        return JSONResponse(status_code=422, content={"detail": message, "field": field,
                                                      "errors": [{"field": field, "message": message}]})

    @app.exception_handler(InvalidInput)
    async def _invalid(_: Request, exc: InvalidInput) -> JSONResponse:
        return _problem(str(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 422 and isinstance(exc.detail, str):  # a route's own 422: the same shape
            return _problem(exc.detail)
        return await http_exception_handler(request, exc)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(Unavailable)
    async def _unavailable(_: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.exception_handler(TemporaryError)
    async def _temporary(_: Request, exc: TemporaryError) -> JSONResponse:
        retry = max(1, round(exc.retry_after or 1))
        return JSONResponse(status_code=503, headers={"Retry-After": str(retry)},
                            content={"detail": f"temporarily unavailable: {exc}"[:500]})

    @app.exception_handler(PermanentError)
    async def _permanent(_: Request, exc: PermanentError) -> JSONResponse:
        return JSONResponse(status_code=500, content={"detail": f"the store refused the request: {exc}"[:500]})

    @app.get("/healthz", responses={503: {"description": "a part of this process has died"}})
    async def healthz() -> JSONResponse:
        """Liveness: 503 once a supervised task (ingest, control loop, rollups, ...) has died;
        the process then exits non-zero for its orchestrator to restart it."""
        dead = sorted(name for name, alive in deps.parts().items() if not alive)
        body: dict[str, Any] = {"status": "failing" if dead else "ok", **deps.ready()}
        if dead:
            body["dead"] = dead
        return JSONResponse(status_code=503 if dead else 200, content=body)

    @app.get("/readyz", responses={503: {"description": "a part is starting, not working, or dead"}})
    async def readyz() -> JSONResponse:
        """Readiness: 200 only while every part of this process is running and ready (the
        worker has partitions and polls; the control loop follows the alerts)."""
        ready = deps.ready()
        dead = sorted(name for name, alive in deps.parts().items() if not alive)
        waiting = sorted(name for name, ok in ready.items() if not ok)
        ok = not dead and not waiting
        body: dict[str, Any] = {"status": "ready" if ok else "not ready", **ready}
        if dead:
            body["dead"] = dead
        return JSONResponse(status_code=200 if ok else 503, content=body)

    @app.get("/metrics")
    async def metrics(_: Annotated[Principal, Depends(auth.any_key(global_only=True))]) -> Response:
        """Process-wide counters: any role, but not a tenant-bound key (they span tenants)."""
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    for module in (finance, sre, admin, otlp, slos, kpis, requests, versions):
        module.register(app, deps, auth)
    if console:
        from .ui.console import register as register_console

        register_console(app, deps, auth)
    openapi.install(app)
    return app
