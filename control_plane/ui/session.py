"""Console sessions: a random id in an HttpOnly, SameSite=Strict cookie, the state on the server.

A session holds the principal its API key resolved to, a CSRF token (sent back in every form
and ``X-CSRF-Token`` header and compared in constant time), and the key itself, in memory only,
so that the console's actions go through the same API routes, with the same role and tenant
checks, audit actor and rate limit, as a ``curl`` with that key. The cookie never carries the
key; a restart of the process ends every session. Pure: time is a parameter.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

from ..auth import Principal

COOKIE = "flyball_session"
IDLE_S = 8 * 3600.0
MAX_SESSIONS = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    csrf: str
    principal: Principal
    key: str
    created: float
    seen: float


@dataclass
class Sessions:
    idle_s: float = IDLE_S
    max_sessions: int = MAX_SESSIONS
    _by_id: dict[str, Session] = field(default_factory=dict)

    def open(self, principal: Principal, key: str, *, now: float) -> Session:
        self._expire(now)
        while len(self._by_id) >= self.max_sessions:  # the oldest goes first
            self._by_id.pop(next(iter(self._by_id)))
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), principal, key, now, now)
        self._by_id[s.sid] = s
        return s

    def get(self, sid: str | None, *, now: float) -> Session | None:
        if not sid:
            return None
        s = self._by_id.get(sid)
        if s is None:
            return None
        if now - s.seen > self.idle_s:
            self._by_id.pop(sid, None)
            return None
        fresh = Session(s.sid, s.csrf, s.principal, s.key, s.created, now)
        self._by_id[sid] = fresh
        return fresh

    def close(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def revoke_key(self, key_id: str) -> None:
        """End every session opened with a key that was revoked."""
        for sid in [sid for sid, s in self._by_id.items() if s.principal.key_id == key_id]:
            self._by_id.pop(sid, None)

    def _expire(self, now: float) -> None:
        for sid in [sid for sid, s in self._by_id.items() if now - s.seen > self.idle_s]:
            self._by_id.pop(sid, None)


def csrf_ok(session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf.encode(), (token or "").encode())
