"""Settings for the server processes (`flyball up|demo|worker|api`), from ``FLYBALL_*``."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from flyball.schemas import KeySet
from flyball.stream_processors.sinks.ddl import DdlOptions
from flyball.stream_processors.topics import TopicSpec, topic_specs

from .notify import WebhookTarget


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLYBALL_", extra="ignore", frozen=True)

    kafka_bootstrap: str | None = None  # unset: `flyball up` starts the embedded broker
    clickhouse_url: str | None = None  # unset: chdb:///<data_dir>/clickhouse
    data_dir: Path = Path("./data")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    admin_api_key: SecretStr | None = None
    prices_file: Path | None = None
    worker_group: str = "flyball-worker"
    control_group: str = "flyball-control-plane"
    session_timeout_ms: int = 6_000
    log_level: str = "info"
    # control plane: policies, webhooks, runbooks, write rate limit per API key
    policies_file: Path | None = None  # unset: the shipped defaults (control_plane/policies.yaml)
    webhooks: list[WebhookTarget] = Field(default_factory=list)  # JSON: [{"url": ..., "format": "slack"|"pagerduty"}]
    runbook_base_url: str = "docs/runbooks"  # where docs/runbooks/<alert kind>.md is served
    write_rate_per_min: float = 120.0
    write_burst: int = 30
    read_rate_per_min: float = 3_000.0  # reads per API key (shims polling directives share a key)
    read_burst: int = 600
    # finance: lateness, rollups, and the API the `flyball spend|reprice|reconcile` client calls
    allowed_lateness_s: int = 86_400  # later events are stored with late=1 and raise no budget alerts
    rollup_interval_s: float = 30.0  # spend_minute refresh (recomputed from events FINAL)
    finance_reload_s: float = 30.0  # a `flyball worker` without the API re-reads prices and budgets this often
    detection_file: Path | None = None  # detector sensitivity per kind and tenant (docs/DETECTION.md)
    # scopes each detector tracks at once (a few KB each); past it new scopes are not judged and the
    # worker logs detector_scopes_capped (a field of high cardinality; docs/RELIABILITY.md)
    detector_max_scopes: int = Field(50_000, ge=1)
    detector_max_tenant_scopes: int = Field(2_000, ge=1)  # of one tenant's features, per detector
    detector_checkpoint_s: float = 30.0  # how often the worker saves detector baselines (after a commit)
    # release comparisons per tenant+feature instead of per feature (GET /v1/versions, pin scope)
    releases_per_tenant: bool = False
    # how long a worker gathers events for one ClickHouse insert (each insert makes a part; 0: insert
    # whatever one fetch brings) and how many it needs to insert at once
    worker_linger_ms: int = Field(250, ge=0, le=60_000)
    worker_min_batch: int = Field(5_000, ge=1)
    # how often the worker hands the C allocators' free pages back (glibc malloc_trim, chDB's
    # jemalloc purge), between batches; 0: never (stream_processors/memory.py)
    worker_trim_interval_s: float = Field(60.0, ge=0)
    worker_id: str = ""  # a stable id per worker replica (e.g. the StatefulSet ordinal): its own checkpoint row
    # OTLP/HTTP ingest (POST /v1/traces): where a span names its tenant and feature (span
    # attributes first, then resource attributes; first name found wins), and the body cap
    otlp_tenant_attributes: list[str] = Field(default_factory=lambda: ["flyball.tenant_id"], min_length=1)
    otlp_feature_attributes: list[str] = Field(default_factory=lambda: ["flyball.feature"])
    otlp_max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # topics (`flyball topics ensure`, run by `up`, `worker` and `api` at start)
    topic_partitions: int = Field(4, ge=1)  # of flyball.events.v1: the worker replicas' parallelism cap
    topic_replication_factor: int = Field(1, ge=1)
    events_retention_days: float = Field(7, gt=0)
    dlq_retention_days: float = Field(30, gt=0)
    alerts_retention_days: float = Field(30, gt=0)
    # ClickHouse: a cluster name makes migrations ReplicatedMergeTree + Distributed ON CLUSTER; TTL
    # retention per table in days, e.g. {"events": 400} (stream_processors/sinks/ddl.py, docs/CLICKHOUSE.md)
    clickhouse_cluster: str | None = None
    clickhouse_ttl_days: dict[str, int] = Field(default_factory=dict)
    metrics_port: int = 0  # a worker without the API serves /metrics on this port (0: none)
    # SLOs: the objectives file (unset: control_plane/slos.yaml) and how often burn rates are evaluated
    slos_file: Path | None = None
    slo_eval_interval_s: float = 60.0
    api_url: str = "http://127.0.0.1:8000"
    api_key: SecretStr | None = None
    # "kid:secret,kid2:secret2" shared by the control plane, the workers and the shims: directives
    # and alerts are signed with signing_key_id (default: the first) and verified with any of them
    signing_keys: SecretStr | None = None
    signing_key_id: str = ""
    shim_instances_every_s: float = 10.0  # how often live shim instances per tenant are re-counted

    def keyset(self, *, generate: bool = False) -> KeySet:
        """The signing keys; unset and ``generate`` (``flyball up``: every signer and verifier
        in one process), a key kept in ``data_dir/signing.key`` for the next start."""
        if self.signing_keys is not None:
            return KeySet.parse(self.signing_keys.get_secret_value(), current=self.signing_key_id)
        if not generate:
            return KeySet()
        path = self.data_dir / "signing.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text("local:" + secrets.token_urlsafe(32))
        return KeySet.parse(path.read_text().strip())

    def topic_specs(self) -> list[TopicSpec]:
        return topic_specs(partitions=self.topic_partitions, replication_factor=self.topic_replication_factor,
                           events_retention_days=self.events_retention_days,
                           dlq_retention_days=self.dlq_retention_days, alerts_retention_days=self.alerts_retention_days)

    def ddl(self) -> DdlOptions:
        return DdlOptions(cluster=self.clickhouse_cluster, ttl_days=dict(self.clickhouse_ttl_days))

    def clickhouse(self) -> str:
        return self.clickhouse_url or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"
