"""The console over real HTTP and real chDB: sessions, CSRF and role checks, tenant binding,
the request-chain route, and the console's spend (rollup + raw events) equal to `/v1/spend`
to the last digit while rows are still arriving."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from flyball.control_plane.auth import KeyRing, Role
from flyball.control_plane.ui import queries
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore
from tests.integration._helpers import served_api

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
    keys = KeyRing()
    plain = {"sre": keys.create(Role.SRE)[0], "finance": keys.create(Role.FINANCE)[0],
             "service": keys.create(Role.SERVICE)[0], "acme": keys.create(Role.SRE, tenant_id="acme")[0],
             "admin": keys.create(Role.ADMIN)[0]}
    with served_api(tmp_path_factory.mktemp("ch"), keys) as (url, _, store):
        yield url, plain, store


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


def test_health_ttft_empty_retrievals_outcomes_and_top_users(served: tuple[str, dict[str, str], ClickHouseStore]) -> None:
    url, keys, store = served
    t0 = DAY0 + timedelta(days=10, hours=4)
    cols = ["event_id", "ts", "event_type", "tenant_id", "feature", "environment", "provider", "model", "output_tokens",
            "latency_ms", "status", "cost_usd", "ttft_ms", "stream", "results_count", "user_id_hash", "index_name"]

    def ev(**kw: Any) -> list[Any]:
        row = {"event_id": str(uuid.uuid4()), "ts": t0, "event_type": "llm_call", "tenant_id": "initech",
               "feature": "chat", "environment": "staging", "provider": "openai", "model": "gpt-4o", "output_tokens": 10,
               "latency_ms": 900.0, "status": "ok", "cost_usd": Decimal("0.01"), "ttft_ms": None, "stream": 0,
               "results_count": None, "user_id_hash": "", "index_name": "", **kw}
        return [row[c] for c in cols]

    rows = [ev(stream=1, ttft_ms=float(100 + i), user_id_hash="aa" * 8) for i in range(20)]  # streamed: TTFT ~100-119
    rows += [ev(ttft_ms=5000.0, user_id_hash="bb" * 8, cost_usd=Decimal("0.5"))]  # not streamed: not in the TTFT series
    rows += [ev(status="error", cost_usd=None, user_id_hash="bb" * 8)]
    rows += [ev(event_type="retrieval", provider="", model="", index_name="kb", cost_usd=None, results_count=n)
             for n in (0, 0, 3, 5)]  # two empty of four
    rows += [ev(event_type="retrieval", provider="", model="", index_name="kb", cost_usd=None, status="error",
                results_count=0)]  # a failed retrieval is a failure, not also an empty one
    store.call(store.insert, "events", rows + rows[:3], cols)  # three redelivered: counted once
    started = datetime.now(UTC)
    store.call(queries.refresh_rollup, store, started - timedelta(minutes=5))
    store.call(queries.mark_complete, store, started)
    sre = session(url, keys["admin"])
    window = {"start": (t0 - timedelta(hours=1)).isoformat(), "end": (t0 + timedelta(hours=1)).isoformat(),
              "tenant_id": "initech"}
    data = sre.get("/ui/data/health", params={**window, "environment": "staging"}).json()
    charts = data["charts"]
    ttft = [v for v in charts["ttft"]["series"]["p95 TTFT"] if v is not None]
    assert len(ttft) == 1 and 110 <= ttft[0] <= 120  # streamed calls only: the 5,000 ms one is left out
    empty = [v for v in charts["errors"]["series"]["empty retrievals"] if v is not None]
    assert empty == [40.0]  # 2 of 5 retrievals
    failed = [v for v in charts["retrieval"]["series"]["failed or empty"] if v is not None]
    assert failed == [60.0]  # 2 empty + 1 error of 5
    ok = sum(v for v in charts["outcomes"]["series"]["successful"] if v)
    bad = sum(v for v in charts["outcomes"]["series"]["failed"] if v)
    assert (ok, bad) == (21.0, 1.0)  # per minute, in the one minute bucket
    other_env = sre.get("/ui/data/health", params={**window, "environment": "production"}).json()
    assert other_env["totals"]["llm_calls"] == 0
    page = sre.get("/ui/spend", params=window)
    assert page.status_code == 200
    users = re.findall(r"<tr><td><code>([0-9a-f]+)</code></td><td>initech</td><td class=\"num\">(\d+)</td>"
                       r"<td class=\"num\">(\d+)</td><td class=\"num\">([0-9.]+)</td>", page.text)
    assert users == [("bb" * 8, "2", "1", "0.5"), ("aa" * 8, "20", "0", "0.2")]  # by cost, duplicates once
    # the environment filter reaches /v1/spend too, and the console's CSV still equals it
    api = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {keys['admin']}"})
    _clients.append(api)
    for env in ("staging", "production"):
        params = {"start": window["start"], "end": window["end"], "group_by": "tenant_id,environment", "environment": env}
        ui = sre.get("/ui/spend.csv", params=params)
        v1 = api.get("/v1/spend", params={"from": window["start"], "to": window["end"], "environment": env,
                                          "group_by": "tenant_id,environment"}, headers={"Accept": "text/csv"})
        assert ui.status_code == v1.status_code == 200 and ui.text == v1.text
    assert "initech,staging,22,0.7," in v1.text or "initech,staging" not in v1.text
    assert api.get("/v1/spend", params={"from": window["start"], "to": window["end"], "environment": "staging",
                                        "tenant_id": "initech"}).json()["total_usd"] == "0.7"


def _next_event(lines: Iterator[str]) -> str:
    """The next event name on a server-sent-events stream."""
    for line in lines:
        if line.startswith("event: "):
            return line[7:]
    raise AssertionError("the stream ended")


def test_live_stream_pushes_alert_changes_within_the_tenant_scope(
        served: tuple[str, dict[str, str], ClickHouseStore]) -> None:
    import threading
    import time

    from flyball.schemas import Alert, AlertKind, Scope

    url, keys, store = served
    with httpx.Client(base_url=url, timeout=10) as anon:
        assert anon.get("/ui/live").status_code == 401

    def alert_row(tenant: str) -> list[Any]:
        at = datetime.now(UTC)
        a = Alert(alert_id=str(uuid.uuid4()), kind=AlertKind.COST_SPIKE, scope=Scope(tenant_id=tenant),
                  severity="warning", status="open", metric="cost_usd_per_window", observed="2", baseline="0.1",
                  threshold="1", window_s=60, first_seen=at, last_seen=at)
        return [a.alert_id, str(a.kind), a.key(), a.scope.model_dump_json(), a.severity, a.status, at, at,
                a.model_dump_json(), at]

    written: dict[str, float] = {}

    def writes() -> None:
        store.call(store.write_alerts, [alert_row("globex")])  # another tenant's alert: nothing for acme
        time.sleep(3.0)
        written["acme"] = time.monotonic()
        store.call(store.write_alerts, [alert_row("acme")])

    acme = session(url, keys["acme"])
    with acme.stream("GET", "/ui/live", timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert next(lines).startswith("retry:")
        assert _next_event(lines) == "hello"
        writer = threading.Thread(target=writes)
        writer.start()
        try:
            assert _next_event(lines) == "alerts"
            received = time.monotonic()
        finally:
            writer.join()
        assert received >= written["acme"]  # told of its own tenant's alert, not of the other's


def test_top_users_sum_every_day_of_a_candidate_exactly(served: tuple[str, dict[str, str], ClickHouseStore],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, store = served
    day = DAY0 + timedelta(days=20)
    cols = ["event_id", "ts", "event_type", "tenant_id", "provider", "model", "output_tokens", "status", "cost_usd",
            "user_id_hash"]

    def ev(ts: datetime, user: str, usd: str) -> list[Any]:
        return [str(uuid.uuid4()), ts, "llm_call", "umbrella", "openai", "gpt-4o", 1, "ok", Decimal(usd), user * 16]

    # day 1: a leads, b second; day 2: b leads, a second; c is never first
    rows = [ev(day, "a", "5"), ev(day, "b", "3"), ev(day, "c", "1"),
            ev(day + timedelta(days=1), "b", "4.000000000001"), ev(day + timedelta(days=1), "a", "2"),
            ev(day + timedelta(days=1), "c", "1")]
    store.call(store.insert, "events", rows + rows[:2], cols)  # two redelivered: counted once
    monkeypatch.setattr(queries, "USER_CANDIDATES", 1)  # only each day's costliest user is a candidate
    started = datetime.now(UTC)
    store.call(queries.refresh_rollup, store, started - timedelta(minutes=5))

    def query(sql: str, params: dict[str, Any]) -> Any:
        return store.call(store.query, sql, params)

    f = queries.Filters(tenant_id="umbrella", begin=day, end=day + timedelta(days=2))
    top = queries.top_users(query, f, n=5)
    # a and b were each a day's first: both days count for both, exactly; c was never a candidate
    assert [(u["user_id_hash"][0], u["calls"], u["cost_usd"]) for u in top["users"]] == [
        ("b", 2, "7.000000000001"), ("a", 2, "7")]


def test_versions_page_shows_live_versions_verdicts_and_evidence_within_the_tenant_scope(
        served: tuple[str, dict[str, str], ClickHouseStore]) -> None:
    """The Versions page renders ``GET /v1/versions`` (rows as the worker writes them): each live
    version's share and calls, the candidate's verdict and per-metric evidence; a tenant-bound
    key sees only its tenant's comparisons; a version_regression alert links to it."""
    from flyball.schemas import Alert, AlertKind, Scope
    from flyball.stream_processors.ingest import VERSION_COLUMNS, version_row
    from flyball.stream_processors.releases import VersionRow

    url, keys, store = served
    now = datetime.now(UTC)
    feature = f"checkout-{uuid.uuid4().hex[:6]}"
    metric = {"metric": "failure_rate", "new": 0.31, "old": 0.02, "n_new": 400, "n_old": 7600, "effect": 0.29,
              "min_effect": 0.02, "interval": [0.22, 0.36], "p_value": 0.00012, "regression": True}

    def row(tenant: str, version: str, calls: int, share: float, verdict: str | None) -> tuple[object, ...]:
        comparison = None if verdict is None else {
            "old_version": "v1", "verdict": verdict, "started": (now - timedelta(minutes=20)).isoformat(),
            "decided_at": now.isoformat() if verdict != "hold" else None, "calls_new": calls, "calls_old": 7600,
            "metrics": [metric] if verdict == "rollback" else []}
        return version_row(VersionRow(tenant_id=tenant, feature=feature, dimension="prompt_version", version=version,
                                      calls=calls, share=share, role="candidate" if verdict else "incumbent",
                                      as_of=now.timestamp(), window_s=3600.0, comparison=comparison), now)

    rows = [row("", "v1", 7600, 0.95, None), row("", "v2-canary", 400, 0.05, "rollback"),
            row("acme", "v1", 900, 0.9, None), row("acme", "v2-acme-only", 100, 0.1, "hold"),
            row("globex", "v2-globex-only", 50, 0.5, "promote")]
    store.call(store.insert, "release_versions", rows, VERSION_COLUMNS)

    sre = session(url, keys["sre"])
    page = sre.get("/ui/versions", params={"feature": feature})
    assert page.status_code == 200, page.text
    assert 'href="/ui/versions"' in page.text  # in the navigation
    table = page.text.split('class="versions-table"', 1)[1]
    assert table.index("v1") < table.index("v2-canary")  # most-used first
    assert "95.0%" in table and "5.0%" in table and "7600" in table
    assert ">rollback<" in table and "400/7600" in table
    evidence = page.text.split('class="evidence-table"', 1)[1]
    assert "failure_rate" in evidence and "0.31" in evidence and "[0.22, 0.36]" in evidence and ">yes<" in evidence
    assert "v2-acme-only" not in page.text and "v2-globex-only" not in page.text  # feature-wide only
    assert f'<option value="{feature}" selected' in page.text  # the feature select
    globex = sre.get("/ui/versions", params={"feature": feature, "tenant_id": "globex"}).text
    assert "v2-globex-only" in globex and ">promote<" in globex and "v2-canary" not in globex
    assert sre.get("/ui/versions", params={"dimension": "nope"}).status_code == 422

    acme = session(url, keys["acme"])
    mine = acme.get("/ui/versions", params={"feature": feature})
    assert mine.status_code == 200
    assert "v2-acme-only" in mine.text and ">hold<" in mine.text
    assert "v2-canary" not in mine.text and "globex" not in mine.text and 'name="tenant_id"' not in mine.text
    other = acme.get("/ui/versions", params={"feature": feature, "tenant_id": "globex"})
    assert other.status_code == 403 and "v2-globex-only" not in other.text
    assert session(url, keys["finance"]).get("/ui/versions").status_code == 403

    a = Alert(alert_id=str(uuid.uuid4()), kind=AlertKind.VERSION_REGRESSION, severity="critical", status="open",
              scope=Scope(feature=feature, version_field="prompt_version", old_version="v1", new_version="v2-canary"),
              metric="failure_rate", observed="0.31", baseline="0.02", threshold="0.04", window_s=3600,
              first_seen=now, last_seen=now)
    store.call(store.write_alerts, [[a.alert_id, str(a.kind), a.key(), a.scope.model_dump_json(), a.severity,
                                     a.status, now, now, a.model_dump_json(), now]])
    link = re.search(r'id="versions-link" href="([^"]+)"', sre.get(f"/ui/alerts/{a.alert_id}").text)
    assert link and link.group(1).replace("&amp;", "&") == f"/ui/versions?feature={feature}&dimension=prompt_version"
    assert "v2-canary" in sre.get(link.group(1).replace("&amp;", "&")).text


