"""flyball's topics, made to match their specification (idempotent): the events and DLQ topics
partitioned by tenant, alerts, and the compacted directive topic, each with its partitions,
replication factor, retention and cleanup policy.

``ensure_topics`` creates a missing topic; on an existing one it adds partitions up to the
specified count (never removes: Kafka cannot) and sets the configs that differ. A
replication factor that differs from an existing topic's is reported, not changed (that
is a partition reassignment, an operator's decision). Running it twice changes nothing the
second time. ``flyball topics ensure`` runs it from the command line; ``flyball up`` and the
tests call it at start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError, TopicAlreadyExistsError

from flyball.schemas import ALERTS, DIRECTIVES, DLQ, EVENTS

log = structlog.get_logger(__name__)
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1
    configs: Mapping[str, str] = field(default_factory=dict)


def topic_specs(*, partitions: int = 4, replication_factor: int = 1, events_retention_days: float = 7,
                dlq_retention_days: float = 30, alerts_retention_days: float = 30) -> list[TopicSpec]:
    """The four topics. ``min.insync.replicas`` is the replication factor minus one (at least
    1), so ``acks=all`` survives one broker down. Directives are compacted: the latest state
    of each scope key is kept forever, and a restarted shim rebuilds its view from it."""
    isr = str(max(1, replication_factor - 1))

    def delete(days: float) -> dict[str, str]:
        return {"cleanup.policy": "delete", "retention.ms": str(int(days * DAY_MS)), "min.insync.replicas": isr}
    return [
        TopicSpec(EVENTS, partitions, replication_factor, delete(events_retention_days)),
        TopicSpec(DLQ, 1, replication_factor, delete(dlq_retention_days)),
        TopicSpec(ALERTS, 1, replication_factor, delete(alerts_retention_days)),
        TopicSpec(DIRECTIVES, 1, replication_factor, {"cleanup.policy": "compact", "min.insync.replicas": isr}),
    ]


async def ensure_topics(bootstrap: str, specs: Sequence[TopicSpec] | None = None, *, partitions: int = 4,
                        attempts: int = 20) -> list[str]:
    """Make the topics match ``specs`` (default: :func:`topic_specs` with ``partitions``);
    returns one line per topic saying what was done."""
    specs = list(specs) if specs is not None else topic_specs(partitions=partitions)
    last: Exception | None = None
    for attempt in range(attempts):
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            return await _ensure(admin, specs)
        except KafkaError as exc:
            last = exc
            log.warning("topic_setup_retry", error=str(exc), attempt=attempt)
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
    raise RuntimeError(f"could not set up flyball topics on {bootstrap}: {last}")


async def _ensure(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]) -> list[str]:
    existing = set(await admin.list_topics())
    report: list[str] = []
    for spec in [s for s in specs if s.name not in existing]:
        try:
            await admin.create_topics([NewTopic(spec.name, spec.partitions, spec.replication_factor,
                                                topic_configs=dict(spec.configs))])
        except TopicAlreadyExistsError:  # created meanwhile (another process, or metadata lag): check it
            existing.add(spec.name)
            continue
        report.append(f"{spec.name}: created ({spec.partitions} partitions, replication factor "
                      f"{spec.replication_factor})")
        log.info("topic_created", topic=spec.name)
    present = [s for s in specs if s.name in existing]
    if not present:
        return report
    described = {t["topic"]: t for t in await admin.describe_topics([s.name for s in present])}
    current = await _configs(admin, [s.name for s in present])
    for spec in present:
        parts = described.get(spec.name, {}).get("partitions") or []
        done: list[str] = []
        if len(parts) < spec.partitions:
            try:
                await admin.create_partitions({spec.name: NewPartitions(total_count=spec.partitions)})
                done.append(f"partitions {len(parts)} -> {spec.partitions}")
            except IncompatibleBrokerVersion:
                done.append(f"has {len(parts)} partitions; this broker cannot add partitions")
        elif len(parts) > spec.partitions:
            done.append(f"has {len(parts)} partitions (more than {spec.partitions}; left as is)")
        replicas = {len(p.get("replicas") or []) for p in parts}
        if parts and replicas != {spec.replication_factor}:
            done.append(f"replication factor {sorted(replicas)} differs from {spec.replication_factor} "
                        "(reassign partitions to change it)")
        have = current.get(spec.name)
        changed = {k: v for k, v in spec.configs.items() if have is None or have.get(k) != v}
        if changed and have is not None:
            try:
                await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, spec.name,
                                                          configs={**_dynamic(have), **spec.configs})])
                done.append("set " + ", ".join(f"{k}={v}" for k, v in sorted(changed.items())))
            except IncompatibleBrokerVersion:
                done.append("this broker cannot alter configs: differ " + ", ".join(sorted(changed)))
        elif have is None:
            done.append("configs not readable on this broker (left as is)")
        report.append(f"{spec.name}: " + ("; ".join(done) if done else "ok"))
    if any(not line.endswith(": ok") for line in report):
        log.info("topics_ensured", report=report)
    return report


async def _configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """Each topic's config values, and which are set on the topic itself (not defaults)."""
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    except KafkaError as exc:
        log.warning("topic_configs_unreadable", error=str(exc))
        return {}
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in _resources(response):
            error_code, _, _, name, entries = resource[:5]
            if error_code:
                continue
            values: dict[str, str] = {}
            for entry in entries:
                key, value = entry[0], entry[1]
                values[key] = value if value is not None else ""
                if _is_topic_override(entry):
                    values["\0" + key] = "1"  # marks a value set on the topic, kept by alter_configs
            out[name] = values
    return out


def _resources(response: Any) -> list[Any]:
    resources = getattr(response, "resources", None)
    if resources is None and isinstance(response, (list, tuple)) and response:
        resources = response[-1]
    return list(resources or [])


def _is_topic_override(entry: Sequence[Any]) -> bool:
    # v0 entries: (name, value, read_only, is_default, is_sensitive); v1+: (..., config_source, ...)
    if len(entry) >= 4 and isinstance(entry[3], bool):
        return not entry[3]
    return len(entry) >= 4 and entry[3] == 1  # DescribeConfigs v1: config_source 1 = TOPIC_CONFIG


def _dynamic(values: Mapping[str, str]) -> dict[str, str]:
    """The topic-level settings already there: AlterConfigs replaces the whole set, so they are resent."""
    return {k: values[k] for k in values if not k.startswith("\0") and values.get("\0" + k)}
