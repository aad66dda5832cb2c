"""The shim's one I/O seam: a ``Transport`` sends batches of (key, value) records and
follows the directive topic. ``KafkaTransport`` talks to Kafka; ``MemoryTransport`` keeps
everything in memory for tests of code that uses the shim."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol


class Transport(Protocol):
    async def start(self) -> None: ...

    async def send_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Deliver all records (in order per key) or raise; never deliver part silently."""

    def follow(self, topic: str) -> AsyncIterator[list[bytes]]:
        """Yield batches of record values from the start of ``topic``, forever."""

    async def stop(self) -> None: ...


class TransportError(Exception):
    """Sending failed; the batch is retried (and later spilled), never dropped silently."""


from .kafka import KafkaTransport  # noqa: E402 - re-export after the protocol
from .memory import MemoryTransport  # noqa: E402

__all__ = ["KafkaTransport", "MemoryTransport", "Transport", "TransportError"]
