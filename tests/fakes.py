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


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None


class FakeConsumer:
    """Stands in for an aiokafka consumer of one partition per topic: ``getmany`` hands out the
    records from the position on, ``seek`` moves the position back, ``commit`` is recorded."""

    def __init__(self, tp: Any, values: list[bytes], *, fail_commits: list[BaseException] | None = None) -> None:
        self.tp = tp
        self.records = [Record(tp.topic, tp.partition, i, v) for i, v in enumerate(values)]
        self.position = 0
        self.commits: list[dict[Any, int]] = []
        self.fail_commits = list(fail_commits or [])  # raised by the next commits carrying offsets

    def add(self, value: bytes) -> None:
        self.records.append(Record(self.tp.topic, self.tp.partition, len(self.records), value))

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def assignment(self) -> set[Any]:
        return {self.tp}

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        return None

    def highwater(self, tp: Any) -> int:
        return len(self.records)

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Record]]:
        batch = self.records[self.position:]
        if not batch:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self.position = len(self.records)
        return {self.tp: batch}

    def seek(self, tp: Any, offset: int) -> None:
        assert tp == self.tp
        self.position = offset

    async def commit(self, offsets: dict[Any, int] | None = None) -> None:
        if offsets and self.fail_commits:
            raise self.fail_commits.pop(0)
        self.commits.append(dict(offsets or {}))


class FakeAuditLog:
    """The control loop's audit port: ``run(write_actions, rows)``; can be told to fail."""

    def __init__(self, *, fail_with: list[BaseException] | None = None) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.fail_with = list(fail_with or [])

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.fail_with:
            raise self.fail_with.pop(0)
        return fn(*args)

    def write_actions(self, rows: Any) -> None:
        self.rows.extend(tuple(r) for r in rows)

    def decisions(self) -> list[str]:
        return [str(r[2]) for r in self.rows]
