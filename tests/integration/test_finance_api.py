"""Finance over real HTTP on a real chDB store: price changes (admin, audited, applied to the
live pipeline), re-pricing with history and no double counting, budgets, forecast, tenant
isolation on every finance route, minute rollups that ignore duplicate inserts, and the
`flyball spend | reprice | reconcile` commands."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from flyball.control_plane.app import Deps, create_app
from flyball.control_plane.auth import KeyRing, Principal, Role
from flyball.control_plane.finance import Finance
from flyball.control_plane.policy_file import DEFAULT_POLICIES
from flyball.control_plane.runtime import load_prices
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.pricing import PriceBook
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore
from flyball.control_plane.migrations import ALL_MIGRATIONS
from tests.integration._helpers import serve_app

NOW = datetime.now(UTC).replace(microsecond=0)
DAY0 = datetime(NOW.year, NOW.month, 1, tzinfo=UTC)  # this month, so budgets and forecasts see it
# gpt-4o-mini: the built-in price (LiteLLM's, undated: from the epoch); a (fictional) cheaper version from DAY0 + 12 h
CUT = DAY0 + timedelta(hours=12)
OLD_IN, OLD_OUT = Decimal("0.00000015"), Decimal("0.0000006")
NEW_IN, NEW_OUT = Decimal("0.0000001"), Decimal("0.0000004")


def ev(tenant: str, ts: datetime, *, inp: int = 1000, out: int = 100, feature: str = "chat",
       model: str = "gpt-4o-mini", prompt_version: str = "") -> bytes:
    body: dict[str, Any] = {"schema_version": 1, "event_type": "llm_call", "event_id": str(uuid.uuid4()), "ts": ts.isoformat(),
                            "tenant_id": tenant, "feature": feature, "provider": "openai", "model": model,
                            "input_tokens": inp, "output_tokens": out}
    if prompt_version:
        body["attributes"] = {"prompt_version": prompt_version}
    return orjson.dumps(body)


@dataclass
class Env:
    url: str
    keys: dict[str, str]
    store: ClickHouseStore
    finance: Finance
    pipeline: Pipeline
    holder: dict[str, PriceBook]

    def call(self, method: str, path: str, key: str = "admin", **kw: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {self.keys[key]}",
                                                               **kw.pop("headers", {})}, timeout=30, **kw)

    def q(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self.store.call(self.store.query, sql, params or {})  # on the store's one thread

    def ingest(self, raws: list[bytes]) -> Any:
        result = self.pipeline.process(raws, now=NOW + timedelta(minutes=1))
        self.store.call(self.store.write_events, result.rows)
        return result


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    store = ClickHouseStore(f"chdb://{tmp_path_factory.mktemp('ch')}")
    store.migrate(ALL_MIGRATIONS)
    holder = {"book": load_prices(None)}
    finance = Finance(store, get_book=lambda: holder["book"], set_book=lambda b: holder.__setitem__("book", b))
    pipeline = Pipeline(lambda: holder["book"])  # the live worker reads the book per batch, like this
    keys = KeyRing()
    plain = {"admin": "k-admin"}
    keys.add("k-admin", Principal("admin", Role.ADMIN, name="root"))
    for role in Role:
        plain[str(role)], _ = keys.create(role)
    plain["finance-acme"], _ = keys.create(Role.FINANCE, tenant_id="acme")
    plain["admin-acme"], _ = keys.create(Role.ADMIN, tenant_id="acme")
    app = create_app(Deps(store=store, control=None, keys=keys, policies=lambda: DEFAULT_POLICIES,
                          prices=lambda: holder["book"], finance=finance))
    with serve_app(app) as url:
        e = Env(url, plain, store, finance, pipeline, holder)
        # 24 hourly calls for acme (12 before the price change, 12 after) and a steady globex
        e.ingest([ev("acme", DAY0 + timedelta(hours=h), prompt_version=f"v{1 + h % 2}") for h in range(12)]
                 + [ev("globex", DAY0 + timedelta(hours=h), inp=5000, feature="search") for h in range(24)])
        yield e
    store.close()


NEW_VERSION = {"provider": "openai", "model": "gpt-4o-mini", "effective_from": CUT.isoformat(),
               "input": str(NEW_IN), "output": str(NEW_OUT), "cache_read": "0.00000005", "source": "test price cut"}


def test_only_a_global_admin_may_change_prices_and_bad_entries_name_the_field(env: Env) -> None:
    assert env.call("POST", "/v1/prices", "finance", json=NEW_VERSION).status_code == 403
    assert env.call("POST", "/v1/prices", "admin-acme", json=NEW_VERSION).status_code == 403
    bad = env.call("POST", "/v1/prices", json={**NEW_VERSION, "output": "-1"})
    assert bad.status_code == 422 and "prices[0].output" in bad.json()["detail"]
    per_million = env.call("POST", "/v1/prices", json={**NEW_VERSION, "output": "0.6", "input": "1.5"})
    assert per_million.status_code == 422 and per_million.json()["detail"].startswith(
        "prices[0].input: 1.5 USD per token is not below the limit of 1 USD per token")


def test_price_change_mid_stream_prices_each_event_with_the_version_in_force(env: Env) -> None:
    r = env.call("POST", "/v1/prices", json=NEW_VERSION, params={"reason": "price cut"})
    assert r.status_code == 201, r.text
    assert r.json()["changes"][0]["version"] == f"openai/gpt-4o-mini@{CUT.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    # events after the change arrive; the live pipeline sees the new book on its next batch
    env.ingest([ev("acme", DAY0 + timedelta(hours=h), prompt_version=f"v{1 + h % 2}") for h in range(12, 24)])
    rows = env.q("SELECT ts, price_version, toString(cost_usd) FROM events FINAL "
                           "WHERE tenant_id = 'acme' ORDER BY ts")
    assert len(rows) == 24
    for ts, version, cost in rows:
        before = ts.replace(tzinfo=UTC) < CUT
        # the built-in entry comes from LiteLLM's undated catalog: in force from the epoch
        assert version.endswith("@1970-01-01T00:00:00Z" if before else f"@{CUT.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        assert Decimal(cost) == (1000 * OLD_IN + 100 * OLD_OUT if before else 1000 * NEW_IN + 100 * NEW_OUT)
    history = env.call("GET", "/v1/prices/history", "finance", params={"model": "gpt-4o-mini"}).json()
    assert history[-1]["actor"].startswith("key:") and history[-1]["reason"] == "price cut"
    listed = env.call("GET", "/v1/prices", "finance", params={"provider": "openai", "model": "gpt-4o-mini"}).json()
    assert [p["effective_from"] for p in listed] == ["1970-01-01T00:00:00+00:00", CUT.isoformat()]


def test_a_corrected_price_reprices_stored_events_once_and_keeps_history(env: Env) -> None:
    assert _acme_count(env) == 24  # runs after the mid-stream price change above (module state)
    before = Decimal(_spend(env, "acme")["total_usd"])
    fixed = {**NEW_VERSION, "input": "0.00000012", "source": "corrected"}  # the cut was announced wrong
    assert env.call("POST", "/v1/prices", json=fixed).json()["changes"][0]["version"].endswith("#r2")
    window = {"from": DAY0.isoformat(), "to": (DAY0 + timedelta(days=1)).isoformat(), "tenant_id": "acme"}
    dry = env.call("POST", "/v1/reprice", json={**window, "dry_run": True}).json()
    assert dry["changed"] == 12 and Decimal(_spend(env, "acme")["total_usd"]) == before
    result = env.call("POST", "/v1/reprice", json=window).json()
    assert result["changed"] == 12 and result["examined"] == 24
    expected = 12 * (1000 * OLD_IN + 100 * OLD_OUT) + 12 * (1000 * Decimal("0.00000012") + 100 * NEW_OUT)
    assert Decimal(_spend(env, "acme")["total_usd"]) == expected == Decimal(result["new_total_usd"])
    assert Decimal(result["delta_usd"]) == expected - before
    again = env.call("POST", "/v1/reprice", json=window).json()
    assert again["changed"] == 0 and Decimal(_spend(env, "acme")["total_usd"]) == expected  # never double counts
    hist = env.q("SELECT count(), countDistinct(event_id), any(new_version), any(actor) FROM reprices "
                           "WHERE reprice_id = {r:String}", {"r": result["reprice_id"]})
    assert hist[0][:2] == (12, 12) and hist[0][2].endswith("#r2") and hist[0][3].startswith("key:")
    assert env.call("POST", "/v1/reprice", "finance", json=window).status_code == 403


def test_price_changes_survive_a_restart(env: Env) -> None:
    restored = env.finance.restore_prices(load_prices(None))
    entry = restored.lookup("openai", "gpt-4o-mini", CUT)
    assert entry is not None and entry.effective_from == CUT


def test_spend_groups_by_prompt_version_and_csv_matches_json(env: Env) -> None:
    body = _spend(env, "acme", group_by="prompt_version,day")
    assert {r["prompt_version"] for r in body["rows"]} == {"v1", "v2"}
    assert sum(Decimal(r["cost_usd"]) for r in body["rows"]) == Decimal(body["total_usd"])
    csv_text = env.call("GET", "/v1/spend", "finance", headers={"Accept": "text/csv"},
                        params={"tenant_id": "acme", "group_by": "prompt_version,day"}).text
    lines = csv_text.strip().splitlines()
    assert lines[0] == "prompt_version,day,events,cost_usd,unpriced_events,late_events"
    assert [ln.split(",")[3] for ln in lines[1:]] == [r["cost_usd"] for r in body["rows"]]


def test_budget_crud_and_bad_input_names_the_field(env: Env) -> None:
    r = env.call("POST", "/v1/budgets", "finance-acme", json={"limit_usd": "0.01", "period": "monthly"})
    assert r.status_code == 201, r.text
    status = r.json()
    assert status["budget_id"] == "acme/*/monthly" and Decimal(status["spent_usd"]) == Decimal(_spend(env, "acme")["total_usd"])
    assert Decimal(status["used_pct"]) > 0
    bad = env.call("POST", "/v1/budgets", "finance", json={"tenant_id": "globex", "limit_usd": "-5"})
    assert bad.status_code == 422 and "limit_usd" in bad.text
    bad = env.call("POST", "/v1/budgets", "finance", json={"tenant_id": "globex", "limit_usd": "5", "period": "weekly"})
    assert bad.status_code == 422 and "period" in bad.text
    assert env.call("POST", "/v1/budgets", "sre", json={"tenant_id": "globex", "limit_usd": "5"}).status_code == 403
    assert env.call("POST", "/v1/budgets", "finance", json={"tenant_id": "globex", "limit_usd": "5"}).status_code == 201
    listed = env.call("GET", "/v1/budgets", "finance-acme").json()
    assert [b["budget_id"] for b in listed] == ["acme/*/monthly"]
    assert len(env.call("GET", "/v1/budgets", "finance").json()) == 2
    env.finance.load_budgets()  # persisted: a restart reads the same budgets
    assert {b.budget_id for b in env.finance.budget_list()} == {"acme/*/monthly", "globex/*/monthly"}
    assert env.call("DELETE", "/v1/budgets/globex/*/monthly", "finance-acme").status_code == 404
    assert env.call("DELETE", "/v1/budgets/globex/*/monthly", "finance").status_code == 200
    assert [b["budget_id"] for b in env.call("GET", "/v1/budgets", "finance").json()] == ["acme/*/monthly"]


def test_forecast_projects_each_tenant_to_the_end_of_the_period(env: Env) -> None:
    at = DAY0 + timedelta(days=1)
    body = env.call("GET", "/v1/spend/forecast", "finance", params={"at": at.isoformat()}).json()
    by = {f["tenant_id"]: f for f in body["forecasts"]}
    assert set(by) >= {"acme", "globex"}
    g = by["globex"]
    days_left = (datetime.fromisoformat(body["period_end"]) - at).total_seconds() / 86400
    per_day = 24 * (5000 * OLD_IN + 100 * OLD_OUT)
    assert Decimal(g["spent_usd"]) == per_day
    assert abs(Decimal(g["forecast_usd"]) - per_day * (1 + Decimal(repr(days_left)))) < Decimal("0.000002")
    assert Decimal(g["low_usd"]) <= Decimal(g["forecast_usd"]) <= Decimal(g["high_usd"])
    bad = env.call("GET", "/v1/spend/forecast", "finance", params={"period": "weekly"})
    assert bad.status_code == 422 and "period" in bad.text


@pytest.mark.parametrize(("method", "path", "kw"), [
    ("GET", "/v1/spend", {"params": {"tenant_id": "globex"}}),
    ("GET", "/v1/spend/forecast", {"params": {"tenant_id": "globex"}}),
    ("GET", "/v1/budgets", {"params": {"tenant_id": "globex"}}),
    ("POST", "/v1/budgets", {"json": {"tenant_id": "globex", "limit_usd": "1"}}),
    ("DELETE", "/v1/budgets/globex/*/monthly", {}),
])
def test_a_tenant_bound_key_never_sees_another_tenant(env: Env, method: str, path: str, kw: dict[str, Any]) -> None:
    r = env.call(method, path, "finance-acme", **kw)
    assert r.status_code in (403, 404)
    assert "globex" not in r.text


def test_tenant_bound_key_sees_only_its_tenant_in_grouped_results(env: Env) -> None:
    body = _spend(env, None, key="finance-acme", group_by="tenant_id")
    assert [r["tenant_id"] for r in body["rows"]] == ["acme"]
    fc = env.call("GET", "/v1/spend/forecast", "finance-acme").json()
    assert [f["tenant_id"] for f in fc["forecasts"]] == ["acme"]


def test_bad_spend_parameters_get_a_422_naming_the_parameter(env: Env) -> None:
    for params, name in (({"group_by": "planet"}, "group_by"), ({"from": "yesterday"}, "from"),
                         ({"to": "2026-01-01T00:00:00"}, "to")):
        r = env.call("GET", "/v1/spend", "finance", params=params)
        assert r.status_code == 422 and name in r.json()["detail"], (params, r.text)


def test_minute_rollups_count_a_duplicated_insert_once(env: Env) -> None:
    tenant = f"roll-{uuid.uuid4().hex[:6]}"
    result = env.ingest([ev(tenant, DAY0 + timedelta(hours=3, seconds=s)) for s in range(0, 600, 7)])
    env.store.call(env.store.write_events, result.rows)  # a replayed batch: the same rows again
    raw = env.q("SELECT count(), toString(sum(cost_usd)) FROM events WHERE tenant_id = {t:String}", {"t": tenant})
    exact = env.q("SELECT count(), toString(sum(cost_usd)) FROM events FINAL WHERE tenant_id = {t:String}",
                            {"t": tenant})
    assert raw[0][0] == 2 * exact[0][0]  # what a materialized view over inserts would have summed
    env.finance.refresh_rollups()
    rolled = env.q("SELECT sum(events), toString(sum(cost_usd)), count() FROM spend_minute FINAL "
                             "WHERE tenant_id = {t:String}", {"t": tenant})
    assert (rolled[0][0], Decimal(rolled[0][1])) == (exact[0][0], Decimal(exact[0][1]))
    assert rolled[0][2] == 10  # ten minutes
    env.finance.refresh_rollups()  # a second refresh replaces, never adds
    again = env.q("SELECT sum(events) FROM spend_minute FINAL WHERE tenant_id = {t:String}", {"t": tenant})
    assert again[0][0] == exact[0][0]


def _cli(env: Env, *args: str, key: str = "finance") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flyball.control_plane.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "FLYBALL_API_URL": env.url, "FLYBALL_API_KEY": env.keys[key]})


def test_flyball_spend_prints_a_table_with_the_api_total(env: Env) -> None:
    body = _spend(env, None, group_by="tenant_id")
    out = _cli(env, "spend", "--group-by", "tenant_id")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["tenant_id", "events", "cost_usd", "unpriced_events"]
    assert lines[-1].split()[:3] == ["TOTAL", str(body["events"]), body["total_usd"]]
    denied = _cli(env, "spend", "--tenant-id", "globex", key="finance-acme")
    assert denied.returncode == 2 and "403" in denied.stderr and "globex" not in denied.stderr


def test_flyball_reconcile_reports_the_difference_per_day_and_model(env: Env, tmp_path: Path) -> None:
    ours = _spend(env, "globex", group_by="day,model")["rows"]
    (row,) = ours
    day, cost = row["day"], Decimal(row["cost_usd"])
    export = tmp_path / "usage.csv"
    export.write_text(f"Date,Model,Cost\n{day},gpt-4o-mini,{cost + Decimal('0.5')}\n{day},gpt-4o,1.25\n")
    out = _cli(env, "reconcile", str(export), "--tenant-id", "globex")
    assert out.returncode == 1, out.stderr  # differences found
    table = {ln.split()[1]: ln.split() for ln in out.stdout.splitlines() if ln.startswith(day)}
    assert table["gpt-4o-mini"][2:] == [str(cost + Decimal("0.5")).rstrip("0"), str(cost).rstrip("0"), "-0.5"]
    assert table["gpt-4o"][2:] == ["1.25", "0", "-1.25"]
    export.write_text(f"day,model,cost_usd\n{day},gpt-4o-mini,{cost}\n")
    assert _cli(env, "reconcile", str(export), "--tenant-id", "globex").returncode == 0


def test_flyball_reprice_dry_run_reports_without_writing(env: Env) -> None:
    # globex's afternoon calls were stored before the price cut was posted: a reprice would fix them
    before = _spend(env, "globex")["total_usd"]
    args = ("reprice", "--from", DAY0.isoformat(), "--to", (DAY0 + timedelta(days=1)).isoformat(), "--dry-run")
    out = _cli(env, *args, key="admin")
    assert out.returncode == 0, out.stderr
    assert "would change 12" in out.stdout and "#r2" in out.stdout
    assert _spend(env, "globex")["total_usd"] == before
    assert "would change 12" in _cli(env, *args, key="admin").stdout  # nothing was written
    assert _cli(env, *args, key="finance").returncode == 2  # admin only


def _acme_count(env: Env) -> int:
    return int(env.q("SELECT count() FROM events FINAL WHERE tenant_id = 'acme'")[0][0])


def _spend(env: Env, tenant: str | None, *, key: str = "finance", group_by: str | None = None) -> dict[str, Any]:
    params = {k: v for k, v in (("tenant_id", tenant), ("group_by", group_by)) if v}
    r = env.call("GET", "/v1/spend", key, params=params)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]
