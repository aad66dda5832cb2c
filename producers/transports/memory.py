"""In-memory transport: records kept per topic, for tests of code that uses the shim."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from . import TransportError


class MemoryTransport:
    def __init__(self) -> None:
        self.topics: dict[str, list[tuple[bytes | None, bytes]]] = {}
        self.down = False  # set True to simulate an unreachable broker

    async def start(self) -> None:
        return None

    async def send_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        if self.down:
            raise TransportError("memory transport is down")
        self.topics.setdefault(topic, []).extend(records)

    async def follow(self, topic: str) -> AsyncIterator[list[bytes]]:
        seen = 0
        while True:
            records = self.topics.get(topic, [])
            yield [value for _, value in records[seen:]]
            seen = len(records)
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        return None
