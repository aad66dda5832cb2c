#!/usr/bin/env python3
"""Detector fingerprint: a hash of every alert the pipeline emits, and of the final detector
state, over many simulated streams cut into batches three ways. For refactoring the detectors
without changing what they do: run it before and after and diff the output.

    python bench/fingerprint.py > before.txt   # ... change the code ...
    python bench/fingerprint.py > after.txt && diff before.txt after.txt

Streams: every scenario of ``flyball simulate`` (clean traffic shortened to 6 hours) x ``--seeds``
seeds, each cut into batches of at most 10 s of event time (as ``bench/quality.py`` does), of
5,000 events, and of 137 events. One line per stream: name, alerts emitted, hash of the alerts
(JSON, in emission order), hash of the final ``Detectors.snapshot()``.
"""

from __future__ import annotations

import argparse
import hashlib
from concurrent.futures import ProcessPoolExecutor

import orjson
from flyball.control_plane.runtime import load_prices
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.simulate import KINDS, simulate

CUTS = {"10s": (10.0, 5_000), "5000": (float("inf"), 5_000), "137": (float("inf"), 137)}


def fingerprint(job: tuple[str, int, str]) -> str:
    scenario, seed, cut_name = job
    sim = simulate(scenario, seed, hours=6 if scenario == "clean" else None)
    book = load_prices(None)  # the built-in catalog
    pipe = Pipeline(lambda: book)
    alerts = hashlib.sha256()
    count = 0
    max_s, max_n = CUTS[cut_name]
    batch: list[bytes] = []
    cut: float | None = None

    def flush() -> None:
        nonlocal count
        for alert in pipe.process(batch, now=None).alerts:
            alerts.update(alert.model_dump_json().encode())
            count += 1

    for t, line in zip((t for t, _ in sim.events), sim.lines(), strict=True):
        if cut is not None and (t >= cut or len(batch) >= max_n):
            flush()
            batch, cut = [], None
        if cut is None:
            cut = t + max_s
        batch.append(line)
    if batch:
        flush()
    state = hashlib.sha256(orjson.dumps(pipe.detectors.snapshot(), option=orjson.OPT_SORT_KEYS))
    return f"{scenario}/{seed}/{cut_name} {count} {alerts.hexdigest()[:16]} {state.hexdigest()[:16]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    jobs = [(s, seed, c) for s in ("incidents", "clean", *KINDS) for seed in range(a.seeds) for c in CUTS]
    with ProcessPoolExecutor(a.jobs) as pool:
        for line in pool.map(fingerprint, jobs):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
