"""The cluster form and TTLs of the migrations (``stream_processors/sinks/ddl.py``): the cluster
DDL is checked statement by statement and parsed by ClickHouse's own parser (chDB's
``formatQuery``: no cluster can run here); the TTL variant runs on chDB and drops old rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from flyball.control_plane.runtime import load_prices
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.sinks.clickhouse import _SCHEMA_MIGRATIONS, ClickHouseStore
from flyball.stream_processors.sinks.ddl import DdlOptions, transform, ttl_statements
from flyball.control_plane.migrations import ALL_MIGRATIONS
from flyball.control_plane.migrations import ALL_MIGRATIONS as MIGRATIONS  # every table, worker first

CLUSTER = DdlOptions(cluster="flyball_cluster", ttl_days={"events": 400, "webhook_deliveries": 30})
ALL = [(0, _SCHEMA_MIGRATIONS), *MIGRATIONS]


def test_without_a_cluster_the_migrations_are_unchanged() -> None:
    assert all(transform(sql, DdlOptions()) == [sql] for _, sql in ALL)


def test_cluster_form_of_every_table() -> None:
    for version, sql in ALL:
        stmts = transform(sql, CLUSTER)
        assert all(" ON CLUSTER 'flyball_cluster'" in s for s in stmts), (version, stmts)
        if "CREATE TABLE" in sql:
            local, dist = stmts
            name = dist.split()[5]
            assert local.split()[5] == name + "_local"
            assert "ENGINE = Replicated" in local and f"'/clickhouse/tables/{{shard}}/{{database}}/{name}_local', '{{replica}}'" in local
            assert f"ENGINE = Distributed('flyball_cluster', currentDatabase(), {name}_local, cityHash64(" in dist
    events_local, events = transform(MIGRATIONS[0][1], CLUSTER)
    # the version-less ReplacingMergeTree keeps its ordering, partitioning; sharded by tenant
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/events_local', '{replica}')" in events_local
    assert "PARTITION BY toYYYYMM(ts)" in events_local and "ORDER BY (tenant_id, toDate(ts), event_id)" in events_local
    assert events.endswith("cityHash64(tenant_id))")
    alerts_local, _ = transform(dict(MIGRATIONS)[2], CLUSTER)
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/alerts_local', '{replica}', recorded_at)" in alerts_local
    add = transform(dict(MIGRATIONS)[10], CLUSTER)
    assert [s.split()[2] for s in add] == ["events_local", "events"]  # a new column on both tables
    assert transform(dict(MIGRATIONS)[24], CLUSTER)[1].startswith("DROP TABLE IF EXISTS safety_rates_minute_local")
    index = transform(dict(MIGRATIONS)[79], CLUSTER)  # a skipping index: on the stored table, not the Distributed one
    assert len(index) == 1 and index[0].startswith("ALTER TABLE events_local ON CLUSTER")
    assert ttl_statements(CLUSTER) == [
        "ALTER TABLE events_local ON CLUSTER 'flyball_cluster' MODIFY TTL toDateTime(ts) + INTERVAL 400 DAY",
        "ALTER TABLE webhook_deliveries_local ON CLUSTER 'flyball_cluster' MODIFY TTL toDateTime(at) + INTERVAL 30 DAY"]


def test_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="api_keys"):
        DdlOptions(ttl_days={"api_keys": 30})
    with pytest.raises(ValueError, match="whole number"):
        DdlOptions(ttl_days={"events": 0})
    with pytest.raises(ValueError, match="cluster name"):
        DdlOptions(cluster="x'; DROP TABLE events")


def test_clickhouse_parses_every_cluster_statement(tmp_path: Path) -> None:
    store = ClickHouseStore(f"chdb://{tmp_path}/parse")
    try:
        for _, sql in ALL:
            for stmt in [*transform(sql, CLUSTER)]:
                formatted = store.call(store.query, "SELECT formatQuery({q:String})", {"q": stmt})[0][0]
                assert "ON CLUSTER" in formatted
        for stmt in ttl_statements(CLUSTER):
            store.call(store.query, "SELECT formatQuery({q:String})", {"q": stmt})
    finally:
        store.close()


def test_ttl_on_chdb_drops_rows_older_than_the_retention(tmp_path: Path) -> None:
    store = ClickHouseStore(f"chdb://{tmp_path}/ttl", DdlOptions(ttl_days={"events": 30}))
    try:
        store.migrate(ALL_MIGRATIONS)
        create = store.call(store.query, "SELECT create_table_query FROM system.tables WHERE name = 'events' "
                                         "AND database = currentDatabase()")[0][0]
        assert "TTL toDateTime(ts) + toIntervalDay(30)" in create
        now = datetime.now(UTC)
        book = load_prices(None)
        raws = [orjson.dumps({"schema_version": 1, "event_type": "llm_call", "event_id": str(uuid.uuid4()), "ts": ts.isoformat(),
                              "tenant_id": "acme", "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 10, "output_tokens": 0})
                for ts in (now - timedelta(days=90), now - timedelta(days=1))]
        store.call(store.write_events, Pipeline(lambda: book).process(raws, now=None).rows)
        store.call(store.command, "OPTIMIZE TABLE events FINAL")
        kept = store.call(store.query, "SELECT ts FROM events")
        assert len(kept) == 1 and kept[0][0].replace(tzinfo=UTC) > now - timedelta(days=2)
        # a second migrate leaves the TTL (no rewrite); a changed retention replaces it
        assert store.migrate(ALL_MIGRATIONS) == []
        store.ddl = DdlOptions(ttl_days={"events": 60})
        store.migrate(ALL_MIGRATIONS)
        create = store.call(store.query, "SELECT create_table_query FROM system.tables WHERE name = 'events' "
                                         "AND database = currentDatabase()")[0][0]
        assert "toIntervalDay(60)" in create
    finally:
        store.close()
