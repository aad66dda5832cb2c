"""API keys, roles, and the per-key write rate limit.

Keys are random 256-bit tokens, so a plain SHA-256 of the key is enough to store them (a slow
password hash buys nothing against a key that cannot be guessed); the plaintext is shown once,
when the key is created. The hashes are persisted in ClickHouse (``api_keys``) by the caller.

Roles: ``service`` reads directives only; ``sre`` alerts, directives, actions and overrides;
``finance`` spend and budgets; ``admin`` everything, including keys, policies and prices. A
key may be bound to one tenant and then sees only that tenant's data; a tenant-bound key may
not use routes that change global state (keys, policies, prices).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime
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


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What is stored about a key: never the key itself."""

    key_hash: str
    principal: Principal
    created_at: datetime | None = None
    created_by: str = ""
    revoked_at: datetime | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "fb_" + secrets.token_urlsafe(32)


class LastAdminKey(Exception):
    """The last global admin key cannot be revoked: create another admin key first."""


def _global_admin(record: KeyRecord) -> bool:
    return record.principal.role == Role.ADMIN and record.principal.tenant_id is None


class KeyRing:
    """Hashed keys in memory; the caller persists ``KeyRecord``s and loads them back."""

    def __init__(self) -> None:
        self._by_hash: dict[str, KeyRecord] = {}

    def add(self, key: str, principal: Principal) -> None:
        self.load(KeyRecord(key_hash=hash_key(key), principal=principal))

    def load(self, record: KeyRecord) -> None:
        if record.revoked_at is None:
            self._by_hash[record.key_hash] = record
        else:
            self._by_hash.pop(record.key_hash, None)

    def create(self, role: Role, *, tenant_id: str | None = None, name: str = "", created_by: str = "",
               now: datetime | None = None) -> tuple[str, Principal]:
        key, record = self.issue(role, tenant_id=tenant_id, name=name, created_by=created_by, now=now)
        return key, record.principal

    def issue(self, role: Role, *, tenant_id: str | None = None, name: str = "", created_by: str = "",
              now: datetime | None = None) -> tuple[str, KeyRecord]:
        key = new_key()
        digest = hash_key(key)
        record = KeyRecord(key_hash=digest, principal=Principal(key_id=digest[:12], role=role, tenant_id=tenant_id,
                                                                name=name),
                           created_at=now, created_by=created_by)
        self.load(record)
        return key, record

    def revoke(self, key_id: str, *, now: datetime) -> KeyRecord | None:
        """Revoke a key; :class:`LastAdminKey` if it is the last global admin key (revoking it
        would lock everyone out of key management until a restart)."""
        found = next((r for r in self._by_hash.values() if r.principal.key_id == key_id), None)
        if found is None:
            return None
        if _global_admin(found) and not any(_global_admin(r) and r is not found for r in self._by_hash.values()):
            raise LastAdminKey(key_id)
        revoked = KeyRecord(found.key_hash, found.principal, found.created_at, found.created_by, revoked_at=now)
        self.load(revoked)
        return revoked

    def records(self) -> list[KeyRecord]:
        return list(self._by_hash.values())

    def lookup(self, key: str) -> Principal | None:
        found = self._by_hash.get(hash_key(key))
        return found.principal if found else None


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass(slots=True)
class RateLimiter:
    """A token bucket per key: ``take(key, now)`` returns None, or the seconds to wait."""

    per_minute: float = 120.0
    burst: int = 30
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, key: str, *, now: float) -> float | None:
        rate = self.per_minute / 60.0
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(tokens=float(self.burst), updated=now)
        else:
            b.tokens = min(float(self.burst), b.tokens + (now - b.updated) * rate)
            b.updated = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return None
        return (1.0 - b.tokens) / rate if rate > 0 else 60.0
