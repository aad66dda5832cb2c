"""`flyball topics ensure` on both brokers: creates the topics with their partitions, replication
factor, retention and cleanup policy; a second run changes nothing; an existing topic with
fewer partitions or other retention is brought to the specification."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from flyball.stream_processors.topics import TopicSpec, ensure_topics, topic_specs


def renamed(specs: list[TopicSpec], run: str) -> list[TopicSpec]:
    return [TopicSpec(f"{s.name}.{run}", s.partitions, s.replication_factor, s.configs) for s in specs]


async def describe(bootstrap: str, names: list[str]) -> dict[str, tuple[int, dict[str, str]]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
        configs: dict[str, dict[str, str]] = {}
        for response in await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names]):
            for resource in response.resources:
                configs[resource[3]] = {e[0]: e[1] for e in resource[4]}
    finally:
        await admin.close()
    return {n: (topics[n], configs.get(n, {})) for n in names}


async def test_ensure_creates_to_spec_and_is_idempotent(bootstrap: str, request: pytest.FixtureRequest) -> None:
    run = uuid.uuid4().hex[:8]
    specs = renamed(topic_specs(partitions=6, events_retention_days=2), run)
    first = await ensure_topics(bootstrap, specs)
    assert all(": created" in line for line in first), first
    got = await describe(bootstrap, [s.name for s in specs])
    events, dlq, alerts, directives = (got[s.name] for s in specs)
    assert (events[0], dlq[0], alerts[0], directives[0]) == (6, 1, 1, 1)
    assert events[1].get("retention.ms") == str(2 * 86_400_000) and events[1].get("cleanup.policy") == "delete"
    assert directives[1].get("cleanup.policy") == "compact"
    if "kafka" in request.node.callspec.id:  # Tansu reports few configs (and cannot alter them)
        assert dlq[1].get("retention.ms") == str(30 * 86_400_000) and events[1].get("min.insync.replicas") == "1"
        assert await ensure_topics(bootstrap, specs) == [f"{s.name}: ok" for s in specs]


@pytest.mark.kafka
async def test_an_existing_topic_is_brought_to_spec_on_kafka() -> None:
    from tests.conftest import broker_address

    bootstrap = broker_address("kafka")
    run = uuid.uuid4().hex[:8]
    spec = renamed(topic_specs(partitions=5, events_retention_days=3), run)[0]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(spec.name, 2, 1, topic_configs={"retention.ms": "1000",
                                                                           "max.message.bytes": "2000000"})])
        for _ in range(100):  # until the broker's metadata lists it
            if spec.name in await admin.list_topics():
                break
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
    report = await ensure_topics(bootstrap, [spec])
    assert report == [f"{spec.name}: partitions 2 -> 5; set retention.ms=259200000"]  # min.insync.replicas=1 already
    for _ in range(100):  # the broker applies a config change through its metadata log
        partitions, configs = (await describe(bootstrap, [spec.name]))[spec.name]
        if configs["retention.ms"] == "259200000":
            break
        await asyncio.sleep(0.1)
    assert partitions == 5 and configs["retention.ms"] == "259200000"
    assert configs["max.message.bytes"] == "2000000"  # a setting of the operator's own is kept
    assert await ensure_topics(bootstrap, [spec]) == [f"{spec.name}: ok"]
    # more partitions than specified are left alone (Kafka cannot remove partitions)
    fewer = TopicSpec(spec.name, 3, spec.replication_factor, spec.configs)
    assert "more than 3; left as is" in (await ensure_topics(bootstrap, [fewer]))[0]


def test_the_cli_prints_what_it_did(bootstrap: str) -> None:
    env = {**os.environ, "FLYBALL_KAFKA_BOOTSTRAP": bootstrap}
    out = subprocess.run([sys.executable, "-m", "flyball.control_plane.cli", "topics", "ensure"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [line.split(":")[0] for line in out.stdout.splitlines()] == [
        "flyball.events.v1", "flyball.events.dlq.v1", "flyball.alerts.v1", "flyball.directives.v1"]
