"""KPIs over real chDB and real HTTP, checked against an independent computation in plain Python
from the generated events (the same events, deduplicated by event id as the contract says):
error rates, p95 latency and TTFT, spend, cost per successful outcome, forecast variance, cache
hit rate and dollars saved, safety rate, SLO attainment, MTTD / mitigation / MTTR. Also the
CSV form, tenant isolation, roles, 4xx naming the field, and the SLO routes (versioned, audited)."""

from __future__ import annotations

import csv
import io
import math
import random
import re
import struct
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from flyball.control_plane.app import Deps, create_app
from flyball.control_plane.auth import KeyRing, Principal, Role
from flyball.control_plane.kpis import Span, cache_saving, forecast_for
from flyball.control_plane.runtime import load_prices
from flyball.control_plane.slo import DEFAULT_SLOS
from flyball.stream_processors.budgets import Period
from flyball.stream_processors.forecast import MICRO, forecast
from flyball.stream_processors.ingest import alert_row
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.pricing import PriceBook, Usage, price
from flyball.schemas import Alert, AlertKind, Scope
from tests.integration._helpers import serve_app
from flyball.control_plane.migrations import ALL_MIGRATIONS

START, END = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
PREV = datetime(2026, 10, 1, tzinfo=UTC)
TENANTS, FEATURES = ("acme", "globex", "initech"), ("chat", "search", "summarize")
MODELS = (("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"), ("acme-ai", "unpriced-model"))
STATUSES = ["ok"] * 40 + ["error", "error", "timeout", "rate_limited", "filtered", "cancelled"]
CATEGORIES = ("pii", "toxicity", "jailbreak")


