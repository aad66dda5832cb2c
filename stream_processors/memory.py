"""Memory hygiene of a long-running worker: hand the allocators' free pages back to the system.

Two C allocators live in a worker besides Python's own: glibc's malloc (the interpreter's bigger
objects, the Kafka client's buffers) and chDB's jemalloc (ClickHouse inside the process). Both
keep memory that was freed: glibc inside its arenas (a free chunk between two used ones is
never returned: in the 10-minute soak its free space grew about 1.4 MB/min with the bytes in
use flat), jemalloc as dirty pages it purges lazily (its resident size swung by 20-40 MB
around a flat allocated size). Neither is a leak, but both make the process's RSS climb and
swing for many minutes. Once a minute, after a batch is committed (never inside one), the
worker asks glibc to return every whole free page (``malloc_trim(0)``, on glibc only) and chDB
to purge jemalloc's dirty pages (``ClickHouseStore.purge_allocator``; a ClickHouse server's
memory is its own business). Measured in docs/RELIABILITY.md ("The soak").

:class:`TrimSchedule` decides when (pure: the caller passes the monotonic clock);
:class:`MemoryHygiene` does it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import platform
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from .errors import PermanentError, TemporaryError

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class TrimSchedule:
    """Due at most once per ``interval_s`` (0 or less: never), the first time one interval
    after the first look: a worker's start is busy enough without it."""

    interval_s: float = 60.0
    _last: float | None = field(default=None, repr=False)

    def due(self, now: float) -> bool:
        """True if a trim is due at ``now`` (monotonic seconds); the interval restarts then."""
        if self.interval_s <= 0:
            return False
        if self._last is None:
            self._last = now
            return False
        if now - self._last < self.interval_s:
            return False
        self._last = now
        return True


def glibc_trim() -> Callable[[], int] | None:
    """``malloc_trim(0)`` of the C library, or None where it is not glibc (musl, macOS)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def call() -> int:
        return int(trim(0))
    return call


def resident_mb() -> float | None:
    """The process's resident set in MB (Linux: /proc/self/statm), None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return None


class MemoryHygiene:
    """What the worker's loop calls after a committed batch and when idle (:meth:`tick`)."""

    def __init__(self, schedule: TrimSchedule, *, trim: Callable[[], int] | None = None,
                 purge: Callable[[], Awaitable[None]] | None = None) -> None:
        self.schedule = schedule
        self.trim = trim  # glibc's malloc_trim (``glibc_trim()``), None: nothing to trim
        self.purge = purge  # chDB's jemalloc purge, run on the store's thread

    async def tick(self, now: float) -> None:
        if not self.schedule.due(now):
            return
        rss = [resident_mb()]
        started = time.perf_counter()
        if self.trim is not None:
            await asyncio.to_thread(self.trim)
        trimmed = time.perf_counter()
        rss.append(resident_mb())
        if self.purge is not None:
            try:
                await self.purge()
            except (PermanentError, TemporaryError) as exc:  # memory stays as it was; the worker goes on
                log.warning("allocator_purge_failed", error=str(exc)[:300])
        rss.append(resident_mb())
        log.info("memory_tidied", trim_ms=round((trimmed - started) * 1000, 1),
                 purge_ms=round((time.perf_counter() - trimmed) * 1000, 1),
                 rss_mb=[None if r is None else round(r, 1) for r in rss])  # before, after trim, after purge
