"""In-memory fakes at the ports of the worker and the control plane (component tests).

Each fake records what it was asked to do and can be told to fail, the way the adapter it
stands in for fails (the flyball error kinds the adapters classify driver errors into).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None


@dataclass
class FakeProducer:
    """Stands in for an aiokafka producer: ``send`` / ``send_and_wait`` / ``flush`` / ``stop``."""

    sent: list[Sent] = field(default_factory=list)
    fail_with: list[BaseException] = field(default_factory=list)  # raised by the next sends, in order

    def _take(self, topic: str, key: bytes | None, value: bytes | None, headers: Any) -> None:
        if self.fail_with:
            raise self.fail_with.pop(0)
        self.sent.append(Sent(topic, key, value, headers))

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[None]:
        self._take(topic, key, value, headers)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send_and_wait(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                            headers: list[tuple[str, bytes]] | None = None) -> None:
        self._take(topic, key, value, headers)

    async def flush(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def on(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]


@dataclass
class FakeClients:
    """Stands in for :class:`flyball.stream_processors.kafka.KafkaClients`."""

    producer_: FakeProducer = field(default_factory=FakeProducer)
    consumer_: Any = None

    def consumer(self, *topics: str, **config: Any) -> Any:
        return self.consumer_

    async def producer(self, **config: Any) -> FakeProducer:
        return self.producer_


class FlakyStore:
    """A store port that raises the given errors on its next ``run`` calls, then delegates to
    ``inner`` (a real ClickHouseStore) or, without one, records the calls and returns ``[]``."""

    def __init__(self, inner: Any = None, *, fail_with: list[BaseException] | None = None) -> None:
        self.inner = inner
        self.fail_with = list(fail_with or [])
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        if self.inner is not None:
            return getattr(self.inner, name)
        return lambda *args, **kwargs: None

    async def run(self, fn: Callable[..., T], *args: Any) -> T | list[Any]:
        self.calls.append((getattr(fn, "__name__", repr(fn)), args))
        if self.fail_with:
            raise self.fail_with.pop(0)
        if self.inner is not None:
            return await self.inner.run(fn, *args)
        return []