def _p95(values: list[Decimal]) -> Decimal:
    """The exact p95 as ClickHouse's quantileExact defines it: the element at index
    floor(0.95 * n) of the sorted values (the largest when that is past the end)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(Decimal("0.95") * len(ordered)))]


@pytest.mark.parametrize(("top_min", "top_share"), [(queries.REQUEST_TOP_MIN, queries.REQUEST_TOP_SHARE), (3, 0.05)])
def test_p95_cost_per_request_and_chain_from_generated_events(
        served: tuple[str, dict[str, str], ClickHouseStore], monkeypatch: pytest.MonkeyPatch,
        top_min: int, top_share: float) -> None:
    """The Spend page's p95 cost per request and per request chain equal the values computed
    here from the generated events (each event once; a request's cost is the sum of its LLM
    calls, however far apart they arrive), within the tenant scope. With short kept lists (3 a
    tenant-day) and one tenant ten times costlier, the all-tenant answer is not among the kept
    costs and comes from the full states; one tenant's is read from its cut lists."""
    import random

    url, keys, store = served
    monkeypatch.setattr(queries, "REQUEST_TOP_MIN", top_min)
    monkeypatch.setattr(queries, "REQUEST_TOP_SHARE", top_share)
    rng = random.Random(1901 + top_min)
    day = DAY0 + timedelta(days=24 + top_min % 5)
    costs: dict[str, dict[str, list[Decimal]]] = {}  # tenant -> request -> its calls' costs
    chains: dict[str, dict[str, list[Decimal]]] = {}
    rows: list[list[Any]] = []
    for tenant in ("acme", "hooli"):
        for r in range(60):
            rid = f"p95-{tenant}-{r}"
            trace = f"chain-{tenant}-{r // 3}"  # three requests a chain
            for k in range(rng.randint(1, 4)):
                usd = Decimal(rng.randint(1, 9_999_999)) / Decimal(10**9 if tenant == "acme" else 10**8)
                ts = day + timedelta(hours=rng.randint(0, 20), minutes=k)
                row = event(tenant, ts, cost=str(usd), request_id=rid)
                row[COLUMNS.index("trace_id")] = trace
                rows.append(row)
                costs.setdefault(tenant, {}).setdefault(rid, []).append(usd)
                chains.setdefault(tenant, {}).setdefault(trace, []).append(usd)
            rows.append(event(tenant, day + timedelta(hours=1), request_id=rid, event_type="tool_call", cost=None))
    write(store, rows + rows[:7])  # seven redelivered: counted once
    started = datetime.now(UTC)
    store.call(queries.refresh_rollup, store, started - timedelta(minutes=5))
    # a late call of an existing request, after the rollup: the next refresh counts it, once
    late = event("acme", day + timedelta(hours=22), cost="3.5", request_id="p95-acme-0")
    late[COLUMNS.index("trace_id")] = "chain-acme-0"
    write(store, [late, late])
    costs["acme"]["p95-acme-0"].append(Decimal("3.5"))
    chains["acme"]["chain-acme-0"].append(Decimal("3.5"))
    store.call(queries.refresh_rollup, store, started)
    store.call(queries.mark_complete, store, started)

    def expect(tenants: list[str], groups: dict[str, dict[str, list[Decimal]]]) -> str:
        return queries._dec_text(_p95([sum(v, Decimal(0)) for t in tenants for v in groups[t].values()]))

    window = {"start": day.isoformat(), "end": (day + timedelta(days=1)).isoformat()}
    for key, tenants in (("admin", ["acme", "hooli"]), ("admin", ["acme"]), ("acme", ["acme"])):
        params = dict(window, tenant_id="acme") if key == "admin" and tenants == ["acme"] else window
        c = session(url, keys[key])
        page = c.get("/ui/spend", params=params)
        assert page.status_code == 200, page.text
        feed = re.search(r'data-request-costs-feed="([^"]+)"', page.text)
        assert feed and "end=" in feed.group(1)  # the panel's feed, for the page's pinned window
        got = c.get(feed.group(1).replace("&amp;", "&")).json()
        assert got["request_p95_usd"] == expect(tenants, costs), key
        assert got["chain_p95_usd"] == expect(tenants, chains), key
        assert got["requests"] == sum(len(costs[t]) for t in tenants)
        assert got["chains"] == sum(len(chains[t]) for t in tenants)
        if key == "acme":
            assert "hooli" not in page.text and "hooli" not in str(got)
            assert c.get("/ui/data/request-costs", params=dict(window, tenant_id="hooli")).status_code == 403


