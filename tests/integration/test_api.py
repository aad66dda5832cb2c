"""The HTTP API over real HTTP on a real chDB store: auth, roles, tenant binding, spend math,
CSV/JSON agreement, and 4xx messages that name the field."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest

from flyball.control_plane.app import Deps, create_app
from flyball.control_plane.auth import KeyRing, Principal, Role
from flyball.control_plane.policy_file import DEFAULT_POLICIES
from flyball.control_plane.runtime import load_prices
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore
from flyball.control_plane.migrations import ALL_MIGRATIONS
from tests.integration._helpers import serve_app

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def _event(tenant: str, model: str, inp: int, out: int, ts: datetime, feature: str = "chat") -> bytes:
    return orjson.dumps({"schema_version": 1, "event_type": "llm_call", "event_id": str(uuid.uuid4()), "ts": ts.isoformat(),
                         "tenant_id": tenant, "feature": feature, "provider": "openai", "model": model,
                         "input_tokens": inp, "output_tokens": out})


class Api:
    def __init__(self, url: str, keys: dict[str, str]) -> None:
        self.url, self.keys = url, keys

    def get(self, path: str, key: str | None = "admin", **kw: object) -> httpx.Response:
        headers = dict(kw.pop("headers", {}) or {})  # type: ignore[call-overload]
        if key is not None:
            headers["Authorization"] = f"Bearer {self.keys.get(key, key)}"
        return httpx.get(self.url + path, headers=headers, timeout=10, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    path: Path = tmp_path_factory.mktemp("ch")
    store = ClickHouseStore(f"chdb://{path}")
    store.migrate(ALL_MIGRATIONS)
    book = load_prices(None)
    pipeline = Pipeline(lambda: book)
    raws = []
    for i in range(48):
        raws.append(_event("acme", "gpt-4o-mini", 1000 + i, 100, T0 + timedelta(hours=i)))
        raws.append(_event("globex", "gpt-4o", 2000, 50 + i, T0 + timedelta(hours=i), feature="search"))
    raws.append(_event("acme", "mystery-model", 10, 10, T0))
    result = pipeline.process(raws, now=T0 + timedelta(days=3))
    store.call(store.write_events, result.rows)
    keys = KeyRing()
    plain = {"admin": "k-admin"}
    keys.add("k-admin", Principal("admin", Role.ADMIN))
    for role in Role:
        key, _ = keys.create(role)
        plain[str(role)] = key
    plain["finance-acme"], _ = keys.create(Role.FINANCE, tenant_id="acme")
    app = create_app(Deps(store=store, control=None, keys=keys, policies=lambda: DEFAULT_POLICIES, prices=lambda: book))
    with serve_app(app) as url:
        yield Api(url, plain)
    store.close()


def test_healthz_needs_no_key(api: Api) -> None:
    assert api.get("/healthz", key=None).status_code == 200


@pytest.mark.parametrize("path", ["/metrics", "/v1/spend", "/v1/alerts", "/v1/directives", "/v1/actions",
                                  "/v1/prices", "/v1/policies"])
def test_every_route_but_healthz_needs_a_key(api: Api, path: str) -> None:
    assert api.get(path, key=None).status_code == 401
    assert api.get(path, key="not-a-key").status_code == 401


@pytest.mark.parametrize(("role", "path", "status"), [
    ("service", "/v1/spend", 403), ("service", "/v1/alerts", 403), ("service", "/v1/directives", 200),
    ("finance", "/v1/spend", 200), ("finance", "/v1/alerts", 403), ("finance", "/v1/actions", 403),
    ("sre", "/v1/alerts", 200), ("sre", "/v1/actions", 200), ("sre", "/v1/directives", 200),
    ("admin", "/v1/policies", 200), ("service", "/v1/policies", 403),
])
def test_roles_gate_routes(api: Api, role: str, path: str, status: int) -> None:
    assert api.get(path, key=role).status_code == status


def test_spend_total_is_exact_and_equals_the_sum_of_groups(api: Api) -> None:
    body = api.get("/v1/spend", params={"group_by": "tenant_id,day"}).json()
    assert Decimal(body["total_usd"]) == sum(Decimal(r["cost_usd"]) for r in body["rows"])
    acme = sum((Decimal(1000 + i) * Decimal("0.00000015") + 100 * Decimal("0.0000006") for i in range(48)), Decimal(0))
    one = api.get("/v1/spend", params={"tenant_id": "acme"}).json()
    assert Decimal(one["total_usd"]) == acme
    assert one["events"] == 49 and one["rows"][0]["unpriced_events"] == 1


def test_spend_csv_agrees_with_json(api: Api) -> None:
    params = {"group_by": ["tenant_id", "model"]}
    as_json = api.get("/v1/spend", params=params).json()["rows"]
    text = api.get("/v1/spend", params=params, headers={"Accept": "text/csv"}).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["tenant_id"], r["model"], r["cost_usd"], int(r["events"])) for r in rows] == \
           [(r["tenant_id"], r["model"], r["cost_usd"], r["events"]) for r in as_json]


def test_time_filters_bound_the_period(api: Api) -> None:
    body = api.get("/v1/spend", params={"tenant_id": "globex", "from": "2026-03-01T10:00:00Z",
                                        "to": "2026-03-01T13:00:00Z"}).json()
    assert body["events"] == 3


def test_tenant_bound_key_sees_only_its_tenant(api: Api) -> None:
    body = api.get("/v1/spend", key="finance-acme", params={"group_by": "tenant_id"}).json()
    assert [r["tenant_id"] for r in body["rows"]] == ["acme"]
    refused = api.get("/v1/spend", key="finance-acme", params={"tenant_id": "globex"})
    assert refused.status_code == 403 and "globex" not in refused.text


@pytest.mark.parametrize(("params", "field"), [
    ({"group_by": "colour"}, "group_by"), ({"from": "yesterday"}, "from"), ({"to": "2026-13-01"}, "to"),
])
def test_bad_parameters_get_a_422_naming_the_field(api: Api, params: dict[str, str], field: str) -> None:
    r = api.get("/v1/spend", params=params)
    assert r.status_code == 422 and field in r.json()["detail"]


def test_prices_route_lists_the_catalog_as_exact_decimals(api: Api) -> None:
    rows = api.get("/v1/prices", params={"model": "gpt-4o-mini"}).json()
    assert rows and rows[0]["input"] == "0.00000015" and rows[0]["output"] == "0.0000006"
