"""The migrations' DDL for where it runs: one server (as written), or a ClickHouse cluster, plus
TTL retention per table. A transformation of the statements in ``clickhouse.MIGRATIONS``, so
the schema is written once.

On a cluster (``FLYBALL_CLICKHOUSE_CLUSTER``) every statement runs ``ON CLUSTER``; a table
``t`` becomes ``t_local`` with the ``Replicated`` variant of its engine (the same version
column; replica path ``/clickhouse/tables/{shard}/{database}/t_local``, ``{replica}`` from
each server's macros) and ``t`` a ``Distributed`` table over it, so every query and insert
keeps the table names it has. The sharding key is the first column of the table's
``ORDER BY`` (hashed): rows that a ``ReplacingMergeTree`` deduplicates share it and so meet on
one shard, where ``FINAL`` sees them together (``events``: ``tenant_id``, so one tenant's
events and their deduplication live on one shard). Views run ``ON CLUSTER`` over the
``Distributed`` tables. ``ALTER TABLE ... ADD COLUMN`` goes to both tables.

TTL (``FLYBALL_CLICKHOUSE_TTL_DAYS``, e.g. ``{"events": 400, "webhook_deliveries": 30}``): an
``ALTER TABLE ... MODIFY TTL <time column> + INTERVAL n DAY`` per listed table, issued at
every migration (idempotent; a changed number of days takes effect). Rows older than that
are dropped by ClickHouse as parts merge. Tables of state (keys, budgets, policy versions,
detector checkpoints) have no time column here and refuse a TTL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

# the event-time column each table ages by
TIME_COLUMNS: Final = {
    "events": "ts", "alerts": "last_seen", "actions": "at", "spend_minute": "minute", "price_changes": "at",
    "reprices": "at", "alert_marks": "at", "webhook_deliveries": "at", "release_versions": "as_of",
}
_CREATE_TABLE = re.compile(
    r"^\s*CREATE TABLE IF NOT EXISTS (?P<name>\w+)\s*(?P<columns>\(.*\))\s*ENGINE\s*=\s*(?P<engine>\w+)"
    r"(?:\((?P<args>[^)]*)\))?(?P<rest>.*)$", re.S)
_ORDER_BY = re.compile(r"ORDER BY\s*(\((?P<list>[^)]*)\)|(?P<one>\w+))")
_ALTER = re.compile(r"^\s*ALTER TABLE (?P<name>\w+)(?P<rest>.*)$", re.S)
_CREATE_VIEW = re.compile(r"^\s*CREATE (?P<kind>MATERIALIZED VIEW|VIEW) IF NOT EXISTS (?P<name>\w+)(?P<rest>.*)$", re.S)
_DROP = re.compile(r"^\s*DROP (?P<kind>VIEW|TABLE) IF EXISTS (?P<name>\w+)\s*$", re.S)


@dataclass(frozen=True, slots=True)
class DdlOptions:
    cluster: str | None = None
    ttl_days: Mapping[str, int] = field(default_factory=dict)
    local_suffix: str = "_local"
    zk_path: str = "/clickhouse/tables/{shard}/{database}/"

    def __post_init__(self) -> None:
        for table, days in self.ttl_days.items():
            if table not in TIME_COLUMNS:
                raise ValueError(f"clickhouse_ttl_days: {table!r} has no time column to age by "
                                 f"(tables with one: {', '.join(sorted(TIME_COLUMNS))})")
            if not isinstance(days, int) or days < 1:
                raise ValueError(f"clickhouse_ttl_days: {table}: a whole number of days >= 1, not {days!r}")
        if self.cluster is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.cluster):
            raise ValueError(f"clickhouse_cluster: {self.cluster!r} is not a cluster name")


def transform(sql: str, options: DdlOptions) -> list[str]:
    """The statements that apply one migration statement under ``options``."""
    if options.cluster is None:
        return [sql]
    on = f" ON CLUSTER {_quote(options.cluster)}"
    if m := _CREATE_TABLE.match(sql):
        return _create_table(m, options, on)
    if m := _ALTER.match(sql):
        local = m["name"] + options.local_suffix
        if m["rest"].lstrip().startswith("ADD INDEX"):  # a data-skipping index belongs to the stored table only
            return [f"ALTER TABLE {local}{on}{m['rest']}"]
        return [f"ALTER TABLE {local}{on}{m['rest']}", f"ALTER TABLE {m['name']}{on}{m['rest']}"]
    if m := _CREATE_VIEW.match(sql):
        return [f"CREATE {m['kind']} IF NOT EXISTS {m['name']}{on}{m['rest']}"]
    if m := _DROP.match(sql):
        out = [f"DROP {m['kind']} IF EXISTS {m['name']}{on}"]
        if m["kind"] == "TABLE":
            out.append(f"DROP TABLE IF EXISTS {m['name']}{options.local_suffix}{on}")
        return out
    raise ValueError(f"no cluster form known for this migration statement: {sql.strip()[:80]!r}")


def _create_table(m: re.Match[str], options: DdlOptions, on: str) -> list[str]:
    name, engine, args, rest = m["name"], m["engine"], (m["args"] or "").strip(), m["rest"]
    local = name + options.local_suffix
    if not engine.endswith("MergeTree"):
        raise ValueError(f"{name}: engine {engine} has no replicated form")
    replica_args = [f"'{options.zk_path}{local}'", "'{replica}'"] + ([args] if args else [])
    order = _ORDER_BY.search(rest)
    if order is None:
        raise ValueError(f"{name}: no ORDER BY to take a sharding key from")
    first = (order["list"] or order["one"]).split(",")[0].strip()
    return [
        f"CREATE TABLE IF NOT EXISTS {local}{on} {m['columns']} ENGINE = Replicated{engine}({', '.join(replica_args)})"
        f"{rest}",
        f"CREATE TABLE IF NOT EXISTS {name}{on} AS {local} "
        f"ENGINE = Distributed({_quote(options.cluster or '')}, currentDatabase(), {local}, cityHash64({first}))",
    ]


def ttl_statements(options: DdlOptions) -> list[str]:
    """``MODIFY TTL`` for every table with a retention (run after the migrations, every time)."""
    on = f" ON CLUSTER {_quote(options.cluster)}" if options.cluster else ""
    suffix = options.local_suffix if options.cluster else ""
    return [f"ALTER TABLE {table}{suffix}{on} MODIFY TTL toDateTime({TIME_COLUMNS[table]}) + INTERVAL {days} DAY"
            for table, days in sorted(options.ttl_days.items())]


def _quote(name: str) -> str:
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"
