"""Server-sent events for the console's live parts: a page holds one ``EventSource`` on
``/ui/live`` and re-renders its live regions (alerts, directives, charts) when told that
something it shows changed, instead of polling every few seconds.

What changed is found by a cheap version of each part per tenant scope: the alerts' count and
newest record time, the audit log's (directives issued, reverted, expired, approved...) and the
time up to which the charts' rollups are complete. Streams of the same scope share one lookup a
second (``LiveVersions``), so a hundred open tabs cost one set of small queries. A stream names
what changed (``alerts``, ``directives``, ``data``) and nothing else: no ids, no names, so it
carries nothing a page of the same session could not show. The page's script falls back to
polling when the stream cannot be opened (``docs/CONSOLE.md``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Query = Callable[[str, dict[str, Any]], Awaitable[list[tuple[Any, ...]]]]

PARTS = ("alerts", "directives", "data")
MAX_STREAMS = 200  # open streams per process; beyond, 503 and the page polls instead


@dataclass
class LiveVersions:
    """The current version of each live part, per tenant scope, looked up at most once per
    ``ttl_s`` whatever the number of streams asking."""

    query: Query
    ttl_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    streams: int = 0
    _cache: dict[str | None, tuple[float, dict[str, str]]] = field(default_factory=dict)
    _locks: dict[str | None, asyncio.Lock] = field(default_factory=dict)

    async def current(self, tenant: str | None) -> dict[str, str]:
        lock = self._locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            cached = self._cache.get(tenant)
            if cached is not None and self.clock() - cached[0] < self.ttl_s:
                return cached[1]
            versions = await self._lookup(tenant)
            self._cache[tenant] = (self.clock(), versions)
            return versions

    async def _lookup(self, tenant: str | None) -> dict[str, str]:
        params: dict[str, Any] = {}
        alerts_where = actions_where = ""
        if tenant is not None:
            params["t"] = tenant
            alerts_where = " WHERE JSONExtractString(scope, 'tenant_id') = {t:String}"
            actions_where = " WHERE tenant_id = {t:String}"
        alerts = await self.query(f"SELECT count(), toString(max(recorded_at)) FROM alerts{alerts_where}", params)
        actions = await self.query(f"SELECT count(), toString(max(at)) FROM actions{actions_where}", params)
        data = await self.query("SELECT toString(max(complete_since)) FROM console_rollup_mark", {})
        return {"alerts": _text(alerts), "directives": _text(actions), "data": _text(data)}


def _text(rows: list[tuple[Any, ...]]) -> str:
    return "/".join(str(v) for v in rows[0]) if rows else ""


async def stream(versions: LiveVersions, tenant: str | None, *, alive: Callable[[], bool],
                 interval_s: float = 1.0, heartbeat_s: float = 15.0, lifetime_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> AsyncIterator[bytes]:
    """The event stream of one page: ``event: <part>`` when a part's version changes, a
    ``tick`` every ``heartbeat_s`` (keeps proxies from closing the stream; the page refreshes
    its time-left counters on it), and an end after ``lifetime_s`` or as soon as ``alive()``
    says the session is gone (the browser reconnects by itself after ``retry``)."""
    versions.streams += 1
    try:
        yield b"retry: 2000\n\n"
        last = await versions.current(tenant)
        yield b"event: hello\ndata: {}\n\n"
        started = beat = clock()
        while alive() and clock() - started < lifetime_s:
            await asyncio.sleep(interval_s)
            now = await versions.current(tenant)
            changed = [p for p in PARTS if now.get(p) != last.get(p)]
            last = now
            for part in changed:
                yield f"event: {part}\ndata: {{}}\n\n".encode()
            if clock() - beat >= heartbeat_s:
                beat = clock()
                yield b"event: tick\ndata: {}\n\n"
    finally:
        versions.streams -= 1
