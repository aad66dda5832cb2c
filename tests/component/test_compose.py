"""compose.yaml is the production-shaped stack: official Kafka (KRaft) and ClickHouse images,
and flyball's two processes configured only through FLYBALL_* environment."""

from __future__ import annotations

from pathlib import Path

import yaml

from flyball.control_plane.settings import Settings

COMPOSE = yaml.safe_load((Path(__file__).parents[2] / "compose.yaml").read_text())


def test_compose_runs_kafka_clickhouse_worker_and_api() -> None:
    services = COMPOSE["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["worker"]["command"] == ["flyball", "worker"]
    assert services["api"]["command"] == ["flyball", "api"]


def test_flyball_services_are_configured_only_by_known_flyball_settings() -> None:
    known = {f"FLYBALL_{name.upper()}" for name in Settings.model_fields}
    for name in ("worker", "api", "topics"):
        env = COMPOSE["services"][name]["environment"]
        assert env and set(env) <= known, set(env) - known


def test_topics_are_ensured_before_the_processes_start() -> None:
    services = COMPOSE["services"]
    assert services["topics"]["command"] == ["flyball", "topics", "ensure"]
    for name in ("worker", "api"):
        assert services[name]["depends_on"]["topics"] == {"condition": "service_completed_successfully"}
