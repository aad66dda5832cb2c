"""Unit tests for API keys and the per-key write rate limit (``flyball.control_plane.auth``)."""

from __future__ import annotations

from datetime import UTC, datetime

from flyball.control_plane.auth import KeyRing, RateLimiter, Role, hash_key

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_keys_are_stored_hashed_and_the_plaintext_is_returned_once() -> None:
    ring = KeyRing()
    key, record = ring.issue(Role.SRE, tenant_id="acme", now=NOW)
    assert record.key_hash == hash_key(key) and key not in repr(ring.records())
    assert ring.lookup(key) == record.principal and record.principal.tenant_id == "acme"


def test_a_revoked_key_stops_working() -> None:
    ring = KeyRing()
    key, record = ring.issue(Role.SRE, now=NOW)
    assert ring.revoke(record.principal.key_id, now=NOW) is not None
    assert ring.lookup(key) is None


def test_rate_limiter_allows_the_burst_then_says_how_long_to_wait() -> None:
    limiter = RateLimiter(per_minute=60, burst=3)
    assert [limiter.take("k", now=0.0) for _ in range(3)] == [None, None, None]
    wait = limiter.take("k", now=0.0)
    assert wait is not None and 0.9 < wait <= 1.0
    assert limiter.take("other", now=0.0) is None  # per key
    assert limiter.take("k", now=1.0) is None  # one token back after a second