def test_spend_windows_equal_v1_spend_for_each_window(served: tuple[str, dict[str, str], ClickHouseStore]) -> None:
    """The Spend page's one read of its three windows (the period, the one before, the month so
    far unfiltered) answers each as ``GET /v1/spend`` does, to the last digit, with rows still
    arriving after the rollups were complete and window edges inside days."""
    url, keys, store = served
    base = DAY0 + timedelta(days=40)
    rows = [event(t, base + timedelta(hours=h), model="gpt-4o" if h % 2 else "gpt-4o-mini",
                  cost=f"0.{h:02d}0000000007", feature="chat" if h % 3 else "batch")
            for t in ("acme", "globex") for h in range(0, 24 * 6, 5)]
    write(store, rows)
    started = datetime.now(UTC)
    store.call(queries.refresh_rollup, store, started - timedelta(minutes=5))
    store.call(queries.mark_complete, store, started)
    write(store, [event("acme", base + timedelta(days=2, hours=3), cost="9.000000000001")])  # into a settled day
    api = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {keys['finance']}"})
    _clients.append(api)

    def query(sql: str, params: dict[str, Any]) -> Any:
        return store.call(store.query, sql, params)

    end = base + timedelta(days=5, hours=7, minutes=30)
    for extra in ({}, {"feature": "chat"}, {"tenant_id": "acme", "model": "gpt-4o"}):
        f = queries.Filters(begin=base + timedelta(days=3, hours=7, minutes=30), end=end, **extra)
        windows = [queries.SpendWindow(f.start, f.end, ("model",)),
                   queries.SpendWindow(f.start - timedelta(days=2), f.start, ("model",)),
                   queries.SpendWindow(base + timedelta(hours=1), f.end, ("tenant_id", "day"), filtered=False)]
        got = queries.spend_windows(query, f, windows)
        for w, rows_got in zip(windows, got, strict=True):
            params = {"from": w.start.isoformat(), "to": w.end.isoformat(), "group_by": ",".join(w.groups)}
            if w.filtered:
                params |= extra
            elif "tenant_id" in extra:
                params["tenant_id"] = extra["tenant_id"]
            want = api.get("/v1/spend", params=params).json()["rows"]
            assert rows_got == want, (extra, w)


