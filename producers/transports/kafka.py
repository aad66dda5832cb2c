"""Kafka transport for the shim: an idempotent aiokafka producer (acks=all, zstd) and a
group-less consumer that follows a topic from its beginning (used for directives)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError, UnknownError, UnsupportedVersionError

from . import TransportError

log = structlog.get_logger(__name__)
_NO_IDEMPOTENCE: set[str] = set()  # brokers seen refusing InitProducerId, per process


async def start_producer(bootstrap: str, **options: Any) -> AIOKafkaProducer:
    """Start an idempotent ``acks=all`` producer; on a broker that refuses idempotence
    (Tansu answers InitProducerId with UNKNOWN_SERVER_ERROR) fall back to plain ``acks=all``:
    consumers dedupe on ``event_id``, so a retried send cannot be counted twice."""
    if bootstrap not in _NO_IDEMPOTENCE:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **options)
        try:
            await producer.start()
            return producer
        except (UnknownError, UnsupportedVersionError) as exc:
            await producer.stop()
            _NO_IDEMPOTENCE.add(bootstrap)
            log.warning("idempotence_unsupported", bootstrap=bootstrap, error=repr(exc))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, **options)
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


class KafkaTransport:
    def __init__(self, bootstrap: str, *, linger_ms: int = 20, request_timeout_ms: int = 10_000,
                 client_id: str = "flyball-shim") -> None:
        self.bootstrap = bootstrap
        self._linger_ms = linger_ms
        self._request_timeout_ms = request_timeout_ms
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._consumers: list[AIOKafkaConsumer] = []

    async def start(self) -> None:
        try:
            self._producer = await start_producer(
                self.bootstrap, client_id=self._client_id, compression_type="zstd", linger_ms=self._linger_ms,
                max_batch_size=256 * 1024, request_timeout_ms=self._request_timeout_ms,
            )
        except KafkaError as exc:
            raise TransportError(f"cannot reach Kafka at {self.bootstrap}: {exc}") from exc

    async def send_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        if self._producer is None:
            await self.start()
        assert self._producer is not None
        try:
            futures = [await self._producer.send(topic, value=value, key=key) for key, value in records]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise TransportError(str(exc)) from exc

    async def follow(self, topic: str) -> AsyncIterator[list[bytes]]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.bootstrap, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    client_id=f"{self._client_id}-follow", metadata_max_age_ms=5_000)
        self._consumers.append(consumer)
        await consumer.start()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=250)
                values = [rec.value for recs in batch.values() for rec in recs if rec.value is not None]
                yield values
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        for consumer in self._consumers:
            await consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
