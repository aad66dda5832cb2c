"""What can go wrong in the worker, and what to do about it.

Two kinds of failure, told apart by the adapters at the edge (``sinks/clickhouse.py``,
``kafka.py``) from the driver's own exception types and error codes:

- :class:`PermanentError`: retrying cannot help (data ClickHouse refuses, a record the broker
  will never take). The records that caused it go to the dead-letter topic with the reason;
  the partition moves on.
- :class:`TemporaryError`: the other side is unavailable for now (network, overload, a
  rebalance). Retried with backoff a bounded number of times (:func:`with_retry`), offsets not
  committed meanwhile; when the retries are spent the error ends the task, the supervisor ends
  the process with a non-zero exit, and the restarted process replays the uncommitted batch.

:class:`InvalidInput` is bad input from a person or a file (a budget, a price catalog): its
message starts with the field it names, and the API answers it with a 422.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

log = structlog.get_logger(__name__)
T = TypeVar("T")


class PermanentError(Exception):
    """Retrying cannot help: dead-letter what caused it, with ``str(self)`` as the reason."""


class TemporaryError(Exception):
    """Worth retrying, after ``retry_after`` seconds at the earliest (None: the caller's backoff)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidInput(ValueError):
    """Bad input from a person or a file; the message begins with the field (``field: why``)."""

    @property
    def field(self) -> str:
        text = str(self)
        head, sep, _ = text.partition(":")
        return head.strip() if sep and " " not in head.strip() else ""


async def with_retry(op: Callable[[], Awaitable[T]], *, what: str, attempts: int = 8, base_delay: float = 0.2,
                     max_delay: float = 10.0, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                     event: str = "temporary_failure") -> T:
    """Await ``op()``, retrying a :class:`TemporaryError` with exponential backoff up to
    ``attempts`` times in all (about 23 s with the defaults); then the last error is raised.
    A :class:`PermanentError` (or anything else) is raised at once. The waiting happens on the
    event loop, never on the thread that runs the driver (which the API shares under ``up``)."""
    delay = base_delay
    for attempt in range(1, attempts + 1):
        try:
            return await op()
        except TemporaryError as exc:
            if attempt >= attempts:
                log.error("retries_exhausted", what=what, attempts=attempts, error=str(exc)[:300])
                raise
            wait = max(delay, exc.retry_after or 0.0)
            log.warning(event, what=what, attempt=attempt, retry_in_s=round(wait, 3),
                        error=str(exc)[:300])
            await sleep(wait)
            delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable: attempts >= 1")  # pragma: no cover
