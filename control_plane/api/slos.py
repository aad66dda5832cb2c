"""SLO routes: the objectives in force (``GET /v1/slos``), replacing them (``PUT /v1/slos``,
admin; versioned and audited like the policies) and their version history."""

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request

from ..auth import Principal, Role
from ..slo import EVERY, SHIPPED_SLOS_TEXT, SLOs, dump_slos, load_slos
from ..slo_live import SLORegistry
from .deps import Auth, Deps, actor


class RegistryHolder:
    """The process's SLO registry (the control plane's), or one built on the store and bootstrapped
    with the shipped SLOs the first time a route needs it (an API without a control loop)."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self._lock = asyncio.Lock()

    async def get(self) -> SLORegistry:
        if self.deps.slos is not None:
            return self.deps.slos  # type: ignore[no-any-return]
        async with self._lock:
            if self.deps.slos is None:
                registry = SLORegistry(self.deps.persisted(), SLOs(slos=()))
                await registry.bootstrap(SHIPPED_SLOS_TEXT, source="flyball built-in SLOs", now=datetime.now(UTC))
                self.deps.slos = registry
        return self.deps.slos  # type: ignore[no-any-return]


def register(app: FastAPI, deps: Deps, auth: Auth) -> None:
    holder = RegistryHolder(deps)
    app.state.slo_registry = holder  # the KPI routes read the same SLOs

    @app.get("/v1/slos", tags=["sre"])
    async def slos(p: Annotated[Principal, Depends(auth.require(Role.SRE, Role.FINANCE))]) -> dict[str, Any]:
        """The SLOs in force (``PUT /v1/slos`` as admin to change them). A key bound to a tenant
        sees those that apply to it: all tenants', every tenant's (``"*"``) and its own."""
        current = (await holder.get()).current
        if p.tenant_id is not None:
            current = dataclasses.replace(current, slos=tuple(s for s in current.slos
                                                               if s.tenant_id in (None, EVERY, p.tenant_id)))
        return dump_slos(current)

    @app.put("/v1/slos", tags=["admin"])
    async def put_slos(request: Request,
                       p: Annotated[Principal, Depends(auth.require(Role.ADMIN, global_only=True))]) -> dict[str, Any]:
        """Replace the SLOs in force with a YAML or JSON document (the SLO file format). Changed
        SLOs get a new version; the change is audited (decision ``slos_updated``)."""
        text = (await request.body()).decode("utf-8", errors="replace")
        try:
            new = load_slos(text)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        registry = await holder.get()
        return dump_slos(await registry.put(new, actor=actor(p), text=text, now=datetime.now(UTC)))

    @app.get("/v1/slos/versions", tags=["admin"])
    async def slo_versions(_: Annotated[Principal, Depends(auth.require(Role.ADMIN))],
                           limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
        return [{"version": v.version, "at": v.at.isoformat(), "actor": v.actor, "source": v.source,
                 "sha256": v.sha256} for v in await (await holder.get()).versions(limit)]
