"""`flyball worker` with a fault-injecting ClickHouse store at its store seam.

    python -m chaos.worker [flyball worker arguments]

The store is the real chDB store; while the file named by ``FLYBALL_CHAOS_FAIL_FILE`` exists,
every event and alert insert raises before reaching ClickHouse (as a server that refuses
connections would), and ``FLYBALL_CHAOS_SLOW_ROWS_PER_S`` (when set) makes each insert take
``rows / rate`` seconds longer: a slow consumer. ``FLYBALL_CHAOS_HEAP_LOG`` (a path; diagnosis only,
tracemalloc slows allocation) appends, every 10 s, one JSON line: RSS, the Python heap that
tracemalloc sees and its ten biggest growing lines, so that what grows can be told apart from
what chDB holds. ``FLYBALL_CHAOS_CH_LOG`` (a path; diagnosis) appends, every 10 s, one JSON line of
chDB's own view from inside the worker (its system tables: active and outdated parts of
``events``, merges running, inserts and merges so far, the memory chDB tracks) and the
process's CPU seconds per thread name. Everything else is the unmodified worker.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.exceptions import OperationalError
from flyball.control_plane import cli, runtime
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore


class InjectedFault(OperationalError):
    """The chaos harness switched ClickHouse writes off (raised as the driver raises a network
    failure, so the store classifies it as temporary and the worker retries it, bounded)."""


class FaultyStore(ClickHouseStore):
    def __init__(self, url: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)
        fail = os.environ.get("FLYBALL_CHAOS_FAIL_FILE", "")
        self.fail_file = Path(fail) if fail else None
        slow = os.environ.get("FLYBALL_CHAOS_SLOW_ROWS_PER_S", "")
        self.rows_per_s = float(slow) if slow else 0.0

        if ch := os.environ.get("FLYBALL_CHAOS_CH_LOG", ""):
            threading.Thread(target=_ch_log, args=(self, Path(ch)), daemon=True, name="ch-log").start()

    def _gate(self, rows: Sequence[Sequence[Any]]) -> None:
        if self.fail_file is not None and self.fail_file.exists():
            raise InjectedFault(f"injected: ClickHouse writes fail while {self.fail_file} exists")
        if self.rows_per_s > 0:
            time.sleep(len(rows) / self.rows_per_s)

    def write_events(self, rows: Sequence[Sequence[Any]]) -> None:
        self._gate(rows)
        super().write_events(rows)

    def write_alerts(self, rows: Sequence[Sequence[Any]]) -> None:
        self._gate(rows)
        super().write_alerts(rows)


def _heap_log(path: Path, every_s: float = 10.0) -> None:
    """Append RSS, the traced Python heap and its biggest growth since start, every ``every_s``."""
    tracemalloc.start(1)
    first = tracemalloc.take_snapshot()
    t0 = time.monotonic()
    while True:
        time.sleep(every_s)
        snap = tracemalloc.take_snapshot()
        rss = next((int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmRSS:")), 0.0)
        top = [{"where": str(d.traceback), "mb": round(d.size / 1e6, 2), "grew_mb": round(d.size_diff / 1e6, 2)}
               for d in snap.compare_to(first, "lineno")[:10]]
        line = {"t": round(time.monotonic() - t0), "rss_mb": round(rss, 1),
                "heap_mb": round(tracemalloc.get_traced_memory()[0] / 1e6, 1), "top": top}
        with path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")


_CH_PROBES = {
    "parts_active": "SELECT count() FROM system.parts WHERE table = 'events' AND active",
    "parts_outdated": "SELECT count() FROM system.parts WHERE table = 'events' AND NOT active",
    "parts_all_tables": "SELECT count() FROM system.parts",
    "rows": "SELECT sum(rows) FROM system.parts WHERE table = 'events' AND active",
    "merges_running": "SELECT count() FROM system.merges",
    "inserts": "SELECT value FROM system.events WHERE event = 'InsertQuery'",
    "inserted_rows": "SELECT value FROM system.events WHERE event = 'InsertedRows'",
    "merges": "SELECT value FROM system.events WHERE event = 'Merge'",
    "selects": "SELECT value FROM system.events WHERE event = 'SelectQuery'",
    "memory_tracked_mb": "SELECT round(value / 1e6, 1) FROM system.metrics WHERE metric = 'MemoryTracking'",
    "primary_index_mb": "SELECT round(sum(primary_key_bytes_in_memory_allocated) / 1e6, 2) FROM system.parts",
    "caches_mb": "SELECT groupArray((metric, round(value / 1e6, 1))) FROM system.metrics WHERE value > 0 AND "
                 "(metric LIKE '%CacheBytes' OR metric LIKE 'MemoryTracking%')",
    "jemalloc": "SELECT concat(extract(stats, 'Allocated: [0-9]+, active: [0-9]+'), ', ', "
                "extract(stats, 'resident: [0-9]+, mapped: [0-9]+, retained: [0-9]+')) FROM system.jemalloc_stats",
}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc_heap() -> dict[str, float]:
    """glibc malloc's view (every arena): bytes in use, free inside the arenas, and mmapped."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        m = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {"used_mb": round((m.uordblks + m.hblkhd) / 1e6, 1), "free_in_arenas_mb": round(m.fordblks / 1e6, 1),
            "arena_mb": round(m.arena / 1e6, 1), "mmapped_mb": round(m.hblkhd / 1e6, 1),
            "python_blocks": sys.getallocatedblocks()}


def _thread_cpu() -> dict[str, float]:
    """CPU seconds per thread name (chDB names its pools: MergeMutate, ThreadPool, ...)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def _ch_log(store: ClickHouseStore, path: Path, every_s: float = 10.0) -> None:
    """Append chDB's view of itself (queried on the store's own thread) and CPU per thread."""
    t0 = time.monotonic()
    while True:
        time.sleep(every_s)
        line: dict[str, Any] = {"t": round(time.monotonic() - t0)}
        for name, sql in _CH_PROBES.items():
            try:
                rows = store.call(store.query, sql)
                line[name] = rows[0][0] if rows else None
            except Exception as exc:  # noqa: BLE001 - a probe must never disturb the worker
                line[name] = f"error: {type(exc).__name__}"
        status = Path("/proc/self/status").read_text().splitlines()
        for key in ("VmRSS", "RssAnon", "RssFile"):
            line[key] = next((round(int(s.split()[1]) / 1024, 1) for s in status if s.startswith(f"{key}:")), None)
        line["glibc"] = _glibc_heap()
        line["cpu_s"] = _thread_cpu()
        with path.open("a") as fh:
            fh.write(json.dumps(line, default=str) + "\n")


def main() -> int:
    if heap := os.environ.get("FLYBALL_CHAOS_HEAP_LOG", ""):
        threading.Thread(target=_heap_log, args=(Path(heap),), daemon=True, name="heap-log").start()
    runtime.ClickHouseStore = FaultyStore  # type: ignore[misc]  # the seam: the store the worker builds
    return cli.main(["worker", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
