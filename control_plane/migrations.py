"""The control plane's ClickHouse tables (audit log, keys, policy versions, alert marks,
webhook deliveries, and finance: price changes, reprices, budgets, minute rollups), as numbered
migrations; the worker owns its own (``flyball.stream_processors.migrations``). Versions are
global across packages; ``ClickHouseStore.migrate`` applies each once.
"""

from __future__ import annotations

from flyball.stream_processors.migrations import MIGRATIONS as WORKER_MIGRATIONS


def _console_rollup(name: str) -> str:
    """The console's rollup tiers share one layout (minute, hour, day: ``minute`` holds the
    bucket start), written out per table so that the cluster form of each can be derived. The
    layout is the current one: migrations 50-55 create it on a new database, 71-78 replace the
    first layout (without environment, TTFT and empty retrievals, and with t-digests, whose
    merges cost a hundred times more than these bfloat16 histograms) on an existing one."""
    return f"""
    CREATE TABLE IF NOT EXISTS {name} (
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
        latency_p95 AggregateFunction(quantileBFloat16(0.95), Float64),
        computed_at DateTime64(3, 'UTC'),
        service_tier LowCardinality(String),
        late_events UInt64,
        environment LowCardinality(String),
        ttft_p95 AggregateFunction(quantileBFloat16(0.95), Float64),
        empty_retrievals UInt64
    ) ENGINE = ReplacingMergeTree(computed_at)
    PARTITION BY toYYYYMM(minute)
    ORDER BY (tenant_id, minute, event_type, feature, provider, model, prompt_version, status, category, service_tier,
              environment)
    """


# when the rollups were last complete (``console_rollup_state`` held it for the first layout)
_ROLLUP_MARK = ("CREATE TABLE IF NOT EXISTS console_rollup_mark (complete_since DateTime64(3, 'UTC')) "
                "ENGINE = ReplacingMergeTree(complete_since) ORDER BY tuple()")

