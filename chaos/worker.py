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
``events``, merges running, inserts and merges so far, the memory chDB tracks), each allocator's
share of the process's memory (pymalloc's arenas and the bytes in use in them, glibc's arenas
with their free space, jemalloc's allocated, active, metadata and resident bytes), the
collector's runs and objects freed per generation (and, once, the types of what it frees), and
the process's CPU seconds per thread name. Everything else is the unmodified worker.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import os
import re
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

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
    "jemalloc": "SELECT stats FROM system.jemalloc_stats",
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
            "top_pad_mb": round(m.keepcost / 1e6, 1), "python_blocks": sys.getallocatedblocks(),
            "heaps": _glibc_heaps(libc)}


def _glibc_heaps(libc: ctypes.CDLL) -> list[tuple[int, float, float]]:
    """Per glibc arena (``malloc_info``): its number, MB mapped from the system, MB free inside it."""
    fd, name = tempfile.mkstemp()
    os.close(fd)
    try:
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        fp = libc.fopen(name.encode(), b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        root = ElementTree.fromstring(Path(name).read_text())
    except (OSError, AttributeError, ElementTree.ParseError):
        return []
    finally:
        os.unlink(name)
    out = []
    for heap in root.findall("heap"):
        free = sum(int(t.get("size", 0)) for t in heap.findall("total"))
        current = next((int(s.get("size", 0)) for s in heap.findall("system") if s.get("type") == "current"), 0)
        out.append((int(heap.get("nr", -1)), round(current / 1e6, 1), round(free / 1e6, 1)))
    return out


def _pymalloc() -> dict[str, float]:
    """pymalloc's arenas (1 MiB each, mapped apart from glibc's heap) and the bytes in use in them,
    read from ``sys._debugmallocstats`` (it writes to the C stderr: fd 2 is pointed at a file for
    the call; a log line written in that instant by another thread would land there)."""
    fd, name = tempfile.mkstemp()
    saved = os.dup(2)
    try:
        sys.stderr.flush()
        os.dup2(fd, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
    text = Path(name).read_text(errors="replace")
    os.unlink(name)
    out: dict[str, float] = {}
    for line in text.splitlines():
        if "=" not in line or not line.startswith("#"):
            continue
        key, _, value = line[1:].partition("=")
        key = key.strip()
        if key in ("arenas allocated current", "bytes in allocated blocks", "bytes in available blocks"):
            number = float(value.strip().replace(",", ""))
            out[key.replace(" ", "_")] = number if key.startswith("arenas") else round(number / 1e6, 1)
    return out


_JEMALLOC = re.compile(r"Allocated: (\d+), active: (\d+), metadata: (\d+).*?resident: (\d+), mapped: (\d+), "
                       r"retained: (\d+)")


def _jemalloc(stats: str) -> dict[str, float]:
    """chDB's jemalloc, in MB: allocated, active (pages holding them), metadata, resident, mapped, retained."""
    found = _JEMALLOC.search(stats or "")
    names = ("allocated", "active", "metadata", "resident", "mapped", "retained")
    return {k: round(int(v) / 1e6, 1) for k, v in zip(names, found.groups(), strict=True)} if found else {}


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


def _gc_view(collected: dict[str, int]) -> dict[str, Any]:
    """The collector: its counts, collections and objects freed per generation so far, and the
    types most numerous among the objects waiting in generation 1."""
    young = gc.get_objects(1)
    size, kinds = len(young), collections.Counter(type(o).__name__ for o in young).most_common(8)
    del young
    return {"count": gc.get_count(), "gen1_objects": size, "gen1_types": kinds,
            **dict(sorted(collected.items()))}


def _garbage_kinds() -> list[tuple[str, int]]:
    """The types of the unreachable objects (cycles) the collector finds now, and one example's referrers."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        kinds = collections.Counter(type(o).__name__ for o in gc.garbage).most_common(12)
        mods = collections.Counter(type(o).__module__ for o in gc.garbage).most_common(6)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return [*kinds, *[(f"module:{m}", n) for m, n in mods]]


def _ch_log(store: ClickHouseStore, path: Path, every_s: float = 10.0) -> None:
    """Append chDB's view of itself (queried on the store's own thread) and CPU per thread."""
    t0 = time.monotonic()
    collected: dict[str, int] = {}

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            gen = info["generation"]
            collected[f"runs_{gen}"] = collected.get(f"runs_{gen}", 0) + 1
            collected[f"freed_{gen}"] = collected.get(f"freed_{gen}", 0) + info["collected"]
    gc.callbacks.append(count)
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
        for key in ("VmRSS", "RssAnon", "RssFile", "VmData"):
            line[key] = next((round(int(s.split()[1]) / 1024, 1) for s in status if s.startswith(f"{key}:")), None)
        if isinstance(line.get("jemalloc"), str):
            line["jemalloc"] = _jemalloc(line["jemalloc"])
        line["glibc"] = _glibc_heap()
        line["pymalloc"] = _pymalloc()
        line["threads"] = len(os.listdir("/proc/self/task"))
        line["gc"] = _gc_view(collected)
        if len(collected) and "garbage" not in collected:  # once: what the collector frees, by type
            collected["garbage"] = 1
            line["garbage"] = _garbage_kinds()
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
