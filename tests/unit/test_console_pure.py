"""The console's pure parts: sessions (time is a parameter), CSRF comparison, redirects kept
inside the console, top movers, time buckets and rollup tiers, the request waterfall."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from flyball.control_plane.auth import Principal, Role
from flyball.control_plane.ui.console import _safe_next, _waterfall
from flyball.control_plane.ui.queries import Filters, top_movers
from flyball.control_plane.ui.session import Sessions, csrf_ok

P = Principal("k1", Role.SRE, tenant_id="acme")


def test_sessions_expire_when_idle_and_end_on_logout() -> None:
    s = Sessions(idle_s=60, max_sessions=2)
    a = s.open(P, "key-a", now=0)
    assert s.get(a.sid, now=59) is not None
    assert s.get(a.sid, now=118) is not None  # each use renews it
    assert s.get(a.sid, now=179) is None  # idle for more than 60 s
    b = s.open(P, "key-b", now=200)
    s.close(b.sid)
    assert s.get(b.sid, now=201) is None
    assert s.get("", now=0) is None and s.get("made-up", now=0) is None


def test_session_count_is_bounded_oldest_first() -> None:
    s = Sessions(idle_s=1e9, max_sessions=2)
    first, second, third = (s.open(P, "k", now=i) for i in range(3))
    assert s.get(first.sid, now=3) is None
    assert s.get(second.sid, now=3) is not None and s.get(third.sid, now=3) is not None


def test_csrf_token_must_match_exactly() -> None:
    sess = Sessions().open(P, "k", now=0)
    assert csrf_ok(sess, sess.csrf)
    assert not csrf_ok(sess, "") and not csrf_ok(sess, None) and not csrf_ok(sess, sess.csrf[:-1])


def test_redirects_stay_inside_the_console() -> None:
    assert _safe_next("/ui/alerts/1") == "/ui/alerts/1"
    for bad in ("https://evil.example/ui", "//evil.example", "/ui\\..\\x", "", None, "/v1/keys"):
        assert _safe_next(bad) == "/ui"


def test_top_movers_rank_by_absolute_change_and_mark_new() -> None:
    now = [{"t": "a", "cost_usd": "10"}, {"t": "b", "cost_usd": "1"}, {"t": "c", "cost_usd": "5"}]
    before = [{"t": "a", "cost_usd": "4"}, {"t": "b", "cost_usd": "9"}]
    moves = top_movers(now, before, "t", n=2)
    assert [m["name"] for m in moves] == ["b", "a"]  # -8 then +6
    assert moves[0]["delta_usd"] == Decimal(-8) and moves[1]["pct"] == Decimal("150.0")
    assert top_movers(now, before, "t")[2]["pct"] is None  # c is new: no percentage


def test_buckets_and_tiers_follow_the_range() -> None:
    end = datetime(2026, 3, 10, tzinfo=UTC)
    assert (Filters(range="1h", end=end).step_s, Filters(range="1h", end=end).table) == (60, "console_minute")
    assert (Filters(range="24h", end=end).step_s, Filters(range="24h", end=end).table) == (300, "console_minute")
    assert (Filters(range="7d", end=end).step_s, Filters(range="7d", end=end).table) == (3600, "console_hour")
    assert (Filters(range="30d", end=end).step_s, Filters(range="30d", end=end).table) == (86_400, "console_day")
    month = Filters(end=end, begin=end - timedelta(days=31))
    assert month.start == end - timedelta(days=31) and month.table == "console_day"


def test_waterfall_bars_end_at_each_event_and_last_its_latency() -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    events = [{"ts": (t0 + timedelta(milliseconds=100)).isoformat(), "latency_ms": 100.0},
              {"ts": (t0 + timedelta(milliseconds=1100)).isoformat(), "latency_ms": 900.0}]
    bars = _waterfall(events)
    assert [(b["x"], b["w"], b["start_ms"]) for b in bars] == [(0.0, 9.091, 0.0), (18.182, 81.818, 200.0)]
    assert _waterfall([]) == []


async def test_live_stream_names_what_changed_shares_lookups_and_ends_with_its_session() -> None:
    import asyncio
    from typing import Any

    from flyball.control_plane.ui.live import LiveVersions, stream

    state = {"alerts": 1, "actions": 1}
    asked: list[tuple[str, dict[str, Any]]] = []
    clock = [0.0]

    async def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        asked.append((sql, params))
        if "FROM alerts" in sql:
            return [(state["alerts"], "t")]
        if "FROM actions" in sql:
            return [(state["actions"], "t")]
        return [("mark",)]

    versions = LiveVersions(query, ttl_s=1.0, clock=lambda: clock[0])
    await asyncio.gather(*(versions.current("acme") for _ in range(5)))
    assert len(asked) == 3  # five streams, one lookup of the three parts
    assert all(p == {"t": "acme"} for sql, p in asked if "mark" not in sql and "rollup" not in sql)
    alive = [True]
    events = stream(versions, "acme", alive=lambda: alive[0], interval_s=0, heartbeat_s=1e9, clock=lambda: clock[0])
    assert await anext(events) == b"retry: 2000\n\n"
    assert await anext(events) == b"event: hello\ndata: {}\n\n"
    assert versions.streams == 1
    state["actions"] = 2  # a directive was issued
    clock[0] += 2
    assert await anext(events) == b"event: directives\ndata: {}\n\n"
    alive[0] = False  # logged out: the stream ends
    clock[0] += 2
    assert [e async for e in events] == []
    assert versions.streams == 0
