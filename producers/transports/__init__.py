"""The shim's one I/O seam: a ``Transport`` sends batches of (key, value) records and
follows the directive topic. ``KafkaTransport`` talks to Kafka; ``MemoryTransport`` keeps
everything in memory for tests of code that uses the shim."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol


class Transport(Protocol):
    async def start(self) -> None: ...

    async def send_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Deliver all records (in order per key) or raise :class:`TransportError` whose
        ``failed`` lists the indices of the records not known to be delivered."""

    def follow(self, topic: str) -> AsyncIterator[list[bytes]]:
        """Yield batches of record values from the start of ``topic``, forever (an empty
        batch when nothing is new). ``synced_at`` is the wall time the follower last heard
        from the broker, or None before the first answer."""

    @property
    def synced_at(self) -> float | None: ...

    async def stop(self) -> None: ...


class TransportError(Exception):
    """Sending failed; the undelivered records are spilled and retried, never dropped silently.

    ``failed``: indices (in the batch) of the records not known to be delivered; None = all."""

    def __init__(self, message: str, *, failed: Sequence[int] | None = None) -> None:
        super().__init__(message)
        self.failed = list(failed) if failed is not None else None


from .kafka import KafkaTransport  # noqa: E402 - re-export after the protocol
from .memory import MemoryTransport  # noqa: E402

__all__ = ["KafkaTransport", "MemoryTransport", "Transport", "TransportError"]
