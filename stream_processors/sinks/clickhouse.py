"""ClickHouse port: migrations, batched writes, and the queries the API needs.

The same code talks to the embedded chDB engine (``chdb:///path``, clickhouse-connect's own
chdb backend) and to a ClickHouse server (``http://host:8123``). clickhouse-connect is
synchronous and chDB allows one process per data directory, so every call goes through one
dedicated thread (``run``) and the owner of a store is the only user of its path.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import clickhouse_connect
import structlog
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from flyball.stream_processors.errors import PermanentError, TemporaryError
from flyball.stream_processors.pipeline import EVENT_COLUMNS

from .ddl import DdlOptions, transform, ttl_statements

log = structlog.get_logger(__name__)
T = TypeVar("T")

_SCHEMA_MIGRATIONS = """
    CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, applied_at DateTime64(3, 'UTC'))
    ENGINE = MergeTree ORDER BY version
    """
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
    CREATE TABLE IF NOT EXISTS events (
        event_id UUID,
        ts DateTime64(3, 'UTC'),
        event_type LowCardinality(String),
        tenant_id LowCardinality(String),
        feature LowCardinality(String),
        service LowCardinality(String),
        environment LowCardinality(String),
        request_id String,
        trace_id String,
        provider LowCardinality(String),
        model LowCardinality(String),
        input_tokens UInt64,
        output_tokens UInt64,
        cache_read_tokens UInt64,
        cache_write_tokens UInt64,
        reasoning_tokens UInt64,
        latency_ms Float64,
        status LowCardinality(String),
        tool_name LowCardinality(String),
        category LowCardinality(String),
        index_name LowCardinality(String),
        cost_usd Nullable(Decimal(38, 12)),
        price_version LowCardinality(String),
        unpriced UInt8,
        ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
    ) ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMM(ts)
    ORDER BY (tenant_id, toDate(ts), event_id)
    """),
    (2, """
    CREATE TABLE IF NOT EXISTS alerts (
        alert_id String,
        kind LowCardinality(String),
        scope_key String,
        scope String,
        severity LowCardinality(String),
        status LowCardinality(String),
        first_seen DateTime64(3, 'UTC'),
        last_seen DateTime64(3, 'UTC'),
        body String,
        recorded_at DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(recorded_at)
    ORDER BY (alert_id)
    """),
    (3, """
    CREATE TABLE IF NOT EXISTS actions (
        action_id String,
        at DateTime64(3, 'UTC'),
        decision LowCardinality(String),
        directive_id String,
        scope_key String,
        tenant_id String,
        alert_id String,
        policy_id String,
        actor String,
        reason String,
        before String,
        after String,
        evidence String
    ) ENGINE = MergeTree
    ORDER BY (at, action_id)
    """),
    # 30-39: control plane state (API keys, policy versions, alert acks/silences, webhook deliveries)
    (30, """
    CREATE TABLE IF NOT EXISTS api_keys (
        key_hash String,
        key_id String,
        role LowCardinality(String),
        tenant_id Nullable(String),
        name String,
        created_by String,
        created_at DateTime64(3, 'UTC'),
        revoked_at Nullable(DateTime64(3, 'UTC')),
        updated_at DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(updated_at)
    ORDER BY (key_hash)
    """),
    (31, """
    CREATE TABLE IF NOT EXISTS policy_versions (
        version UInt32,
        at DateTime64(3, 'UTC'),
        actor String,
        source String,
        sha256 String,
        body String
    ) ENGINE = MergeTree
    ORDER BY (version, at)
    """),
    (32, """
    CREATE TABLE IF NOT EXISTS alert_marks (
        mark_id String,
        at DateTime64(3, 'UTC'),
        alert_id String,
        alert_key String,
        mark LowCardinality(String),
        actor String,
        until Nullable(DateTime64(3, 'UTC')),
        note String
    ) ENGINE = MergeTree
    ORDER BY (at, mark_id)
    """),
    (33, """
    CREATE TABLE IF NOT EXISTS webhook_deliveries (
        delivery_id String,
        at DateTime64(3, 'UTC'),
        target String,
        format LowCardinality(String),
        event LowCardinality(String),
        dedupe_key String,
        attempt UInt16,
        status_code UInt16,
        ok UInt8,
        error String
    ) ENGINE = MergeTree
    ORDER BY (at, delivery_id)
    """),
    # 10-19: finance (issue 4). Money columns are Decimal(38, 12), never Float.
    (10, """
    ALTER TABLE events
        ADD COLUMN IF NOT EXISTS service_tier LowCardinality(String) DEFAULT '',
        ADD COLUMN IF NOT EXISTS cache_write_1h_tokens UInt64 DEFAULT 0,
        ADD COLUMN IF NOT EXISTS prompt_version LowCardinality(String) DEFAULT '',
        ADD COLUMN IF NOT EXISTS late UInt8 DEFAULT 0
    """),
    (11, """
    CREATE TABLE IF NOT EXISTS price_changes (
        change_id String,
        at DateTime64(3, 'UTC'),
        actor String,
        provider LowCardinality(String),
        model LowCardinality(String),
        effective_from DateTime64(3, 'UTC'),
        version String,
        previous_version String,
        entry String,
        previous String,
        reason String
    ) ENGINE = MergeTree
    ORDER BY (at, change_id)
    """),
    (12, """
    CREATE TABLE IF NOT EXISTS reprices (
        reprice_id String,
        at DateTime64(3, 'UTC'),
        actor String,
        event_id UUID,
        tenant_id LowCardinality(String),
        ts DateTime64(3, 'UTC'),
        model LowCardinality(String),
        old_cost Nullable(Decimal(38, 12)),
        new_cost Nullable(Decimal(38, 12)),
        old_version String,
        new_version String
    ) ENGINE = MergeTree
    ORDER BY (reprice_id, event_id)
    """),
    (13, """
    CREATE TABLE IF NOT EXISTS budgets (
        budget_id String,
        tenant_id String,
        feature Nullable(String),
        period LowCardinality(String),
        limit_usd Decimal(38, 12),
        thresholds Array(UInt16),
        actor String,
        updated_at DateTime64(3, 'UTC'),
        deleted UInt8
    ) ENGINE = ReplacingMergeTree(updated_at)
    ORDER BY budget_id
    """),
    (14, """
    CREATE TABLE IF NOT EXISTS spend_minute (
        tenant_id LowCardinality(String),
        minute DateTime('UTC'),
        feature LowCardinality(String),
        provider LowCardinality(String),
        model LowCardinality(String),
        prompt_version LowCardinality(String),
        events UInt64,
        unpriced_events UInt64,
        input_tokens UInt64,
        output_tokens UInt64,
        cost_usd Decimal(38, 12),
        computed_at DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(computed_at)
    PARTITION BY toYYYYMM(minute)
    ORDER BY (tenant_id, minute, feature, provider, model, prompt_version)
    """),
    # 20-29: detectors (issue 5). Safety-trigger rates per minute, kept by ClickHouse itself as
    # events are inserted (query with sum(triggers) ... GROUP BY: parts are summed lazily).
    (20, """
    CREATE TABLE IF NOT EXISTS safety_rates_minute (
        minute DateTime('UTC'),
        tenant_id LowCardinality(String),
        feature LowCardinality(String),
        category LowCardinality(String),
        action LowCardinality(String),
        triggers UInt64
    ) ENGINE = SummingMergeTree(triggers)
    PARTITION BY toYYYYMM(minute)
    ORDER BY (tenant_id, minute, feature, category, action)
    """),
    (21, """
    CREATE MATERIALIZED VIEW IF NOT EXISTS safety_rates_minute_mv TO safety_rates_minute AS
    SELECT toStartOfMinute(ts) AS minute, tenant_id, feature, category, status AS action, count() AS triggers
    FROM events WHERE event_type = 'safety_trigger'
    GROUP BY minute, tenant_id, feature, category, action
    """),
    # detector baselines, checkpointed by the worker after a commit and restored at start
    (22, """
    CREATE TABLE IF NOT EXISTS detector_state (
        group_id String,
        saved_at DateTime64(3, 'UTC'),
        watermark Nullable(DateTime64(3, 'UTC')),
        state String CODEC(ZSTD(3))
    ) ENGINE = ReplacingMergeTree(saved_at)
    ORDER BY group_id
    """),
    # safety rates: a materialized view summed every insert, so a batch re-inserted after a
    # crash (before its commit) was counted twice. A plain view over the deduplicated events
    # (FINAL) counts each event_id once, like spend.
    (23, "DROP VIEW IF EXISTS safety_rates_minute_mv"),
    (24, "DROP TABLE IF EXISTS safety_rates_minute"),
    (25, """
    CREATE VIEW IF NOT EXISTS safety_rates_minute AS
    SELECT toStartOfMinute(ts) AS minute, tenant_id, feature, category, status AS action, count() AS triggers
    FROM events FINAL WHERE event_type = 'safety_trigger'
    GROUP BY minute, tenant_id, feature, category, action
    """),
    # 40-49: SLOs and KPIs. The event fields the SLIs and KPIs read (streamed calls' time to first
    # token, error class, feedback score and target, an explicit request outcome).
    (40, """
    ALTER TABLE events
        ADD COLUMN IF NOT EXISTS ttft_ms Nullable(Float64),
        ADD COLUMN IF NOT EXISTS stream UInt8 DEFAULT 0,
        ADD COLUMN IF NOT EXISTS error_type LowCardinality(String) DEFAULT '',
        ADD COLUMN IF NOT EXISTS score Nullable(Float64),
        ADD COLUMN IF NOT EXISTS target_event_id String DEFAULT '',
        ADD COLUMN IF NOT EXISTS outcome LowCardinality(String) DEFAULT ''
    """),
    (41, """
    CREATE TABLE IF NOT EXISTS slo_versions (
        version UInt32,
        at DateTime64(3, 'UTC'),
        actor String,
        source String,
        sha256 String,
        body String
    ) ENGINE = MergeTree
    ORDER BY (version, at)
    """),
    # good/bad calls per SLO, subject and minute, recomputed from events FINAL (so a re-inserted
    # batch counts once) for the minutes that received rows, like spend_minute
    (42, """
    CREATE TABLE IF NOT EXISTS slo_minute (
        slo_id LowCardinality(String),
        slo_version UInt32,
        feature LowCardinality(String),
        tenant_id LowCardinality(String),
        minute DateTime('UTC'),
        total UInt64,
        bad UInt64,
        computed_at DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(computed_at)
    PARTITION BY toYYYYMM(minute)
    ORDER BY (slo_id, feature, tenant_id, minute)
    """),
    # the KPI report's daily rollups, recomputed from events FINAL for the days that received
    # rows (control_plane/kpi_rollup.py): llm calls per (tenant, feature, model, UTC day) with p95
    # states, and each SLO's eligible/bad calls per (tenant, feature, day)
    (43, """
    CREATE TABLE IF NOT EXISTS kpi_day (
        tenant_id LowCardinality(String),
        feature LowCardinality(String),
        provider LowCardinality(String),
        model LowCardinality(String),
        day Date,
        calls UInt64,
        ok UInt64,
        error UInt64,
        timeout UInt64,
        rate_limited UInt64,
        filtered UInt64,
        cancelled UInt64,
        cost_usd Decimal(38, 12),
        unpriced UInt64,
        input_tokens UInt64,
        cache_read_tokens UInt64,
        streamed_ok UInt64,
        latency_ok AggregateFunction(quantileBFloat16(0.95), Float64),
        ttft_ok AggregateFunction(quantileBFloat16(0.95), Float64),
        computed_at DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(computed_at)
    PARTITION BY toYYYYMM(day)
    ORDER BY (day, tenant_id, feature, provider, model)
    """),
    (44, """
    CREATE TABLE IF NOT EXISTS slo_day (
        slo_id LowCardinality(String),
        slo_version UInt32,
        tenant_id LowCardinality(String),
        feature LowCardinality(String),
        day Date,
        total UInt64,
        bad UInt64,
        computed_at DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(computed_at)
    PARTITION BY toYYYYMM(day)
    ORDER BY (slo_id, slo_version, day, tenant_id, feature)
    """),
    # finance: OpenAI's 12-hour cache writes have their own rate (the 1-hour ones are column 10's)
    (26, "ALTER TABLE events ADD COLUMN IF NOT EXISTS cache_write_12h_tokens UInt64 DEFAULT 0"),
    # 50-59: the console (control_plane/ui/queries.py): a per-minute rollup of every event kind,
    # recomputed from events FINAL for the minutes that received rows, so each event counts once
    (50, """
    CREATE TABLE IF NOT EXISTS console_minute (
        tenant_id LowCardinality(String),
        minute DateTime('UTC'),
        event_type LowCardinality(String),
        feature LowCardinality(String),
        provider LowCardinality(String),
        model LowCardinality(String),
        prompt_version LowCardinality(String),
        status LowCardinality(String),
        category LowCardinality(String),
        events UInt64,
        unpriced_events UInt64,
        input_tokens UInt64,
        output_tokens UInt64,
        cache_read_tokens UInt64,
        cache_write_tokens UInt64,
        cost_usd Decimal(38, 12),
        latency_p95 AggregateFunction(quantileTDigest(0.95), Float64),
        computed_at DateTime64(3, 'UTC'),
        service_tier LowCardinality(String),
        late_events UInt64
    ) ENGINE = ReplacingMergeTree(computed_at)
    PARTITION BY toYYYYMM(minute)
    ORDER BY (tenant_id, minute, event_type, feature, provider, model, prompt_version, status, category, service_tier)
    """),
    # the request page looks events up by request_id or trace_id across all days
    (51, "ALTER TABLE events ADD INDEX IF NOT EXISTS console_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 4"),
    (52, "ALTER TABLE events ADD INDEX IF NOT EXISTS console_trace_id trace_id TYPE bloom_filter(0.01) GRANULARITY 4"),
    # coarser tiers for long ranges, recomputed from the tier below (``minute`` holds the bucket start)
    (53, "CREATE TABLE IF NOT EXISTS console_hour AS console_minute"),
    (54, "CREATE TABLE IF NOT EXISTS console_day AS console_minute"),
    # when the rollups were last complete: rows ingested since then are read from events
    (55, "CREATE TABLE IF NOT EXISTS console_rollup_state (complete_since DateTime64(3, 'UTC')) "
         "ENGINE = ReplacingMergeTree(complete_since) ORDER BY tuple()"),
]


