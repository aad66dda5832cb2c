"""Admin routes: API keys (stored hashed; the plaintext is returned once), policy changes
(versioned and audited), and the webhook delivery log."""

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field

from ..auth import LastAdminKey, Principal, Role
from ..policy_file import dump_policies, load_policies
from .deps import Auth, Deps, actor


class KeyRequest(BaseModel):
    role: Role
    tenant_id: str | None = Field(default=None, min_length=1)
    name: str = Field(default="", max_length=200)


def _key_view(record: Any) -> dict[str, Any]:
    p = record.principal
    return {"key_id": p.key_id, "role": str(p.role), "tenant_id": p.tenant_id, "name": p.name,
            "created_by": record.created_by,
            "created_at": record.created_at.isoformat() if record.created_at else None}


def register(app: FastAPI, deps: Deps, auth: Auth) -> None:
    admin = auth.require(Role.ADMIN, global_only=True)

    def now() -> datetime:
        return deps.control.clock() if deps.control else datetime.now(UTC)

    @app.post("/v1/keys", status_code=201, tags=["admin"])
    async def create_key(body: KeyRequest, p: Annotated[Principal, Depends(admin)]) -> dict[str, Any]:
        """A new key; the plaintext is in this answer only (the server keeps its SHA-256)."""
        key, record = deps.keys.issue(body.role, tenant_id=body.tenant_id, name=body.name, created_by=actor(p),
                                      now=now())
        if deps.store is not None:
            await deps.persisted().save_key(record, now=now())
        return {"key": key, **_key_view(record)}

    @app.get("/v1/keys", tags=["admin"])
    async def list_keys(_: Annotated[Principal, Depends(admin)]) -> list[dict[str, Any]]:
        return [_key_view(r) for r in sorted(deps.keys.records(), key=lambda r: r.principal.key_id)]

    @app.delete("/v1/keys/{key_id}", tags=["admin"])
    async def revoke_key(key_id: str, _: Annotated[Principal, Depends(admin)]) -> dict[str, Any]:
        try:
            record = deps.keys.revoke(key_id, now=now())
        except LastAdminKey:
            raise HTTPException(409, "key_id: the last admin key cannot be revoked; create another admin key first") \
                from None
        if record is None:
            raise HTTPException(404, "no key with this id")
        if deps.store is not None:
            await deps.persisted().save_key(record, now=now())
        return {"revoked": key_id}

    @app.put("/v1/policies", tags=["admin"])
    async def put_policies(request: Request, p: Annotated[Principal, Depends(admin)]) -> dict[str, Any]:
        """Replace the policies in force with a YAML or JSON document (the policies file
        format). Changed policies get a new version; the change is audited."""
        text = (await request.body()).decode("utf-8", errors="replace")
        # parsed in a thread: a large document must not stall the event loop; a PolicyError is
        # answered 422 by the app's handler
        new = await asyncio.to_thread(load_policies, text)
        if deps.set_policies is None:
            raise HTTPException(503, "policies cannot be changed in this process")
        return dump_policies(await deps.set_policies(new, actor(p), text))

    @app.get("/v1/policies/versions", tags=["admin"])
    async def policy_versions(_: Annotated[Principal, Depends(auth.require(Role.ADMIN))],
                              limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
        return [{"version": v.version, "at": v.at.isoformat(), "actor": v.actor, "source": v.source,
                 "sha256": v.sha256} for v in await deps.persisted().policy_versions(limit)]

    @app.get("/v1/webhooks/deliveries", tags=["sre"])
    async def deliveries(_: Annotated[Principal, Depends(auth.require(Role.SRE, global_only=True))],
                         dedupe_key: str | None = None,
                         limit: Annotated[int, Query(ge=1, le=5000)] = 200) -> list[dict[str, Any]]:
        """The webhook delivery log: one row per attempt, newest first."""
        return await deps.persisted().deliveries(limit=limit, dedupe_key=dedupe_key)
