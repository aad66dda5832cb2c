"""The console over real HTTP and real chDB: sessions, CSRF and role checks, tenant binding,
the request-chain route, and the console's spend (rollup + raw events) equal to `/v1/spend`
to the last digit while rows are still arriving."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from flyball.control_plane.app import Deps, create_app
from flyball.control_plane.auth import KeyRing, RateLimiter, Role
from flyball.control_plane.migrations import ALL_MIGRATIONS
from flyball.control_plane.policy_file import DEFAULT_POLICIES
from flyball.control_plane.runtime import load_prices
from flyball.control_plane.ui import queries
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore
from tests.integration._helpers import serve_app

DAY0 = datetime(2026, 3, 1, tzinfo=UTC)
COLUMNS = ["event_id", "ts", "event_type", "tenant_id", "feature", "request_id", "trace_id", "provider", "model",
           "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
           "cache_write_1h_tokens", "latency_ms", "status", "cost_usd", "unpriced", "late", "service_tier"]


def event(tenant: str, ts: datetime, *, model: str = "gpt-4o-mini", cost: str | None = "0.000123456789",
          late: int = 0, event_id: str | None = None, request_id: str = "", event_type: str = "llm_call",
          feature: str = "chat") -> list[Any]:
    row: dict[str, Any] = {}
    row.update(event_id=event_id or str(uuid.uuid4()), ts=ts, event_type=event_type, tenant_id=tenant,
               feature=feature, request_id=request_id, trace_id="", provider="openai" if event_type == "llm_call" else "",
               model=model if event_type == "llm_call" else "", input_tokens=1000, output_tokens=200,
               cache_read_tokens=100, cache_write_tokens=0, reasoning_tokens=0, cache_write_1h_tokens=0,
               latency_ms=500.0, status="ok", cost_usd=Decimal(cost) if cost is not None else None,
               unpriced=1 if cost is None else 0, late=late, service_tier="")
    return [row[c] for c in COLUMNS]


def write(store: ClickHouseStore, rows: list[list[Any]]) -> None:
    """Only the columns set here: the others take their defaults (the table grows columns)."""
    store.call(store.insert, "events", rows, COLUMNS)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], ClickHouseStore]]:
    path: Path = tmp_path_factory.mktemp("ch")
    store = ClickHouseStore(f"chdb://{path}")
    store.migrate(ALL_MIGRATIONS)
    book = load_prices(None)
    keys = KeyRing()
    plain = {"sre": keys.create(Role.SRE)[0], "finance": keys.create(Role.FINANCE)[0],
             "service": keys.create(Role.SERVICE)[0], "acme": keys.create(Role.SRE, tenant_id="acme")[0],
             "admin": keys.create(Role.ADMIN)[0]}
    app = create_app(Deps(store=store, control=None, keys=keys, policies=lambda: DEFAULT_POLICIES,
                          prices=lambda: book, limiter=RateLimiter(per_minute=1e6, burst=10_000)))
    with serve_app(app) as url:
        yield url, plain, store
    store.close()


_clients: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Every console session a test opened is closed when the test ends (no leaked sockets)."""
    yield
    while _clients:
        _clients.pop().close()


def session(url: str, key: str) -> httpx.Client:
    c = httpx.Client(base_url=url, timeout=30, headers={"Sec-Fetch-Site": "same-origin"})
    _clients.append(c)
    token = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/login").text)
    assert token
    r = c.post("/ui/login", data={"csrf": token.group(1), "api_key": key, "next": "/ui"})
    assert r.status_code == 303, r.text
    return c


