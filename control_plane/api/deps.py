"""What the routes depend on, and the API-key checks they share.

No `from __future__ import annotations` in the route modules: FastAPI must resolve their
signatures, which refer to dependencies built at run time.
"""

import functools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError

from flyball.stream_processors.ports import ControlStore

from ..auth import KeyRing, Principal, RateLimiter, Role
from ..errors import Unavailable
from ..finance import Finance
from ..directives import ControlLoop
from ..policy import Policies
from ..state import AlertMarks, ControlState

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_RATE_PER_MIN, READ_BURST = 3_000.0, 600  # the defaults of settings.read_rate_per_min / read_burst
T = TypeVar("T")


@dataclass
class Deps:
    store: ControlStore | None  # ClickHouse behind its thread (None: this process has no store)
    control: ControlLoop | None
    keys: KeyRing
    policies: Callable[[], Policies]
    prices: Callable[[], Any]
    stats: dict[str, Callable[[], float]] = field(default_factory=dict)
    ready: Callable[[], dict[str, bool]] = dict  # readiness of each part this process runs
    parts: Callable[[], dict[str, bool]] = dict  # each supervised task: alive?
    state: ControlState | None = None  # persisted keys, policy versions, alert marks, deliveries
    marks: AlertMarks = field(default_factory=AlertMarks)
    limiter: RateLimiter = field(default_factory=RateLimiter)  # writes, per key
    # reads, per key: higher (a fleet of shims polls directives with one service key), still bounded
    read_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(per_minute=READ_RATE_PER_MIN,
                                                                          burst=READ_BURST))
    # (new policies, actor, source text) -> the policies now in force (versioned, audited)
    set_policies: Callable[[Policies, str, str], Awaitable[Policies]] | None = None
    finance: Finance | None = None  # price changes, budgets, reprice (None: built from the store)
    otlp: Any = None  # control_plane.receiver.OtlpReceiver: POST /v1/traces (None: 503)
    slos: Any = None  # control_plane.slo_live.SLORegistry (None: built from store with the shipped SLOs)

    def the_store(self) -> ControlStore:
        if self.store is None:
            raise Unavailable("no ClickHouse store in this process")
        return self.store

    async def query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        store = self.the_store()
        return await store.run(store.query, sql, params)

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(store.query, *args, **kwargs)`` on the store's ClickHouse thread (the reads of
        :mod:`control_plane.queries`)."""
        store = self.the_store()
        return await store.run(functools.partial(fn, store.query, *args, **kwargs))

    def persisted(self) -> ControlState:
        if self.state is None:
            self.state = ControlState(self.the_store())
        return self.state


class Auth:
    """``Depends(auth.require(Role.SRE))`` in a route: 401 without a known key, 403 for a role
    that may not use the route (or a tenant-bound key on a global route), 429 when a key
    exceeds its write rate or its (higher) read rate. Each check carries ``roles`` and ``global_only`` so tests can
    enumerate what every route requires."""

    def __init__(self, keys: KeyRing, limiter: RateLimiter | None = None,
                 clock: Callable[[], float] = time.monotonic, read_limiter: RateLimiter | None = None) -> None:
        self.keys = keys
        self.limiter = limiter or RateLimiter()
        self.read_limiter = read_limiter or RateLimiter(per_minute=READ_RATE_PER_MIN, burst=READ_BURST)
        self.clock = clock

    def principal(self, request: Request) -> Principal:
        found = self.identify(request)
        reading = request.method in READ_METHODS
        wait = (self.read_limiter if reading else self.limiter).take(found.key_id, now=self.clock())
        if wait is not None:
            kind = "read" if reading else "write"
            raise HTTPException(429, f"{kind} rate limit for this key exceeded; retry in {math.ceil(wait)}s",
                                headers={"Retry-After": str(max(1, math.ceil(wait)))})
        return found

    def identify(self, request: Request) -> Principal:
        """The key's principal, without the write rate limit (telemetry ingest is bounded by
        its body cap, not by a per-key request rate)."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "missing API key: send Authorization: Bearer <key>",
                                headers={"WWW-Authenticate": "Bearer"})
        found = self.keys.lookup(token.strip())
        if found is None:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        return found

    def any_key(self, *, global_only: bool = False) -> Callable[..., Principal]:
        def check(p: Annotated[Principal, Depends(self.principal)]) -> Principal:
            if global_only and p.tenant_id is not None:
                raise HTTPException(403, "a tenant-bound key may not read global data")
            return p

        check.roles = tuple(Role)  # type: ignore[attr-defined]
        check.global_only = global_only  # type: ignore[attr-defined]
        return check

    def require(self, *roles: Role, global_only: bool = False, rate_limited: bool = True) -> Callable[..., Principal]:
        principal = self.principal if rate_limited else self.identify

        def check(p: Annotated[Principal, Depends(principal)]) -> Principal:
            if not p.may(*roles):
                raise HTTPException(403, f"role {p.role} may not use this route")
            if global_only and p.tenant_id is not None:
                raise HTTPException(403, "a tenant-bound key may not change global settings")
            return p

        check.roles = tuple({Role.ADMIN, *roles})  # type: ignore[attr-defined]
        check.global_only = global_only  # type: ignore[attr-defined]
        return check


def tenant_scope(p: Principal, tenant_id: str | None) -> str | None:
    """The tenant a request may see: its key's binding wins; another tenant is refused
    without echoing its name."""
    if p.tenant_id is None:
        return tenant_id
    if tenant_id is not None and tenant_id != p.tenant_id:
        raise HTTPException(403, "this key is bound to a different tenant")
    return p.tenant_id


def aware(value: datetime, name: str) -> datetime:
    """A time a request gave, in UTC; one without a UTC offset is refused (422 naming ``name``)."""
    if value.tzinfo is None:
        raise HTTPException(422, f"{name}: needs a UTC offset (e.g. 2026-03-01T00:00:00Z)")
    return value.astimezone(UTC)


def as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def ordered(start: datetime | None, end: datetime | None) -> None:
    """An inverted time range is a mistake to report (422 naming ``to``), not an empty answer."""
    if start is not None and end is not None and as_utc(end) <= as_utc(start):
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "to"),
                                       "msg": "must be after from", "input": end.isoformat()}])


def actor(p: Principal) -> str:
    return f"key:{p.key_id}" + (f"({p.name})" if p.name else "")


def dec_text(value: Any) -> str:
    """Exact decimal text: no exponent, no float, no trailing zeros."""
    if value is None:
        return "0"
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"