def connect(url: str) -> Any:
    """A clickhouse-connect client for ``chdb:///path`` or ``http(s)://[user:pass@]host:port[/db]``."""
    if url.startswith("chdb:"):
        path = url.removeprefix("chdb://")
        Path(path).mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=url)
    parsed = urlparse(url)
    return clickhouse_connect.get_client(
        host=parsed.hostname or "localhost", port=parsed.port or 8123,
        username=parsed.username or "default", password=parsed.password or "",
        database=(parsed.path or "/").strip("/") or "default", secure=parsed.scheme == "https",
    )


# ClickHouse server error codes that mean "not now" (src/Common/ErrorCodes.cpp): timeouts,
# network, overload, too many parts or queries, memory, a read-only or restarting replica.
TEMPORARY_CODES = frozenset({
    3, 159, 160, 164, 198, 202, 209, 210, 241, 242, 252, 285, 319, 425, 439, 999, 1000,
})


def classify(exc: BaseException) -> PermanentError | TemporaryError | None:
    """The flyball error for a clickhouse-connect / chDB failure, or None if ``exc`` is not one.

    Network trouble (``OperationalError``) and the server codes in :data:`TEMPORARY_CODES` are
    temporary; a server or engine error with any other code (unknown column, type mismatch,
    decimal overflow, ...) is permanent, as is a row the driver cannot serialise (``TypeError``,
    ``ValueError``, ``OverflowError``, ``struct.error`` raised from an insert). A database error
    with no code (the HTTP transport can lose it) counts as temporary: the retries are bounded.
    """
    if isinstance(exc, (PermanentError, TemporaryError)):
        return exc
    if isinstance(exc, OperationalError):
        return TemporaryError(f"clickhouse unavailable: {exc}")
    if isinstance(exc, DatabaseError):
        code = getattr(exc, "code", None)
        if code is None or code in TEMPORARY_CODES:
            return TemporaryError(f"clickhouse: {exc}")
        return PermanentError(f"clickhouse refused (code {code}): {exc}")
    if isinstance(exc, ClickHouseError):
        return PermanentError(f"clickhouse: {exc}")
    return None


