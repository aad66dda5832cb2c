"""The Grafana dashboards (``grafana/``): every SQL query of the ClickHouse dashboard runs on
chDB against the real migrated schema and data written by the real pipeline, with Grafana's
macros substituted, so a renamed column or table breaks the build; every metric the Prometheus
dashboard plots is one the API's /metrics exports."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from flyball.control_plane.app import Deps, create_app
from flyball.control_plane.auth import KeyRing, Principal, Role
from flyball.control_plane.finance import Finance
from flyball.control_plane.policy_file import DEFAULT_POLICIES
from flyball.control_plane.runtime import System, load_prices
from flyball.control_plane.settings import Settings
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore
from flyball.control_plane.migrations import ALL_MIGRATIONS
from tests.integration._helpers import serve_app

GRAFANA = Path(__file__).parents[2] / "grafana"
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
FROM, TO = T0 - timedelta(hours=1), T0 + timedelta(hours=2)


def targets(name: str) -> list[tuple[str, dict[str, Any]]]:
    dashboard = json.loads((GRAFANA / name).read_text())
    return [(p["title"], t) for p in dashboard["panels"] for t in p["targets"]]


def substitute(sql: str) -> str:
    """Grafana's macros and template variables as the ClickHouse data source expands them."""
    def time_filter(m: re.Match[str]) -> str:
        col = m.group(1)
        return (f"{col} >= toDateTime64('{FROM:%Y-%m-%d %H:%M:%S}', 3, 'UTC') "
                f"AND {col} <= toDateTime64('{TO:%Y-%m-%d %H:%M:%S}', 3, 'UTC')")
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", time_filter, sql)
    sql = re.sub(r"\$__timeInterval\(([^)]+)\)", r"toStartOfInterval(\1, INTERVAL 60 second)", sql)
    sql = sql.replace("$__fromTime", f"toDateTime('{FROM:%Y-%m-%d %H:%M:%S}', 'UTC')")
    sql = sql.replace("$__toTime", f"toDateTime('{TO:%Y-%m-%d %H:%M:%S}', 'UTC')").replace("$__interval_s", "60")
    sql = sql.replace("${tenant:singlequote}", "'acme', 'globex'")
    assert "$" not in sql, f"an unsubstituted macro or variable: {sql}"
    return sql


def _event(kind: str, ts: datetime, **fields: Any) -> bytes:
    return orjson.dumps({"schema_version": 1, "event_type": kind, "event_id": str(uuid.uuid4()),
                         "ts": ts.isoformat(), "tenant_id": "acme",
                         "feature": "chat", **fields})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseStore]:
    store = ClickHouseStore(f"chdb://{tmp_path_factory.mktemp('grafana')}")
    store.migrate(ALL_MIGRATIONS)
    book = load_prices(None)
    raws = []
    for i in range(60):
        ts = T0 + timedelta(seconds=30 * i)
        raws.append(_event("llm_call", ts, provider="openai", model="gpt-4o-mini", input_tokens=1000 + i,
                           output_tokens=100, latency_ms=200.0 + i, status="ok" if i % 5 else "rate_limited"))
        raws.append(_event("tool_call", ts, tool_name="sql", status="ok" if i % 3 else "error"))
    raws.append(_event("llm_call", T0, provider="openai", model="mystery", input_tokens=5, output_tokens=5))
    raws.append(_event("safety_trigger", T0, filter_name="pii-filter", category="pii", action="redacted"))
    store.call(store.write_events, Pipeline(lambda: book).process(raws, now=None).rows)
    Finance(store, get_book=lambda: book, set_book=lambda b: None).refresh_rollups()
    scope = '{"tenant_id":"acme"}'
    store.call(store.write_alerts, [("a1", "cost_spike", "tenant_id=acme", scope, "warning", "open", T0, T0, "{}", T0)])
    store.call(store.write_actions, [("x1", T0, "issued", "d1", "tenant_id=acme", "acme", "a1", "p1", "flyball",
                                      "cost spike", "", "{}", "{}")])
    yield store
    store.close()


@pytest.mark.parametrize(("title", "target"), targets("flyball-clickhouse.json"), ids=lambda v: v if isinstance(v, str) else "")
def test_every_clickhouse_panel_query_runs_on_the_real_schema(store: ClickHouseStore, title: str,
                                                             target: dict[str, Any]) -> None:
    assert target["datasource"]["type"] == "grafana-clickhouse-datasource"
    rows = store.call(store.query, substitute(target["rawSql"]))
    assert rows, f"{title}: no rows over data that should fill it"


def test_the_tenant_variable_query_runs(store: ClickHouseStore) -> None:
    dashboard = json.loads((GRAFANA / "flyball-clickhouse.json").read_text())
    tenant = next(v for v in dashboard["templating"]["list"] if v["name"] == "tenant")
    assert [r[0] for r in store.call(store.query, tenant["query"])] == ["acme"]


def test_panel_figures_match_the_data(store: ClickHouseStore) -> None:
    by_title = dict(targets("flyball-clickhouse.json"))
    errors = store.call(store.query, substitute(by_title["Error rate by class"]["rawSql"]))
    assert {r[1] for r in errors} == {"rate_limited"}
    assert sum(r[2] for r in errors) > 0 and all(0 < r[2] <= 1 for r in errors)
    unpriced = store.call(store.query, substitute(by_title["Unpriced LLM calls by model"]["rawSql"]))
    assert [(r[1], r[2]) for r in unpriced] == [("mystery", 1)]


def test_every_prometheus_metric_plotted_is_exported(tmp_path: Path) -> None:
    """The names come from the same stats the running system registers (System.stats)."""
    from flyball.control_plane.otlp import OtlpOptions
    from flyball.control_plane.receiver import OtlpReceiver
    from flyball.stream_processors.ingest import IngestStats

    class Ingest:  # the worker's stats port, as System._deps reads it
        stats = IngestStats()
        ready = None
        running = False

    class Control:
        def active(self) -> list[Any]:
            return []

    system = System(Settings(data_dir=tmp_path))
    system.ingest = Ingest()  # type: ignore[assignment]  # a stand-in with the attributes _deps reads
    system.control = Control()  # type: ignore[assignment]
    system.otlp = OtlpReceiver("127.0.0.1:1", OtlpOptions())
    keys = KeyRing()
    keys.add("k", Principal("admin", Role.ADMIN))
    stats = system.stats()
    app = create_app(Deps(store=None, control=None, keys=keys, policies=lambda: DEFAULT_POLICIES, prices=lambda: None,
                          stats=stats))
    with serve_app(app) as url:
        text = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer k"}, timeout=10).text
    exported = set(re.findall(r"^(flyball_[a-z_]+) ", text, re.M))
    plotted = {name for _, t in targets("flyball-metrics.json") for name in re.findall(r"flyball_[a-z_]+", t["expr"])}
    assert plotted and plotted <= exported, plotted - exported
