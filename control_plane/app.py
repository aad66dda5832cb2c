"""The HTTP API (FastAPI): wiring only. Routes live in ``api/``, one module per audience;
they check the key and call a store or the control loop.

Every route but ``/healthz`` needs ``Authorization: Bearer <key>``. A tenant-bound key sees
only its tenant; asking for another tenant is refused without naming anything about it.
"""

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import generate_latest

from .api import admin, finance, kpis, openapi, otlp, requests, slos, sre
from .api.deps import Auth, Deps
from .api.limits import DEFAULT_MAX_BODY, BodyLimit
from .auth import Principal
from .metrics import registry_of

__all__ = ["Deps", "create_app"]


def create_app(deps: Deps, *, console: bool = True) -> FastAPI:
    app = FastAPI(title="flyball", version="0.1.0",
                  description="Telemetry and control plane for LLM calls: spend, alerts, directives, audit.")
    auth = Auth(deps.keys, deps.limiter)
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

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", **deps.ready()}

    @app.get("/metrics")
    async def metrics(_: Annotated[Principal, Depends(auth.any_key(global_only=True))]) -> Response:
        """Process-wide counters: any role, but not a tenant-bound key (they span tenants)."""
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    for module in (finance, sre, admin, otlp, slos, kpis, requests):
        module.register(app, deps, auth)
    if console:
        from .ui.console import register as register_console

        register_console(app, deps, auth)
    openapi.install(app)
    return app
