"""The OTLP receiver's Kafka side: publishes what :mod:`.otlp` mapped, and counts it.

Events go to ``flyball.events.v1`` keyed by tenant, rejected spans to ``flyball.events.dlq.v1``
with their reason (also in a ``reason`` header), through the same idempotent ``acks=all``
producer as the shim. A request is answered only after every record is acknowledged, so a
200 means the spans are on the broker; a broker error answers 503 and the exporter retries
(span-derived event ids make the retry harmless).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from flyball.producers.transports.kafka import start_producer
from flyball.schemas import DLQ, EVENTS

from .otlp import Mapped, OtlpOptions

log = structlog.get_logger(__name__)


class PublishError(RuntimeError):
    """The broker did not take a request's records; the client should retry."""


@dataclass(slots=True)
class ReceiverStats:
    requests: int = 0
    spans_accepted: int = 0
    spans_rejected: int = 0
    spans_ignored: int = 0


class OtlpReceiver:
    def __init__(self, bootstrap: str, options: OtlpOptions | None = None, *, timeout_s: float = 15.0) -> None:
        self.bootstrap = bootstrap
        self.options = options or OtlpOptions()
        self.timeout_s = timeout_s
        self.stats = ReceiverStats()
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        if self._producer is None:
            self._producer = await start_producer(self.bootstrap, client_id="flyball-otlp", linger_ms=5,
                                                  compression_type="zstd", max_batch_size=512 * 1024,
                                                  request_timeout_ms=int(self.timeout_s * 1000))

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def publish(self, mapped: Mapped) -> None:
        async with self._lock:  # a failed producer is replaced once, not by every waiting request
            if self._producer is None:
                try:
                    await self.start()
                except KafkaError as exc:
                    raise PublishError(f"cannot reach Kafka: {exc}") from exc
        producer = self._producer
        assert producer is not None
        futures: list[asyncio.Future[Any]] = []
        try:
            for key, value in mapped.events:
                futures.append(await producer.send(EVENTS, value=value, key=key))
            for value in mapped.dead:
                reason = orjson.loads(value)["reason"]
                futures.append(await producer.send(DLQ, value=value, headers=[("reason", reason[:512].encode())]))
            await asyncio.wait_for(asyncio.gather(*futures), self.timeout_s)
        except (KafkaError, TimeoutError) as exc:
            log.warning("otlp_publish_failed", error=repr(exc)[:300], records=len(futures))
            for f in futures:
                if not f.done():
                    f.cancel()
            self._producer = None
            await producer.stop()
            raise PublishError(f"Kafka did not acknowledge the spans: {exc!r}"[:300]) from exc
        s = self.stats
        s.requests += 1
        s.spans_accepted += len(mapped.events)
        s.spans_rejected += mapped.rejected
        s.spans_ignored += mapped.ignored
        for reason in mapped.reasons:
            log.info("span_dead_lettered", reason=reason[:300])
