"""API keys and roles. Keys are stored hashed (SHA-256); the plaintext is shown once.

Roles: ``service`` reads directives; ``sre`` alerts, directives, actions, overrides;
``finance`` spend (and later budgets); ``admin`` everything. A key may be bound to one tenant
and then sees only that tenant's data.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    SERVICE = "service"
    SRE = "sre"
    FINANCE = "finance"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    role: Role
    tenant_id: str | None = None
    name: str = ""

    def may(self, *roles: Role) -> bool:
        return self.role == Role.ADMIN or self.role in roles


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "fb_" + secrets.token_urlsafe(32)


class KeyRing:
    """Hashed keys in memory (persisted by the caller if it wants)."""

    def __init__(self) -> None:
        self._by_hash: dict[str, Principal] = {}

    def add(self, key: str, principal: Principal) -> None:
        self._by_hash[hash_key(key)] = principal

    def create(self, role: Role, *, tenant_id: str | None = None, name: str = "") -> tuple[str, Principal]:
        key = new_key()
        principal = Principal(key_id=hash_key(key)[:12], role=role, tenant_id=tenant_id, name=name)
        self.add(key, principal)
        return key, principal

    def lookup(self, key: str) -> Principal | None:
        return self._by_hash.get(hash_key(key))
