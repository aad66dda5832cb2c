"""Creating flyball's topics (idempotent): events and DLQ partitioned by tenant, alerts, and
the compacted directive topic."""

from __future__ import annotations

import asyncio

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from flyball.schemas import ALERTS, DIRECTIVES, DLQ, EVENTS

log = structlog.get_logger(__name__)


async def ensure_topics(bootstrap: str, *, partitions: int = 4, attempts: int = 20) -> None:
    specs = [
        NewTopic(EVENTS, partitions, 1),
        NewTopic(DLQ, 1, 1),
        NewTopic(ALERTS, 1, 1),
        NewTopic(DIRECTIVES, 1, 1, topic_configs={"cleanup.policy": "compact"}),
    ]
    for attempt in range(attempts):
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in specs if t.name not in existing]
            if missing:
                try:
                    await admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass
                log.info("topics_created", topics=[t.name for t in missing])
            return
        except KafkaError as exc:
            log.warning("topic_setup_retry", error=str(exc), attempt=attempt)
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
    raise RuntimeError(f"could not create flyball topics on {bootstrap}")