def test_login_cookie_csrf_and_roles(served: tuple[str, dict[str, str], ClickHouseStore]) -> None:
    url, keys, _ = served
    with httpx.Client(base_url=url, timeout=30, headers={"Sec-Fetch-Site": "same-origin"}) as anon:
        assert anon.get("/ui/health").status_code == 303  # to the login page
        assert anon.get("/ui/data/health").status_code == 401
        assert anon.post("/ui/alerts/x/ack", data={"csrf": "x"}).status_code == 401
        page = anon.get("/ui/login")
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token
        # a login without the form's token (login CSRF) or with a bad key is refused
        assert anon.post("/ui/login", data={"csrf": "forged", "api_key": keys["sre"]}).status_code == 403
        assert anon.post("/ui/login", data={"csrf": token.group(1), "api_key": "fb_nope"}).status_code == 401
    with httpx.Client(base_url=url, timeout=30, headers={"Sec-Fetch-Site": "same-origin"}) as c:
        token = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/login").text)
        assert token
        r = c.post("/ui/login", data={"csrf": token.group(1), "api_key": keys["service"]})
        assert r.status_code == 401 and "no console pages" in r.text
    r = session(url, keys["sre"]).get("/ui/health")
    assert r.status_code == 200 and "<script>" not in r.text
    with httpx.Client(base_url=url, timeout=30, headers={"Sec-Fetch-Site": "same-origin"}) as c:
        token = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/login").text)
        assert token
        r = c.post("/ui/login", data={"csrf": token.group(1), "api_key": keys["sre"]})
        set_cookie = r.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "path=/ui" in set_cookie
        assert keys["sre"] not in r.headers["set-cookie"]  # the cookie is a session id, never the key
        page = c.get("/ui/incidents")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf
        # a state change needs the session's token and a same-origin request
        assert c.post("/ui/alerts/nope/ack", data={"csrf": "forged"}).status_code == 403
        assert c.post("/ui/alerts/nope/ack", data={"csrf": csrf.group(1)},
                      headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        r = c.post("/ui/alerts/nope/ack", data={"csrf": csrf.group(1)})
        assert r.status_code == 303 and "error=" in r.headers["location"]  # the API's own 404, passed on
        assert c.post("/ui/logout", data={"csrf": csrf.group(1)}).status_code == 303
        assert c.get("/ui/incidents").status_code == 303  # the session is gone
    fin = session(url, keys["finance"])
    assert fin.get("/ui/spend").status_code == 200
    assert fin.get("/ui/incidents").status_code == 403
    assert fin.get("/ui/data/health").status_code == 403


def test_console_spend_equals_v1_spend_while_rows_arrive(served: tuple[str, dict[str, str], ClickHouseStore]) -> None:
    url, keys, store = served
    rows: list[list[Any]] = []
    for day in range(5):
        for hour in range(0, 24, 3):
            for tenant in ("acme", "globex"):
                ts = DAY0 + timedelta(days=day, hours=hour, minutes=7)
                rows.append(event(tenant, ts, model="gpt-4o" if hour % 2 else "gpt-4o-mini"))
                rows.append(event(tenant, ts, model="mystery-model", cost=None))  # unpriced
                rows.append(event(tenant, ts, late=1, cost="0.5", feature="batch"))
                rows.append(event(tenant, ts, event_type="tool_call", cost=None))
    dup = rows[5]
    write(store, rows + [dup])  # one duplicate: counted once
    started = datetime.now(UTC)
    store.call(queries.refresh_rollup, store, datetime(1970, 1, 1, tzinfo=UTC))
    store.call(queries.mark_complete, store, started)
    # rows that arrive after the rollups were complete: into an old (settled) day and a new one
    late_rows = [event("acme", DAY0 + timedelta(days=1, hours=5), cost="7.000000000001"),
                 event("globex", DAY0 + timedelta(days=4, hours=23, minutes=59), cost="0.25"), rows[9]]
    write(store, late_rows)
    fin = session(url, keys["finance"])
    api = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {keys['finance']}"})
    _clients.append(api)
    windows = [(DAY0, DAY0 + timedelta(days=5)),  # whole days only
               (DAY0 + timedelta(hours=10), DAY0 + timedelta(days=4, hours=13)),  # partial days at both edges
               (DAY0 + timedelta(days=1, hours=1), DAY0 + timedelta(days=1, hours=20))]  # inside one day
    checked = 0
    for start, end in windows:
        for group in ("tenant_id", "tenant_id,day,model", "feature", "model", "day"):
            for extra in ({}, {"model": "gpt-4o"}):
                ui = fin.get("/ui/spend.csv", params={"start": start.isoformat(), "end": end.isoformat(),
                                                      "group_by": group, **extra})
                assert ui.status_code == 200, ui.text
                v1 = api.get("/v1/spend", params={"from": start.isoformat(), "to": end.isoformat(),
                                                  "group_by": group, **extra}, headers={"Accept": "text/csv"})
                assert ui.text == v1.text, (start, end, group, extra)
                checked += 1
    assert checked == 30
    whole = api.get("/v1/spend", params={"from": DAY0.isoformat(), "to": (DAY0 + timedelta(days=5)).isoformat()}).json()
    assert Decimal(whole["total_usd"]) > Decimal("7")  # the late row is in, once
    # the page shows the same numbers, and a tenant-bound key only its own tenant
    page = fin.get("/ui/spend", params={"start": DAY0.isoformat(), "end": (DAY0 + timedelta(days=5)).isoformat()})
    assert whole["total_usd"] in page.text
    acme = session(url, keys["acme"])
    window = {"start": DAY0.isoformat(), "end": (DAY0 + timedelta(days=5)).isoformat()}
    for path, params in (("/ui/spend", window), ("/ui/spend.csv", window), ("/ui/data/spend", window),
                         ("/ui/data/health", window), ("/ui/data/suggest", {"column": "tenant_id"}),
                         ("/ui/data/suggest", {"column": "model"})):
        r = acme.get(path, params=params)
        assert r.status_code == 200, (path, r.text)
        assert "globex" not in r.text, path
    assert acme.get("/ui/spend.csv", params={"tenant_id": "globex"}).status_code == 403


def test_request_chain_route_and_tenant_binding(served: tuple[str, dict[str, str], ClickHouseStore]) -> None:
    url, keys, store = served
    t = DAY0 + timedelta(days=2)
    rid = f"req-{uuid.uuid4().hex[:8]}"
    chain = [event("acme", t, request_id=rid, event_type="retrieval", cost=None),
             event("acme", t + timedelta(seconds=1), request_id=rid),
             event("acme", t + timedelta(seconds=2), request_id=rid, event_type="tool_call", cost=None)]
    write(store, chain)
    write(store, chain[1:2])  # a redelivered event: shown once
    sre = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {keys['sre']}"})
    _clients.append(sre)
    body = sre.get(f"/v1/requests/{rid}").json()
    assert [e["event_type"] for e in body["events"]] == ["retrieval", "llm_call", "tool_call"]
    assert body["cost_usd"] == "0.000123456789" and body["counts"]["llm_call"] == 1
    assert sre.get("/v1/requests/req-unknown").status_code == 404
    bound = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {keys['acme']}"})
    _clients.append(bound)
    assert bound.get(f"/v1/requests/{rid}").status_code == 200
    write(store, [event("globex", t, request_id="req-globex-1")])
    r = bound.get("/v1/requests/req-globex-1")
    assert r.status_code == 404 and "globex" not in r.text.replace("req-globex-1", "")
    fin = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {keys['finance']}"})
    _clients.append(fin)
    assert fin.get(f"/v1/requests/{rid}").status_code == 403
    page = session(url, keys["sre"]).get("/ui/requests", params={"id": rid})
    assert page.status_code == 200 and page.text.count('class="wf ') == 3