def _serialisation_error(exc: Exception) -> PermanentError:
    return PermanentError(f"clickhouse: row not insertable ({type(exc).__name__}: {exc})")


class ClickHouseStore:
    def __init__(self, url: str, ddl: DdlOptions | None = None) -> None:
        self.url = url
        self.ddl = ddl or DdlOptions()  # cluster form and TTLs of the migrations (sinks/ddl.py)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._client: Any = self._pool.submit(connect, url).result()

    # -------------------------------------------------------------- plumbing
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the ClickHouse thread; driver errors come out classified
        (:class:`PermanentError` / :class:`TemporaryError`, the driver's error as the cause)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except ClickHouseError as exc:
            raise (classify(exc) or exc) from exc

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the ClickHouse thread from synchronous code (errors classified as in ``run``)."""
        try:
            return self._pool.submit(fn, *args).result()
        except ClickHouseError as exc:
            raise (classify(exc) or exc) from exc

    def close(self) -> None:
        try:
            self.call(self._client.close)
        except (ClickHouseError, OSError) as exc:  # closing is best effort
            log.warning("clickhouse_close_failed", error=str(exc)[:300])
        self._pool.shutdown(wait=True)

    # -------------------------------------------------------------- schema
    def migrate(self) -> list[int]:
        return self.call(self._migrate)

    def _migrate(self) -> list[int]:
        c = self._client
        for stmt in transform(_SCHEMA_MIGRATIONS, self.ddl):
            c.command(stmt)
        done = {row[0] for row in c.query("SELECT version FROM schema_migrations").result_rows}
        applied = []
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            for stmt in transform(sql, self.ddl):
                c.command(stmt)
            c.insert("schema_migrations", [[version, datetime.now(UTC)]], column_names=["version", "applied_at"])
            applied.append(version)
            log.info("migration_applied", version=version)
        for table, stmt in zip(sorted(self.ddl.ttl_days), ttl_statements(self.ddl), strict=True):
            local = table + (self.ddl.local_suffix if self.ddl.cluster else "")
            current = c.query("SELECT create_table_query FROM system.tables WHERE database = currentDatabase() "
                              "AND name = {t:String}", parameters={"t": local}).result_rows
            if not current or f"toIntervalDay({self.ddl.ttl_days[table]})" not in current[0][0]:
                c.command(stmt)  # only when it changes: MODIFY TTL rewrites the table's parts
                log.info("ttl_set", table=table, days=self.ddl.ttl_days[table])
        return applied

    # -------------------------------------------------------------- writes
    def write_events(self, rows: Sequence[Sequence[Any]]) -> None:
        self.insert("events", rows, EVENT_COLUMNS)

    def write_alerts(self, rows: Sequence[Sequence[Any]]) -> None:
        self.insert("alerts", rows, ("alert_id", "kind", "scope_key", "scope", "severity", "status",
                                     "first_seen", "last_seen", "body", "recorded_at"))

    def write_actions(self, rows: Sequence[Sequence[Any]]) -> None:
        self.insert("actions", rows, ("action_id", "at", "decision", "directive_id", "scope_key", "tenant_id",
                                      "alert_id", "policy_id", "actor", "reason", "before", "after", "evidence"))

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None:
        """Insert rows into any flyball table (call on the ClickHouse thread: ``run``/``call``).
        A row the driver cannot serialise raises :class:`PermanentError`."""
        if not rows:
            return
        try:
            self._client.insert(table, rows, column_names=list(columns))
        except (TypeError, ValueError, OverflowError, struct.error) as exc:
            raise _serialisation_error(exc) from exc

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return self._client.command(sql, parameters=parameters or {})

    # -------------------------------------------------------------- reads
    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return list(self._client.query(sql, parameters=parameters or {}).result_rows)


def as_decimal(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))