def test_rollup_build_runs_in_steps_and_pages_answer_meanwhile(
        served: tuple[str, dict[str, str], ClickHouseStore]) -> None:
    """A rollup build from scratch (a new or upgraded database) is many bounded statements on
    the ClickHouse thread, not one: a page's read queued meanwhile is answered before the build
    ends, and spend stays equal to ``GET /v1/spend`` during and after the build."""
    import asyncio

    url, keys, store = served
    base = DAY0 + timedelta(days=50)
    write(store, [event(t, base + timedelta(days=d, hours=h), cost=f"0.{d}{h:02d}000000001")
                  for t in ("acme", "globex", "initech") for d in range(3) for h in range(0, 24, 4)])
    steps = store.call(queries.backfill_steps, store, 5)
    assert len(steps) > 9  # at most one tenant-day of rows (or 5 rows) a step
    fin = session(url, keys["finance"])
    api = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {keys['finance']}"})
    _clients.append(api)
    window = {"start": base.isoformat(), "end": (base + timedelta(days=3)).isoformat(), "group_by": "tenant_id,day"}
    want = api.get("/v1/spend", params={"from": window["start"], "to": window["end"], "group_by": "tenant_id,day"},
                   headers={"Accept": "text/csv"}).text
    statements = 0
    answered: list[int] = []

    async def counted() -> None:
        nonlocal statements
        statements += 1

    async def reader(build: asyncio.Task[datetime]) -> None:
        while statements < 3:
            await asyncio.sleep(0.01)
        rows = await store.run(store.query, "SELECT count() FROM events", {})
        assert rows[0][0] > 0
        answered.append(statements)
        # a page through the HTTP server (its own thread) while the build is still going
        answered.append(int(await asyncio.to_thread(lambda: fin.get("/ui/spend.csv", params=window).text == want)))
        assert not build.done()

    async def scenario() -> int:
        build = asyncio.ensure_future(queries.backfill(store, rows_per_step=5, after_statement=counted))
        await asyncio.gather(build, reader(build))
        return statements

    total = asyncio.run(scenario())
    assert answered[0] < total and answered[1] == 1  # answered mid-build, and exact
    assert fin.get("/ui/spend.csv", params=window).text == want  # and after it
