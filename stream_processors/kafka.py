"""The aiokafka adapter of the server processes: how their consumers and producers are made,
and how aiokafka's errors map onto :mod:`flyball.stream_processors.errors`.

The services take a :class:`KafkaClients` (or anything with its two methods) as an argument,
so that component tests can hand them in-memory fakes; this module is the one place that
builds aiokafka clients for the worker and the control loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError

from flyball.producers.transports.kafka import start_producer

from .errors import PermanentError, TemporaryError


def classify(exc: BaseException) -> PermanentError | TemporaryError | None:
    """A retriable aiokafka error (leader moved, coordinator loading, request timed out,
    broker unreachable) is temporary; a non-retriable one (record too large, unknown topic
    under a broker that does not auto-create, authorisation) is permanent; None: not aiokafka's."""
    if isinstance(exc, (PermanentError, TemporaryError)):
        return exc
    if isinstance(exc, KafkaTimeoutError):
        return TemporaryError(f"kafka: timed out ({exc})")
    if isinstance(exc, KafkaError):
        name = type(exc).__name__
        if getattr(exc, "retriable", False):
            return TemporaryError(f"kafka: {name}: {exc}")
        return PermanentError(f"kafka: {name}: {exc}")
    return None


@dataclass(frozen=True, slots=True)
class KafkaClients:
    """Builds the aiokafka clients of one process from its bootstrap servers."""

    bootstrap: str

    def consumer(self, *topics: str, **config: Any) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(*topics, bootstrap_servers=self.bootstrap, **config)

    async def producer(self, **config: Any) -> AIOKafkaProducer:
        """Started, ``acks=all``, idempotent where the broker allows it."""
        return await start_producer(self.bootstrap, **config)
