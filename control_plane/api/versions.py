"""``GET /v1/versions[?feature=]``: each live version of a feature (prompt_version, model, config_version)
with its traffic share and, for a candidate, the release comparison's verdict and evidence.

SRE role. A tenant-bound key sees only its tenant's comparisons (they exist when the worker
compares per tenant, ``FLYBALL_RELEASES_PER_TENANT``); feature-wide ones mix tenants and are
not shown to it."""

from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query

from ..auth import Principal, Role
from ..versions import live_versions
from .deps import Auth, Deps, tenant_scope


def register(app: FastAPI, deps: Deps, auth: Auth) -> None:
    sre = auth.require(Role.SRE)

    @app.get("/v1/versions", tags=["sre"])
    async def versions(
        p: Annotated[Principal, Depends(sre)],
        feature: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        tenant_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        dimension: Literal["prompt_version", "model", "config_version"] | None = None,
    ) -> dict[str, Any]:
        """Live versions of ``feature`` (of every feature when omitted) side by side: calls and
        share of the dimension in the last hour of event time, role (candidate, incumbent),
        verdict against the incumbent (rollback, hold, promote) and per-metric evidence."""
        if deps.store is None:
            raise HTTPException(503, "no ClickHouse store in this process")
        tenant = tenant_scope(p, tenant_id)
        return await deps.store.run(live_versions, deps.store.query, feature, tenant, dimension)
