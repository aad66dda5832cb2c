"""The one timing helper of the benchmarks: run a callable once to warm up, then ``runs``
times, and report the median and p95 of the timed runs in milliseconds with the last result."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple


class Timing(NamedTuple):
    p50_ms: float
    p95_ms: float
    runs_ms: list[float]
    result: Any


def timed(fn: Callable[[], Any], runs: int, *, warm_up: bool = True) -> Timing:
    """Median and p95 (nearest rank) of ``runs`` calls of ``fn`` after one untimed warm-up call."""
    if runs < 1:
        raise ValueError("runs: at least 1")
    result = fn() if warm_up else None
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return Timing(statistics.median(times), p95, times, result)
