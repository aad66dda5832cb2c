"""In-memory transport: records kept per topic, for tests of code that uses the shim."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

from . import TransportError


class MemoryTransport:
    def __init__(self) -> None:
        self.topics: dict[str, list[tuple[bytes | None, bytes]]] = {}
        self.down = False  # set True to simulate an unreachable broker
        self.deliver_first = 0  # with ``down``: deliver this many records of a batch, then fail
        self.synced_at: float | None = None

    async def start(self) -> None:
        return None

    async def send_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        if self.down:
            done = min(self.deliver_first, len(records))
            self.topics.setdefault(topic, []).extend(records[:done])
            raise TransportError("memory transport is down", failed=range(done, len(records)))
        self.topics.setdefault(topic, []).extend(records)

    async def follow(self, topic: str) -> AsyncIterator[list[bytes]]:
        seen = 0
        while True:
            if self.down:
                await asyncio.sleep(0.05)
                continue
            records = self.topics.get(topic, [])
            self.synced_at = time.time()
            yield [value for _, value in records[seen:]]
            seen = len(records)
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        return None