def generate(seed: int) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Events (dicts, as sent) over October and November, and their wire form, with some
    exact duplicates sent twice. Boundary events at exactly the period start and end."""
    rnd = random.Random(seed)
    events: list[dict[str, Any]] = []

    def base(kind: str, ts: datetime, tenant: str, feature: str, **kw: Any) -> dict[str, Any]:
        e = {"schema_version": 1, "event_type": kind, "event_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
             "ts": ts.isoformat(), "tenant_id": tenant, "feature": feature, **kw}
        events.append(e)
        return e

    requests: list[tuple[str, str, str]] = []
    for i in range(1800):
        october = i < 500
        span = (START - PREV) if october else (END - START)
        ts = (PREV if october else START) + timedelta(seconds=rnd.randrange(int(span.total_seconds())))
        if i == 600:
            ts = START  # included
        if i == 601:
            ts = END  # excluded
        tenant, feature = rnd.choice(TENANTS), rnd.choice(FEATURES)
        provider, model = rnd.choices(MODELS, weights=(6, 3, 1))[0]
        inp = rnd.randrange(10, 5000)
        status = rnd.choice(STATUSES)
        latency = round(rnd.uniform(50, 9000), 3)
        kw: dict[str, Any] = {"provider": provider, "model": model, "input_tokens": inp,
                              "output_tokens": rnd.randrange(0, 800), "latency_ms": latency, "status": status,
                              "cache_read_tokens": rnd.choice([0, 0, inp // 2, inp])}
        if rnd.random() < 0.4:
            kw["stream"] = True
            if rnd.random() < 0.8:
                kw["ttft_ms"] = round(rnd.uniform(10, latency), 3)
        if requests and rnd.random() < 0.3:
            t2, f2, req = rnd.choice(requests)
            tenant, feature, kw["request_id"] = t2, f2, req
        elif rnd.random() < 0.85:
            kw["request_id"] = f"req-{i}"
            requests.append((tenant, feature, kw["request_id"]))
        if rnd.random() < 0.03:
            kw["attributes"] = {"outcome": rnd.choice(["success", "failure"])}
        call = base("llm_call", ts, tenant, feature, **kw)
        if rnd.random() < 0.08:
            target = {"request_id": call["request_id"]} if "request_id" in call and rnd.random() < 0.5 else \
                {"target_event_id": call["event_id"]}
            base("feedback", ts + timedelta(seconds=5), tenant, feature, score=rnd.choice([-1, 1, -0.5, 0]), **target)
        if rnd.random() < 0.03 and "request_id" in call:
            base("feedback", ts + timedelta(seconds=7), tenant, feature, score=1, request_id=call["request_id"],
                 attributes={"outcome": rnd.choice(["success", "failure"])})
        if rnd.random() < 0.06:
            base("safety_trigger", ts, tenant, feature, filter_name="guard", category=rnd.choice(CATEGORIES),
                 action=rnd.choice(["blocked", "flagged"]))
    wire = [orjson.dumps(e) for e in events]
    return events, wire + wire[::17]  # every 17th event sent twice


# ------------------------------------------------------------------ independent computation
def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def expected(events: list[dict[str, Any]], book: PriceBook, *, group_by: str | None,
             tenant: str | None = None) -> dict[str, dict[str, Any]]:
    """Every KPI per group, from the events alone (plain Python, no SQL)."""
    inside = [e for e in events if START <= _utc(e["ts"]) < END and (tenant is None or e["tenant_id"] == tenant)]
    calls = [e for e in inside if e["event_type"] == "llm_call"]

    def key(e: dict[str, Any]) -> str:
        return e[group_by] if group_by else "all"

    def rkey(e: dict[str, Any]) -> tuple[str, str]:
        return e["tenant_id"], e.get("request_id") or e["event_id"]

    def cost(e: dict[str, Any]) -> Decimal | None:
        return price(Usage(e["provider"], e["model"], _utc(e["ts"]), e["input_tokens"], e["output_tokens"],
                           e["cache_read_tokens"]), book).cost

    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"calls": 0, "failed": defaultdict(int), "ok_lat": [],
                                                           "ttft": [], "cost": Decimal(0), "input": 0, "cached": 0,
                                                           "saved": Decimal(0), "safety": defaultdict(int),
                                                           "requests": {}, "slo": defaultdict(lambda: [0, 0])})
    at = END - timedelta(milliseconds=1)
    for e in calls:
        g = out[key(e)]
        g["calls"] += 1
        if e["status"] != "ok":
            g["failed"][e["status"]] += 1
        else:
            g["ok_lat"].append(e["latency_ms"])
            if e.get("stream") and "ttft_ms" in e:
                g["ttft"].append(e["ttft_ms"])
        g["cost"] += cost(e) or 0
        g["input"] += e["input_tokens"]
        g["cached"] += e["cache_read_tokens"]
        entry = book.lookup(e["provider"], e["model"], at)
        if entry is not None and e["cache_read_tokens"]:
            read = entry.rates.cache_read if entry.rates.cache_read is not None else entry.rates.input
            g["saved"] += e["cache_read_tokens"] * (entry.rates.input - read)
        for slo in DEFAULT_SLOS.slos:
            bad = slo.classify(status=e["status"], latency_ms=e["latency_ms"], ttft_ms=e.get("ttft_ms"),
                               stream=bool(e.get("stream")))
            if bad is not None:
                sub = (slo.slo_id, e["feature"] if group_by != "tenant_id" else "*",
                       e["tenant_id"] if group_by == "tenant_id" or tenant else "")
                g["slo"][sub][0] += 1
                g["slo"][sub][1] += int(bad)
    for e in inside:
        if e["event_type"] == "safety_trigger":
            out[key(e)]["safety"][e["category"]] += 1
    # successful outcomes: ok calls, except those of requests with negative feedback or an explicit
    # outcome; plus one per request whose latest explicit outcome is success (grouped by the
    # event that carried it)
    negative = {rkey(e) for e in inside if e["event_type"] == "feedback" and e["score"] < 0 and e.get("request_id")}
    by_id = {e["event_id"]: e for e in calls}
    negative |= {rkey(by_id[e["target_event_id"]]) for e in inside if e["event_type"] == "feedback"
                 and e["score"] < 0 and e.get("target_event_id") in by_id
                 and by_id[e["target_event_id"]]["tenant_id"] == e["tenant_id"]}  # same tenant only
    explicit: dict[tuple[str, str], tuple[datetime, str, str]] = {}
    for e in inside:
        o = (e.get("attributes") or {}).get("outcome")
        if o in ("success", "failure"):
            k = rkey(e)
            if k not in explicit or _utc(e["ts"]) >= explicit[k][0]:
                explicit[k] = (_utc(e["ts"]), o, key(e))
    successes: dict[str, int] = defaultdict(int)
    for e in calls:
        if e["status"] == "ok" and rkey(e) not in negative and rkey(e) not in explicit:
            successes[key(e)] += 1
    for _, o, g in explicit.values():
        if o == "success":
            successes[g] += 1
    # forecast: October's spend per day and group
    daily: dict[str, dict[date, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for e in events:
        ts = _utc(e["ts"])
        if e["event_type"] == "llm_call" and PREV <= ts < START and (tenant is None or e["tenant_id"] == tenant):
            daily[key(e)][ts.date()] += cost(e) or 0
    result = {}
    for g, v in out.items():
        fc = None
        if daily.get(g):
            f = forecast(daily[g], period=Period.MONTHLY, now=START - timedelta(microseconds=1))
            fc = (f.daily_rate * 30).quantize(MICRO)
        result[g] = {**v, "successes": successes[g], "forecast": fc}
    return result


# ------------------------------------------------------------------ the system under test
@dataclass
class Env:
    store: Any
    url: str
    keys: dict[str, str]
    events: list[dict[str, Any]]
    book: PriceBook
    alerts: list[Alert]
    mitigated: dict[str, datetime]

    def get(self, path: str, key: str = "finance", **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.keys[key]}",
                                                   **kw.pop("headers", {})}, timeout=60, **kw)

    def send(self, method: str, path: str, key: str, body: str) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {self.keys[key]}"},
                             content=body.encode(), timeout=60)


def _alerts() -> tuple[list[tuple[Alert, datetime | None]], dict[str, datetime]]:
    """Alerts (with the versions the detectors would store) and the directive applied for some."""
    made = []
    mitigated = {}
    rnd = random.Random(7)
    for i in range(12):
        kind = rnd.choice([AlertKind.ERROR_RATE, AlertKind.COST_SPIKE, AlertKind.SLO_BURN])
        first = START + timedelta(days=rnd.randrange(28), seconds=rnd.randrange(86400))
        if i == 0:
            first = START - timedelta(hours=2)  # opened before the period: not counted
        opened = first + timedelta(seconds=rnd.randrange(30, 900))
        resolved = opened + timedelta(seconds=rnd.randrange(300, 7200)) if rnd.random() < 0.8 else None
        tenant, feature = rnd.choice(TENANTS), rnd.choice(FEATURES)
        alert = Alert(alert_id=str(uuid.UUID(int=rnd.getrandbits(128), version=4)), kind=kind, scope=Scope(tenant_id=tenant, feature=feature),
                      severity="critical", metric="m", observed="1", baseline="0", threshold="0", window_s=60,
                      first_seen=first, last_seen=opened, opened_at=opened)
        made.append((alert, resolved))
        if rnd.random() < 0.6:
            mitigated[alert.alert_id] = opened + timedelta(seconds=rnd.randrange(1, 120))
    return made, mitigated


@pytest.fixture(scope="module", params=[11, 29])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from flyball.stream_processors.sinks.clickhouse import ClickHouseStore

    store = ClickHouseStore(f"chdb://{tmp_path_factory.mktemp('ch')}")
    store.migrate(ALL_MIGRATIONS)
    book = load_prices(None)
    events, wire = generate(request.param)
    pipeline = Pipeline(lambda: book)
    rows = pipeline.process(wire, now=None).rows
    store.call(store.write_events, rows)
    store.call(store.write_events, rows[:200])  # a batch re-inserted after a crash: FINAL counts it once
    made, mitigated = _alerts()
    alert_rows = []
    for alert, resolved in made:
        alert_rows.append(alert_row(alert, alert.opened_at or alert.first_seen))
        if resolved is not None:
            done = alert.model_copy(update={"status": "resolved", "last_seen": resolved})
            alert_rows.append(alert_row(done, resolved))
    store.call(store.write_alerts, alert_rows)
    store.call(store.write_actions, [
        (str(uuid.uuid4()), at, "applied", str(uuid.uuid4()), "k", "", alert_id, "p@v1", "flyball", "", "", "", "")
        for alert_id, at in mitigated.items()] + [
        (str(uuid.uuid4()), at + timedelta(hours=1), "applied", str(uuid.uuid4()), "k", "", alert_id, "p@v1", "flyball",
         "", "", "", "") for alert_id, at in mitigated.items()])  # a later re-application: the first one counts
    keys = KeyRing()
    names = {"admin": (Role.ADMIN, None), "finance": (Role.FINANCE, None), "sre": (Role.SRE, None),
             "service": (Role.SERVICE, None), "acme": (Role.FINANCE, "acme")}
    plain = {}
    for name, (role, tenant) in names.items():
        plain[name] = f"key-{name}"
        keys.add(plain[name], Principal(key_id=name, role=role, tenant_id=tenant, name=name))
    app = create_app(Deps(store=store, control=None, keys=keys, policies=lambda: None,  # type: ignore[arg-type, return-value]
                          prices=lambda: book))
    with serve_app(app) as url:
        yield Env(store, url, plain, events, book, [a for a, _ in made], mitigated)
    store.close()


def bf16_p95(xs: list[float]) -> float:
    """The value at rank ceil(0.95 n) of the values truncated to bfloat16 (the top 16 bits of their
    float32 form)."""
    ys = sorted(struct.unpack(">f", struct.pack(">I", struct.unpack(">I", struct.pack(">f", x))[0] & 0xFFFF0000))[0]
                for x in xs)
    return ys[math.ceil(0.95 * len(ys)) - 1]


def _check_group(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["calls"] == want["calls"]
    failed = sum(want["failed"].values())
    assert got["error_rate"] == pytest.approx(failed / want["calls"], abs=1e-6)
    assert {c: v["calls"] for c, v in got["errors"].items()} == dict(want["failed"])
    for c, v in got["errors"].items():
        assert v["rate"] == pytest.approx(want["failed"][c] / want["calls"], abs=1e-6)
    # p95 as documented: nearest rank over values truncated to bfloat16 (ClickHouse's
    # quantileBFloat16); and within a few percent of numpy's interpolated percentile
    assert got["p95_latency_ms"] == bf16_p95(want["ok_lat"])
    assert got["p95_latency_ms"] == pytest.approx(float(np.percentile(want["ok_lat"], 95)), rel=0.05)
    if want["ttft"]:
        assert got["p95_ttft_ms"] == bf16_p95(want["ttft"])
    else:
        assert got["p95_ttft_ms"] is None
    assert Decimal(got["cost_usd"]) == want["cost"]
    assert got["successful_outcomes"] == want["successes"]
    if want["successes"]:
        per = (want["cost"] / want["successes"]).quantize(Decimal("1e-12"), ROUND_HALF_EVEN)
        assert Decimal(got["cost_per_successful_outcome_usd"]) == per
    assert got["cache"]["input_tokens"] == want["input"] and got["cache"]["cache_read_tokens"] == want["cached"]
    assert got["cache"]["hit_rate"] == pytest.approx(want["cached"] / want["input"], abs=1e-6)
    assert Decimal(got["cache"]["saved_usd"]) == want["saved"]
    assert {c: v["triggers"] for c, v in got["safety"].items()} == dict(want["safety"])
    for c, v in got["safety"].items():
        assert v["per_1000_calls"] == pytest.approx(1000 * want["safety"][c] / want["calls"], abs=1e-6)
    if want["forecast"] is None:
        assert got["forecast_usd"] is None
    else:
        assert Decimal(got["forecast_usd"]) == want["forecast"]
        assert Decimal(got["spend_variance_usd"]) == want["cost"] - want["forecast"]
    slo = {(s["slo_id"], s["feature"], s["tenant_id"] or ""): (s["eligible_calls"], s["bad_calls"], s["attainment"])
           for s in got["slo"]}
    assert {k: tuple(v) for k, v in want["slo"].items()} == {k: v[:2] for k, v in slo.items()}
    for k, (eligible, bad, attained) in slo.items():
        assert attained == pytest.approx((eligible - bad) / eligible, abs=1e-6)


@pytest.mark.parametrize("group_by", [None, "feature", "tenant_id"])
def test_kpis_match_an_independent_computation(env: Env, group_by: str | None) -> None:
    params = {"from": START.isoformat(), "to": END.isoformat()} | ({"group_by": group_by} if group_by else {})
    resp = env.get("/v1/kpis", params=params)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    want = expected(env.events, env.book, group_by=group_by)
    assert sorted(g["key"] for g in body["groups"]) == sorted(want)
    for g in body["groups"]:
        _check_group(g, want[g["key"]])


def test_incident_times_per_alert_kind(env: Env) -> None:
    body = env.get("/v1/kpis", key="sre", params={"from": START.isoformat(), "to": END.isoformat()}).json()
    got = body["groups"][0]["incidents"]
    want: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    made, _ = _alerts()
    for alert, resolved in made:
        assert alert.opened_at is not None
        if not START <= alert.opened_at < END:
            continue
        w = want[str(alert.kind)]
        w["n"].append(1)
        w["detect"].append((alert.opened_at - alert.first_seen).total_seconds())
        if alert.alert_id in env.mitigated:
            w["mitigate"].append((env.mitigated[alert.alert_id] - alert.opened_at).total_seconds())
        if resolved is not None:
            w["resolve"].append((resolved - alert.opened_at).total_seconds())
    assert set(got) == set(want)
    for kind, w in want.items():
        g = got[kind]
        assert g["alerts"] == len(w["n"])
        assert g["mttd_s"] == pytest.approx(sum(w["detect"]) / len(w["detect"]), abs=1e-3)
        for name, xs in (("time_to_mitigation_s", w["mitigate"]), ("mttr_s", w["resolve"])):
            assert g[name] == (pytest.approx(sum(xs) / len(xs), abs=1e-3) if xs else None)


def test_csv_has_the_same_figures(env: Env) -> None:
    params = {"from": START.isoformat(), "to": END.isoformat(), "group_by": "feature"}
    js = env.get("/v1/kpis", params=params).json()
    resp = env.get("/v1/kpis", params=params, headers={"Accept": "text/csv"})
    assert resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[0] == ["group", "kpi", "dimension", "value"]
    found = {(r[0], r[1], r[2]): r[3] for r in rows[1:]}
    for g in js["groups"]:
        assert found[(g["key"], "cost_usd", "")] == g["cost_usd"]
        assert found[(g["key"], "calls", "")] == str(g["calls"])
        for cls, v in g["errors"].items():
            assert float(found[(g["key"], "error_rate_by_class", cls)]) == v["rate"]


def test_tenant_bound_key_sees_only_its_tenant(env: Env) -> None:
    params = {"from": START.isoformat(), "to": END.isoformat(), "group_by": "feature"}
    body = env.get("/v1/kpis", key="acme", params=params).json()
    want = expected(env.events, env.book, group_by="feature", tenant="acme")
    assert body["tenant_id"] == "acme"
    for g in body["groups"]:
        _check_group(g, want[g["key"]])
    other = env.get("/v1/kpis", key="acme", params=params | {"tenant_id": "globex"})
    assert other.status_code == 403 and "globex" not in other.text
    report = env.get("/v1/kpis/report", key="acme", params={"month": "2026-11"}).json()
    assert {m["tenant_id"] for m in report["movers"]} == {"acme"}
    assert all(i["scope"].get("tenant_id") == "acme" for i in report["incidents"])


@pytest.mark.parametrize(("params", "field"), [
    ({"from": END.isoformat(), "to": START.isoformat()}, "to"),
    ({"from": "2026-11-01T00:00:00", "to": END.isoformat()}, "from"),
    ({"from": START.isoformat(), "to": END.isoformat(), "group_by": "model"}, "group_by"),
    ({"to": "2026-10-01T00:00:00Z"}, "to"),  # before the default from (this month's start)
])
def test_bad_period_is_refused_naming_the_field(env: Env, params: dict[str, str], field: str) -> None:
    resp = env.get("/v1/kpis", params=params)
    assert resp.status_code == 422 and field in resp.json()["detail"]


def test_roles(env: Env) -> None:
    params = {"from": START.isoformat(), "to": END.isoformat()}
    assert env.get("/v1/kpis", key="service", params=params).status_code == 403
    assert env.get("/v1/kpis", key="sre", params=params).status_code == 200
    assert env.get("/v1/kpis/report", key="service", params={"month": "2026-11"}).status_code == 403
    assert env.get("/v1/kpis/report", params={"month": "2026-13"}).status_code == 422


def test_report_has_incident_timelines_and_movers(env: Env) -> None:
    from flyball.control_plane.report import html_page, markdown

    body = env.get("/v1/kpis/report", params={"month": "2026-11"}).json()
    opened = [a for a in env.alerts if a.opened_at is not None and START <= a.opened_at < END]
    assert {i["alert_id"] for i in body["incidents"]} == {a.alert_id for a in opened}
    for inc in body["incidents"]:
        steps = [s["what"] for s in inc["timeline"]]
        assert steps[0] == "incident start (evidence window)" and "alert opened" in steps
        if inc["alert_id"] in env.mitigated:
            assert "action: applied" in steps
        assert [s["at"] for s in inc["timeline"]] == sorted(s["at"] for s in inc["timeline"])
    spend: dict[tuple[str, str], list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for e in env.events:
        ts = _utc(e["ts"])
        if e["event_type"] == "llm_call" and PREV <= ts < END:
            c = price(Usage(e["provider"], e["model"], ts, e["input_tokens"], e["output_tokens"],
                            e["cache_read_tokens"]), env.book).cost or Decimal(0)
            spend[(e["tenant_id"], e["feature"])][0 if ts >= START else 1] += c
    ranked = sorted(spend.items(), key=lambda kv: (-abs(kv[1][0] - kv[1][1]), kv[0]))[:10]
    assert [(m["tenant_id"], m["feature"], Decimal(m["change_usd"])) for m in body["movers"]] == \
        [(t, f, now - before) for (t, f), (now, before) in ranked]
    md, page = markdown(body), html_page(body)
    assert "## SLO attainment" in md and "## Incidents" in md and "<h2>Top spend movers" in page


def test_slos_are_versioned_and_audited(env: Env) -> None:
    shipped = env.get("/v1/slos", key="sre").json()
    assert {s["slo_id"] for s in shipped["slos"]} == {"availability", "latency"}
    bad = env.send("PUT", "/v1/slos", "admin", "slos: [{slo_id: x, kind: availability, target: 99.5}]")
    assert bad.status_code == 422 and "slos[0].target" in bad.json()["detail"]
    assert env.send("PUT", "/v1/slos", "sre", "slos: []").status_code == 403
    text = ("slos:\n  - {slo_id: availability, kind: availability, target: 0.999}\n"
            "  - {slo_id: latency, kind: latency, target: 0.95, latency_ms: 5000, ttft_ms: 1500,"
            " description: \"95% of each feature's successful calls answer within 5 s (streamed ones start within 1.5 s).\"}\n")
    put = env.send("PUT", "/v1/slos", "admin", text)
    assert put.status_code == 200, put.text
    body = put.json()
    assert body["version"] == shipped["version"] + 1
    versions = {s["slo_id"]: s["version"] for s in body["slos"]}
    assert versions == {"availability": 2, "latency": 1}
    assert env.get("/v1/slos", key="sre").json() == body
    history = env.get("/v1/slos/versions", key="admin").json()
    assert [h["version"] for h in history[:2]] == [body["version"], shipped["version"]]
    audit = env.get("/v1/actions", key="sre", params={"decision": "slos_updated"}).json()
    assert audit[0]["after"]["version"] == body["version"] and audit[0]["actor"].startswith("key:admin")
    # the KPIs now judge the stricter objective
    kp = env.get("/v1/kpis", params={"from": START.isoformat(), "to": END.isoformat()}).json()
    assert {s["target"] for s in kp["groups"][0]["slo"] if s["slo_id"] == "availability"} == {0.999}
    env.send("PUT", "/v1/slos", "admin", orjson.dumps(shipped).decode())


def test_report_overall_equals_the_ungrouped_kpis(env: Env) -> None:
    """The report adds up its per-feature groups into the overall figures: they equal /v1/kpis
    without group_by."""
    body = env.get("/v1/kpis/report", params={"month": "2026-11"}).json()
    plain = env.get("/v1/kpis", params={"from": START.isoformat(), "to": END.isoformat()}).json()["groups"][0]
    overall = body["overall"]
    for name in ("calls", "error_rate", "errors", "p95_latency_ms", "p95_ttft_ms", "cost_usd", "unpriced_calls",
                 "successful_outcomes", "cost_per_successful_outcome_usd", "cache", "safety", "incidents"):
        assert overall[name] == plain[name], name
    assert {(s["slo_id"], s["feature"]) for s in overall["slo"]} == {(s["slo_id"], s["feature"]) for s in plain["slo"]}
    if plain["forecast_usd"] is not None:
        # the forecast of the summed daily spend (the core is not additive over groups)
        assert Decimal(overall["forecast_usd"]) == Decimal(plain["forecast_usd"])


# ------------------------------------------------------------------ the documented queries
DOCS = Path(__file__).resolve().parents[2] / "docs" / "KPIS.md"


def documented_queries() -> dict[str, str]:
    """The ``-- kpi: name`` queries of docs/KPIS.md (November 2026, per feature), as written."""
    found = {}
    for block in re.findall(r"```sql\n(.*?)```", DOCS.read_text(), re.S):
        if m := re.match(r"-- kpi: (\w+)\n", block):
            found[m.group(1)] = block[m.end():]
    return found


def check_against_documented_queries(store: Any, served: dict[str, Any], book: PriceBook) -> None:
    """Every per-feature figure the rollups served equals what its documented query gives
    straight from the events."""
    docs = documented_queries()
    assert set(docs) >= {"calls", "p95", "successful_outcomes", "daily_spend", "cache", "safety"}

    def run(name: str) -> list[tuple[Any, ...]]:
        return store.call(store.query, docs[name], {})  # type: ignore[no-any-return]

    groups = {g["key"]: g for g in served["groups"]}
    calls = run("calls")
    assert sorted(groups) == [r[0] for r in calls]
    for feature, n, error, timeout, limited, filtered, cancelled, cost, unpriced in calls:
        g = groups[feature]
        assert g["calls"] == n and g["unpriced_calls"] == unpriced
        assert {c: v["calls"] for c, v in g["errors"].items()} == {c: v for c, v in (
            ("error", error), ("timeout", timeout), ("rate_limited", limited), ("filtered", filtered),
            ("cancelled", cancelled)) if v}
        assert Decimal(g["cost_usd"]) == Decimal(cost)
    for feature, latency, ttft in run("p95"):
        assert groups[feature]["p95_latency_ms"] == round(latency, 3)
        if groups[feature]["p95_ttft_ms"] is not None:
            assert groups[feature]["p95_ttft_ms"] == round(ttft, 3)
    outcomes = dict(run("successful_outcomes"))
    assert {k: g["successful_outcomes"] for k, g in groups.items()} == {k: outcomes.get(k, 0) for k in groups}
    for feature, inputs, cached, (models, tokens) in run("cache"):
        got = groups[feature]["cache"]
        assert (got["input_tokens"], got["cache_read_tokens"]) == (inputs, cached)
        saved = [cache_saving(book, provider, model, n, END - timedelta(milliseconds=1))
                 for (provider, model), n in zip(models, tokens, strict=True)]
        assert Decimal(got["saved_usd"]) == sum((s for s in saved if s is not None), Decimal(0))
        assert got["unpriced_cache_read_tokens"] == sum(n for s, n in zip(saved, tokens, strict=True) if s is None)
    safety: dict[str, dict[str, int]] = defaultdict(dict)
    for feature, category, n in run("safety"):
        safety[feature][category] = n
    assert {k: {c: v["triggers"] for c, v in g["safety"].items()} for k, g in groups.items()} == \
        {k: safety.get(k, {}) for k in groups}
    daily: dict[str, dict[date, Decimal]] = defaultdict(dict)
    for feature, day, cost in run("daily_spend"):
        daily[feature][day] = Decimal(cost)
    span = Span(START, END, "feature")
    for k, g in groups.items():
        want = forecast_for(daily.get(k, {}), span)
        assert (Decimal(g["forecast_usd"]) if g["forecast_usd"] is not None else None) == want


def test_documented_queries_give_the_served_figures(env: Env) -> None:
    served = env.get("/v1/kpis", params={"from": START.isoformat(), "to": END.isoformat(), "group_by": "feature"})
    check_against_documented_queries(env.store, served.json(), env.book)