MIGRATIONS: list[tuple[int, str]] = [
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
    # control plane state: API keys, policy versions, alert acks/silences, webhook deliveries
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
    # finance: price changes, reprices, budgets, minute rollups (money columns Decimal(38, 12))
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
    # 50-59: the console (control_plane/ui/queries.py): a per-minute rollup of every event kind,
    # recomputed from events FINAL for the minutes that received rows, so each event counts once
    (50, _console_rollup("console_minute")),
    # the request page looks events up by request_id or trace_id across all days
    (51, "ALTER TABLE events ADD INDEX IF NOT EXISTS console_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 4"),
    (52, "ALTER TABLE events ADD INDEX IF NOT EXISTS console_trace_id trace_id TYPE bloom_filter(0.01) GRANULARITY 4"),
    # coarser tiers for long ranges, recomputed from the tier below (``minute`` holds the bucket start)
    (53, _console_rollup("console_hour")),
    (54, _console_rollup("console_day")),
    # when the rollups were last complete: rows ingested since then are read from events
    (55, _ROLLUP_MARK),
    # 60-69: the KPI report's rollups beyond kpi_day/slo_day (control_plane/kpi_rollup.py), each
    # row keyed by event id or recomputed per day from events FINAL, so a replay counts once.
    # The events that flag a request for "cost per successful outcome": negative feedback and
    # explicit outcomes (few), with the request they name
    (60, """
    CREATE TABLE IF NOT EXISTS kpi_flag (
        event_id UUID,
        ts DateTime64(3, 'UTC'),
        tenant_id LowCardinality(String),
        feature LowCardinality(String),
        request_key String,
        request String,
        has_request UInt8,
        is_call UInt8,
        target_event_id String,
        negative UInt8,
        outcome LowCardinality(String),
        ingested_at DateTime64(3, 'UTC'),
        computed_at DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(computed_at)
    PARTITION BY toYYYYMM(ts)
    ORDER BY (tenant_id, ts, event_id)
    """),
    # every llm call of a request that some flag names (by request, or through a targeted call);
    # ``request`` is the request as one string (tenant length-prefixed): matching one column is
    # several times faster than matching a (tenant, key) tuple
    (61, """
    CREATE TABLE IF NOT EXISTS kpi_flagged_call (
        event_id UUID,
        ts DateTime64(3, 'UTC'),
        tenant_id LowCardinality(String),
        feature LowCardinality(String),
        request_key String,
        request String,
        has_request UInt8,
        ok UInt8,
        ingested_at DateTime64(3, 'UTC'),
        computed_at DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(computed_at)
    PARTITION BY toYYYYMM(ts)
    ORDER BY (tenant_id, ts, event_id)
    """),
    # safety triggers per tenant, feature, category and UTC day
    (62, """
    CREATE TABLE IF NOT EXISTS safety_day (
        day Date,
        tenant_id LowCardinality(String),
        feature LowCardinality(String),
        category LowCardinality(String),
        triggers UInt64,
        computed_at DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(computed_at)
    PARTITION BY toYYYYMM(day)
    ORDER BY (day, tenant_id, feature, category)
    """),
    # the ingest time up to which every KPI rollup is complete (a missing row: rebuild them all)
    (63, "CREATE TABLE IF NOT EXISTS kpi_rollup_state (complete_since DateTime64(3, 'UTC')) "
         "ENGINE = ReplacingMergeTree(complete_since) ORDER BY tuple()"),
    # 70-79: the console's second rollup layout (environment as a dimension, a TTFT digest of
    # streamed calls, empty retrievals): the rollups are derived data, so the tiers are dropped
    # and recreated with a new completion mark (77), and the API's rollup task rebuilds them
    # from events FINAL (until then exact spend reads the events, and charts fill as it goes)
    (71, "DROP TABLE IF EXISTS console_minute"),
    (72, "DROP TABLE IF EXISTS console_hour"),
    (73, "DROP TABLE IF EXISTS console_day"),
    (74, _console_rollup("console_minute")),
    (75, _console_rollup("console_hour")),
    (76, _console_rollup("console_day")),
    # a new mark, so that the rollups are rebuilt (the first layout's console_rollup_state stays, unused)
    (77, _ROLLUP_MARK),
    # top users by cost: per (tenant, user id hash, UTC day), recomputed from events FINAL for the
    # (tenant, day) pairs that received rows, so each event counts once; day_rank is the user's
    # rank by cost within its tenant and day when computed (candidates for a range's top-N); small
    # granules, as it is read by (tenant, user) for a few users at a time
    (78, """
    CREATE TABLE IF NOT EXISTS console_user_day (
        tenant_id LowCardinality(String),
        user_id_hash String,
        day Date,
        events UInt64,
        failed_events UInt64,
        cost_usd Decimal(38, 12),
        day_rank UInt64,
        computed_at DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(computed_at)
    PARTITION BY toYYYYMM(day)
    ORDER BY (tenant_id, user_id_hash, day)
    SETTINGS index_granularity = 1024
    """),
    # spend and the rollup refresh look for rows ingested since a mark: a granule's min/max
    # ingested_at lets ClickHouse skip the settled ones instead of reading the whole column
    (79, "ALTER TABLE events ADD INDEX IF NOT EXISTS console_ingested_at ingested_at TYPE minmax GRANULARITY 1"),
    # (the console's own block 50-59 again) each tenant-day's costliest users, a small table
    # where a range's top-N users are looked for before their exact sums are read
    (56, """
    CREATE TABLE IF NOT EXISTS console_user_top (
        tenant_id LowCardinality(String),
        day Date,
        user_id_hash String,
        cost_usd Decimal(38, 12),
        computed_at DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(computed_at)
    PARTITION BY toYYYYMM(day)
    ORDER BY (tenant_id, day, user_id_hash)
    """),
    # 90-99 (the console, continued): the cost of each request and each request chain (trace),
    # per tenant and UTC day, kept as exact quantile states of Decimal costs (Decimal64: half the
    # bytes to merge of Decimal128; exact up to $999,999.999999999999 a request, the most it
    # holds, at which larger costs are capped) and the day's costliest fifth (at least 64) sorted
    # high to low, from which a range's p95 is read when it lies there; recomputed whole
    # from events FINAL for the (tenant, day) pairs that received rows, so a redelivered or late
    # event counts once, and merged across days and tenants for a range's exact p95
    (90, """
    CREATE TABLE IF NOT EXISTS console_request_day (
        tenant_id LowCardinality(String),
        day Date,
        requests UInt64,
        request_cost AggregateFunction(quantileExact(0.95), Decimal(18, 12)),
        chains UInt64,
        chain_cost AggregateFunction(quantileExact(0.95), Decimal(18, 12)),
        computed_at DateTime64(3, 'UTC'),
        request_top Array(Decimal(18, 12)),
        chain_top Array(Decimal(18, 12))
    ) ENGINE = ReplacingMergeTree(computed_at)
    PARTITION BY toYYYYMM(day)
    ORDER BY (tenant_id, day)
    """),
]

# every table of a flyball deployment: the worker's first (the control plane's views read them)
ALL_MIGRATIONS: list[tuple[int, str]] = [*WORKER_MIGRATIONS, *MIGRATIONS]
