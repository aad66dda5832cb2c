"""The worker's ClickHouse tables (events, alerts, detector state and the views over them),
as numbered migrations (the worker's: 1, 2, 10, 20-27, 40, 70, 80). Versions are global across
packages (the control plane owns 3, 11-14 and 30-39: ``flyball.control_plane.migrations``); ``ClickHouseStore.migrate`` applies each
version once, in list order, and records it in ``schema_migrations``.
"""

from __future__ import annotations

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
    # the events' finance columns (money columns are Decimal(38, 12), never Float)
    (10, """
    ALTER TABLE events
        ADD COLUMN IF NOT EXISTS service_tier LowCardinality(String) DEFAULT '',
        ADD COLUMN IF NOT EXISTS cache_write_1h_tokens UInt64 DEFAULT 0,
        ADD COLUMN IF NOT EXISTS prompt_version LowCardinality(String) DEFAULT '',
        ADD COLUMN IF NOT EXISTS late UInt8 DEFAULT 0
    """),
    # detectors: safety-trigger rates per minute, kept by ClickHouse itself as
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
    # finance: OpenAI's 12-hour cache writes have their own rate (the 1-hour ones are column 10's)
    (26, "ALTER TABLE events ADD COLUMN IF NOT EXISTS cache_write_12h_tokens UInt64 DEFAULT 0"),
    # the shim instance that sent an event: the control plane counts live instances per tenant
    # and shares a throttle among them
    (27, "ALTER TABLE events ADD COLUMN IF NOT EXISTS shim_instance LowCardinality(String) DEFAULT ''"),
    # SLOs and KPIs: the event fields the SLIs and KPIs read (streamed calls' time to first
    # token, error class, feedback score and target, an explicit request outcome)
    (40, """
    ALTER TABLE events
        ADD COLUMN IF NOT EXISTS ttft_ms Nullable(Float64),
        ADD COLUMN IF NOT EXISTS stream UInt8 DEFAULT 0,
        ADD COLUMN IF NOT EXISTS error_type LowCardinality(String) DEFAULT '',
        ADD COLUMN IF NOT EXISTS score Nullable(Float64),
        ADD COLUMN IF NOT EXISTS target_event_id String DEFAULT '',
        ADD COLUMN IF NOT EXISTS outcome LowCardinality(String) DEFAULT ''
    """),
    # release safety: each live version's traffic in the last hour (event time) per feature
    # (tenant_id '' when comparisons are feature-wide) and dimension, and for a candidate its
    # comparison against the incumbent (verdict, per-metric evidence as JSON); the latest
    # snapshot (in event time) per version wins (GET /v1/versions)
    (80, """
    CREATE TABLE IF NOT EXISTS release_versions (
        feature String,
        tenant_id String,
        dimension LowCardinality(String),
        version String,
        calls UInt64,
        share Float64,
        role LowCardinality(String),
        incumbent String,
        verdict LowCardinality(String),
        started Nullable(DateTime64(3, 'UTC')),
        decided_at Nullable(DateTime64(3, 'UTC')),
        calls_new UInt64,
        calls_old UInt64,
        metrics String,
        window_s UInt32,
        as_of DateTime64(3, 'UTC'),
        recorded_at DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(as_of)
    ORDER BY (feature, tenant_id, dimension, version)
    """),
    # the console: a retrieval's result count (0 with status ok = an empty retrieval; NULL for rows
    # stored before this column) and the caller's user id hash (llm_call, feedback) for top users
    (70, """
    ALTER TABLE events
        ADD COLUMN IF NOT EXISTS results_count Nullable(UInt32),
        ADD COLUMN IF NOT EXISTS user_id_hash String DEFAULT ''
    """),
]
