"""What the routes depend on, and the API-key checks they share.

No `from __future__ import annotations` in the route modules: FastAPI must resolve their
signatures, which refer to dependencies built at run time.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from ..auth import KeyRing, Principal, Role
from ..directives import ControlLoop
from ..policy import Policies


@dataclass
class Deps:
    store: Any  # ClickHouseStore-like: run(fn, *args), query(sql, params)
    control: ControlLoop | None
    keys: KeyRing
    policies: Callable[[], Policies]
    prices: Callable[[], Any]
    stats: dict[str, Callable[[], float]] = field(default_factory=dict)
    ready: Callable[[], dict[str, bool]] = lambda: {}

    async def query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return await self.store.run(self.store.query, sql, params)


class Auth:
    """``Depends(auth.require(Role.SRE))`` in a route: 401 without a known key, 403 for a
    role that may not use the route."""

    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys

    def principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "missing API key: send Authorization: Bearer <key>",
                                headers={"WWW-Authenticate": "Bearer"})
        found = self.keys.lookup(token.strip())
        if found is None:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        return found

    def any_key(self) -> Callable[..., Principal]:
        return self.principal

    def require(self, *roles: Role) -> Callable[..., Principal]:
        principal = self.principal

        def check(p: Annotated[Principal, Depends(principal)]) -> Principal:
            if not p.may(*roles):
                raise HTTPException(403, f"role {p.role} may not use this route")
            return p

        return check


def tenant_scope(p: Principal, tenant_id: str | None) -> str | None:
    """The tenant a request may see: its key's binding wins; another tenant is refused
    without echoing its name."""
    if p.tenant_id is None:
        return tenant_id
    if tenant_id is not None and tenant_id != p.tenant_id:
        raise HTTPException(403, "this key is bound to a different tenant")
    return p.tenant_id


def dec_text(value: Any) -> str:
    """Exact decimal text: no exponent, no float, no trailing zeros."""
    if value is None:
        return "0"
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"
