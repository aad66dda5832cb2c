"""Kafka transport for the shim: an idempotent aiokafka producer (acks=all, zstd) and a
group-less consumer that follows a topic from its beginning (used for directives)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError, UnknownError, UnsupportedVersionError

from . import TransportError

log = logging.getLogger(__name__)
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
            log.warning("broker %s does not support idempotent producers (%r): plain acks=all", bootstrap, exc)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, **options)
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


class KafkaTransport:
    """Idempotent ``acks=all`` zstd producer. After a failed send the producer is closed and
    a new one is started on the next send, so a batch that timed out can never be delivered
    late behind the replay of its spilled copy."""

    def __init__(self, bootstrap: str, *, linger_ms: int = 20, request_timeout_ms: int = 10_000,
                 client_id: str = "flyball-shim") -> None:
        self.bootstrap = bootstrap
        self._linger_ms = linger_ms
        self._request_timeout_ms = request_timeout_ms
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._consumers: list[AIOKafkaConsumer] = []
        self.synced_at: float | None = None

    async def start(self) -> None:
        try:
            self._producer = await asyncio.wait_for(start_producer(
                self.bootstrap, client_id=self._client_id, compression_type="zstd", linger_ms=self._linger_ms,
                max_batch_size=256 * 1024, request_timeout_ms=self._request_timeout_ms,
            ), self._request_timeout_ms / 1000 + 5)
        except (TimeoutError, KafkaError) as exc:
            raise TransportError(f"cannot reach Kafka at {self.bootstrap}: {exc}") from exc

    async def send_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        if self._producer is None:
            await self.start()
        producer = self._producer
        assert producer is not None
        futures: list[asyncio.Future[Any]] = []
        error: BaseException | None = None
        try:
            for key, value in records:
                futures.append(await producer.send(topic, value=value, key=key))
        except KafkaError as exc:
            error = exc
        # an idempotent aiokafka producer retries a batch forever while the broker is away:
        # bound the wait here, and abort the producer so nothing it holds is sent late
        done: set[asyncio.Future[Any]] = set()
        if futures:
            done, _ = await asyncio.wait(futures, timeout=self._request_timeout_ms / 1000 + 1)
        failed = [i for i, f in enumerate(futures) if f not in done or f.cancelled() or f.exception() is not None]
        failed.extend(range(len(futures), len(records)))
        if failed:
            first = error or next((f.exception() for f in futures if f in done and not f.cancelled()
                                   and f.exception() is not None), None) or TimeoutError("delivery timed out")
            await self._abort_producer()
            raise TransportError(f"{len(failed)} of {len(records)} records not delivered: {first!r}",
                                 failed=failed)

    async def _abort_producer(self) -> None:
        """Throw the producer away without flushing: its sender task is cancelled, so batches
        still in its accumulator are never delivered (they are spilled and replayed instead)."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        task = getattr(getattr(producer, "_sender", None), "sender_task", None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=2)
        try:
            producer._closed = True  # aiokafka has no public abort
            await asyncio.wait_for(producer.client.close(), 2)
        except Exception as exc:  # noqa: BLE001 - it is being thrown away
            log.warning("aborting the producer failed: %r", exc)

    async def follow(self, topic: str) -> AsyncIterator[list[bytes]]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.bootstrap, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    client_id=f"{self._client_id}-follow", metadata_max_age_ms=5_000)
        self._consumers.append(consumer)
        await consumer.start()
        last_probe = 0.0
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=250)
                values = [rec.value for recs in batch.values() for rec in recs if rec.value is not None]
                # the oldest fetch answer over the assigned partitions: how fresh the view is
                polls = [consumer.last_poll_timestamp(tp) for tp in consumer.assignment()]
                if polls and all(p is not None for p in polls):
                    self.synced_at = min(polls) / 1000
                elif not polls and time.time() - last_probe > 5:
                    # no such topic yet (nothing was ever directed): a metadata answer is the sign of life
                    last_probe = time.time()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(consumer.topics(), 5)
                        self.synced_at = time.time()
                yield values
        finally:
            self._consumers.remove(consumer)
            await consumer.stop()

    async def reset(self) -> None:
        await self._abort_producer()

    async def stop(self) -> None:
        for consumer in list(self._consumers):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 5)
        producer = self._producer
        if producer is not None:
            try:  # graceful: flush what is pending, if the broker answers in time
                await asyncio.wait_for(asyncio.shield(producer.stop()), self._request_timeout_ms / 1000)
                self._producer = None
            except (TimeoutError, Exception):  # noqa: BLE001
                await self._abort_producer()
