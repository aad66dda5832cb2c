"""Admin routes: API keys (stored hashed; the plaintext is returned once)."""

from typing import Annotated, Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel

from ..auth import Principal, Role
from .deps import Auth, Deps


class KeyRequest(BaseModel):
    role: Role
    tenant_id: str | None = None
    name: str = ""


def register(app: FastAPI, deps: Deps, auth: Auth) -> None:
    @app.post("/v1/keys", status_code=201, tags=["admin"])
    async def create_key(body: KeyRequest, _: Annotated[Principal, Depends(auth.require(Role.ADMIN))]) -> dict[str, Any]:
        key, who = deps.keys.create(body.role, tenant_id=body.tenant_id, name=body.name)
        return {"key": key, "key_id": who.key_id, "role": str(who.role), "tenant_id": who.tenant_id}
