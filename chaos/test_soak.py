"""The soak: the worker under a steady rate for a while, its RSS and lag sampled and checked flat.

``make chaos`` runs it for FLYBALL_SOAK_S=90 s; ``make soak`` for 1,200 s: a warm-up of
FLYBALL_SOAK_WARMUP_S=600 s, then the 10 minutes that are judged. The rate is
FLYBALL_SOAK_RATE events/s (default 1000). After the warm-up (default: the first third), the lag's
least-squares slope must stay under 1% of the rate (a consumer falling behind grows its lag by
the difference of the two rates), the lag under 10 s of traffic, and the worker's RSS slope
under FLYBALL_SOAK_RSS_MB_PER_MIN (default 2 MB/min). The worker runs with the production
settings: its window of recent event ids (``pipeline.RecentIds``: 5 minutes of event time, at
most 1M ids) grows until it spans its 5 minutes, so RSS is judged from then on (or from the end
of the warm-up, whichever is later). Then the same invariants as every chaos scenario.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import linregress

from flyball.stream_processors.pipeline import RecentIds

from .harness import Lag, Proc, Run, Worker, emitter_result, save, say, verdict

DURATION_S = float(os.environ.get("FLYBALL_SOAK_S", "90"))
RATE = float(os.environ.get("FLYBALL_SOAK_RATE", "1000"))
RSS_MB_PER_MIN = float(os.environ.get("FLYBALL_SOAK_RSS_MB_PER_MIN", "2"))
WARMUP_S = float(os.environ.get("FLYBALL_SOAK_WARMUP_S", str(DURATION_S / 3)))
SAMPLE_S = 5.0
# chDB's and the allocator's memory climb for minutes before levelling off (in the soaks of
# 2026-12-05: 597 -> 752 MB over about 5.5 minutes, docs/RELIABILITY.md), so a short soak reports RSS but does not judge it
RSS_JUDGED_FROM_S = 300.0
_WINDOW = RecentIds()
DEDUPE_FULL_S = min(_WINDOW.window_s, _WINDOW.capacity / RATE)  # when the window of ids stops growing


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (units per second); 0 for fewer than two distinct times."""
    return fit(points)[0]


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope and its standard error (units per second), ``scipy.stats.linregress``.

    The samples are autocorrelated (RSS swings in a sawtooth of tens of seconds), so the standard
    error is a lower bound on the slope's uncertainty, reported beside it, not used to judge it.
    """
    if len({x for x, _ in points}) < 2:
        return 0.0, 0.0
    r = linregress([x for x, _ in points], [y for _, y in points])
    return float(r.slope), float(r.stderr) if len(points) > 2 else 0.0


@pytest.mark.timeout(int(DURATION_S * 3 + 600))
async def test_soak_rss_and_lag_stay_flat(kafka: str, tmp_path: Path, results: Path) -> None:
    run = Run(f"soak {DURATION_S:.0f} s at {RATE:.0f} events/s", kafka, tmp_path)
    t0 = time.monotonic()
    env: dict[str, str] = {}
    for name, value in os.environ.items():  # diagnosis: the Python heap, chDB's own view; worker settings
        if name in ("FLYBALL_CHAOS_HEAP_LOG", "FLYBALL_CHAOS_CH_LOG") or name.startswith("FLYBALL_WORKER_"):
            env[name] = value
    worker = Worker(run, "w1", faulty=True, env=env)
    n = int(DURATION_S * RATE)
    async with Lag(kafka, run.group) as lag:
        await lag.prime()
        emitter: Proc | None = None
        try:
            await asyncio.to_thread(worker.start)
            emitter = run.emitter(n, RATE)
            started = time.monotonic()
            rss: list[tuple[float, float]] = []
            anon: list[tuple[float, float]] = []
            lags: list[tuple[float, float]] = []
            while emitter.alive():
                assert worker.proc is not None and worker.proc.alive(), worker.proc.tail() if worker.proc else ""
                at = time.monotonic() - started
                rss.append((at, worker.proc.rss_mb()))
                anon.append((at, worker.proc.rss_mb("RssAnon")))
                if (now := await lag.lag()) is not None:
                    lags.append((at, float(now)))
                await asyncio.sleep(SAMPLE_S)
            ack = await asyncio.to_thread(emitter_result, emitter)
            await lag.drained(timeout=300)
        finally:
            if emitter is not None:
                await asyncio.to_thread(emitter.stop)
            await asyncio.to_thread(worker.stop)
    # The worker keeps a bounded window of recent event ids (the first line of dedupe): RSS
    # grows until it is full, by design. RSS is judged only once it is, if enough soak is left.
    fill_s = DEDUPE_FULL_S
    warm = WARMUP_S
    rss_tail = [p for p in rss if p[0] >= max(warm, fill_s * 1.1)]
    rss_checked = DURATION_S >= RSS_JUDGED_FROM_S and len(rss_tail) >= max(6, len(rss) // 4)
    lag_tail = [p for p in lags if p[0] >= warm]
    rss_slope = slope(rss_tail) * 60 if rss_checked else slope([p for p in rss if p[0] >= warm]) * 60
    judged_from = rss_tail[0][0] if rss_checked else warm
    anon_tail = [p for p in anon if p[0] >= judged_from]
    lag_slope = slope(lag_tail)
    lag_max = int(max(y for _, y in lags))
    figures: dict[str, Any] = {
        "rss_checked": rss_checked, "dedupe_window_full_at_s": round(fill_s),
        "rss_mb_first": round((rss_tail or rss)[0][1], 1), "rss_mb_last": round(rss[-1][1], 1),
        "rss_mb_per_min": round(rss_slope, 2),
        "rss_mb_per_min_se": round(fit(rss_tail)[1] * 60, 2) if rss_checked else None,
        "rss_judged_from_s": round(judged_from),
        "rss_mb_plateau": round(sum(y for _, y in rss_tail) / len(rss_tail), 1) if rss_tail else None,
        "anon_mb_first": round(anon_tail[0][1], 1) if anon_tail else None, "anon_mb_last": round(anon[-1][1], 1),
        "anon_mb_per_min": round(slope(anon_tail) * 60, 2) if len(anon_tail) > 1 else None,
        "lag_max": lag_max,
               "lag_slope_per_s": round(lag_slope, 1), "samples": len(rss), "rate": RATE, "duration_s": DURATION_S,
               "emit_s": ack.get("emit_s"), "rss_mb_series": [round(y) for _, y in rss[::6]],
               "anon_mb_series": [round(y) for _, y in anon[::6]]}
    v = await asyncio.to_thread(verdict, run, n, ack, [worker], None, {}, drain_s=0.0, t0=t0, extra=figures)
    v.faults.append("none: steady load")
    problems = list(v.problems)
    if rss_checked and rss_slope > RSS_MB_PER_MIN:
        problems.append(f"RSS grows {rss_slope:.2f} MB/min after warm-up (bound {RSS_MB_PER_MIN})")
    if lag_slope > RATE * 0.01:
        problems.append(f"lag grows {lag_slope:.1f} events/s after warm-up (bound {RATE * 0.01:.0f})")
    if lag_max > RATE * 10:
        problems.append(f"lag reached {lag_max} events (over 10 s of traffic)")
    v.problems = problems
    save(v, results)
    say(f"{run.name}: {figures}, problems {problems}")
    assert not problems, problems
