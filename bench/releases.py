"""Release safety quality: regressions caught, time to verdict, false rollbacks on clean releases.

    .venv/bin/python bench/releases.py                 # held-out seeds (the figures to quote)
    .venv/bin/python bench/releases.py --tuning        # the seeds the thresholds were chosen on
    make quality-releases                              # held-out seeds, 5% canary, with the summary line

Seeds: ``TUNING`` (1-4) are the ones the minimum effects and alpha were chosen on; ``HELD_OUT``
(201-210) were run once, after the pin/strict-safety work, with no change made after looking;
101-108 (``SPENT``) were the previous held-out set and have been looked at, so they are not
quoted as held-out any more.

Each simulation (``stream_processors/release_sim.py``) has one feature per regression kind (2x
failure rate, +30% cost per call, -0.2 mean feedback, 5x safety triggers, 2x latency, 3x tool
failures, 3x empty retrievals) and as many clean releases (one in four a model canary), every
feature at 1 call/s, the canary at ``--share`` of its traffic, two hours. Events go in 5-second
batches of event time: decoded and priced as the worker's ``Pipeline`` does, then handed to the
release comparison (the other detectors are left out to keep the bench short). A regression is caught when a
``version_regression`` alert opens on its scope; a false rollback is one on a clean release.
Baseline printed alongside: the same comparison with a fixed-horizon z-test peeked at after every
batch (what a dashboard that is looked at continuously amounts to), on the same events.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flyball.stream_processors import releases as rel
from flyball.stream_processors.decode import decode_event
from flyball.stream_processors.pricing import load_catalog, price_event
from flyball.stream_processors.release_sim import REGRESSIONS, ReleaseSimulator

TUNING = (1, 2, 3, 4)
SPENT = tuple(range(101, 109))  # the previous held-out seeds: looked at, no longer held out
HELD_OUT = tuple(range(201, 211))
GOAL_S = 600  # a regression caught within 10 minutes


def _book() -> Any:
    data = Path(rel.__file__).parent / "data" / "prices.json"
    return load_catalog(data.read_bytes(), source="built-in")


def run(seed: int, share: float, params: rel.ReleaseParams, peek_z: float | None = None) -> dict[str, Any]:
    sim = ReleaseSimulator(seed, canary_share=share)
    events = sim.run()
    book = _book()
    comparator = rel.ReleaseComparator(params)
    if peek_z is not None:  # the baseline: alpha spent at every look
        z = peek_z

        def naive(effect: float, var: float, delta: float, tau2: float, alpha: float) -> tuple[float, float, float]:
            half = z * math.sqrt(var) if var > 0 else math.inf
            p = 0.0 if var > 0 and effect - delta > half else 1.0
            return p, effect - half, effect + half
        original = rel.msprt
        rel.msprt = naive  # type: ignore[assignment] - bench-only swap of the test statistic
    try:
        opened: dict[str, float] = {}
        batch: list[bytes] = []
        edge = events[0][0] + 5 if events else 0.0
        for t, body in events:
            if t >= edge and batch:
                _feed(comparator, book, batch, opened)
                batch, edge = [], t + 5
            batch.append(orjson.dumps(body))
        if batch:
            _feed(comparator, book, batch, opened)
    finally:
        if peek_z is not None:
            rel.msprt = original
    caught, false = {}, []
    for r in sim.releases:
        key = _key(r.scope())
        if r.regression is None:
            if key in opened:
                false.append(key)
        else:
            caught[r.regression] = opened.get(key, math.inf) - r.start
    promoted = [c for c in comparator.report() if c["verdict"] == "promote"]
    to_promote = [datetime.fromisoformat(c["decided_at"]).timestamp() - datetime.fromisoformat(c["started"]).timestamp()
                  for c in promoted if c["decided_at"]]
    return {"caught": caught, "false": false, "clean": sum(r.regression is None for r in sim.releases),
            "promoted": len(promoted), "to_promote": to_promote}


def _key(scope: dict[str, Any]) -> str:
    return "|".join(f"{k}={scope.get(k)}" for k in ("feature", "version_field", "old_version", "new_version"))


def _feed(comparator: rel.ReleaseComparator, book: Any, batch: list[bytes], opened: dict[str, float]) -> None:
    pairs = []
    for raw in batch:
        event = decode_event(raw, now=None)
        cost = price_event(event, book)[0] if event.event_type == "llm_call" else None
        pairs.append((event, None if cost is None else float(cost)))
    alerts = comparator.observe(pairs) + comparator.advance(pairs[-1][0].ts)
    for alert in alerts:
        if alert.kind == "version_regression" and alert.status == "open":
            key = _key(alert.scope.compact())
            if key not in opened and alert.opened_at is not None:
                opened[key] = alert.opened_at.timestamp()


def summary(seeds: tuple[int, ...], share: float, results: list[dict[str, Any]]) -> str:
    """One line: false rollbacks on clean releases, regressions caught within 10 minutes, and the
    median time from canary start to a verdict (rollback for regressions, promote for clean)."""
    clean = sum(r["clean"] for r in results)
    false = sum(len(r["false"]) for r in results)
    delays = [d for r in results for d in r["caught"].values()]
    caught = [d for d in delays if math.isfinite(d)]
    within = sum(d <= GOAL_S for d in caught)
    promote = [d for r in results for d in r["to_promote"]]
    med_c = f"{statistics.median(caught):.0f} s" if caught else "-"
    med_p = f"{statistics.median(promote):.0f} s" if promote else "-"
    return (f"releases (seeds {seeds[0]}-{seeds[-1]}, canary {share:.0%} of 1 call/s): {false}/{clean} false rollbacks; "
            f"{len(caught)}/{len(delays)} regressions caught, {within}/{len(delays)} within 10 min; "
            f"median time to rollback {med_c}, to promote {med_p}")


def report(name: str, results: list[dict[str, Any]]) -> None:
    n = len(results)
    clean = sum(r["clean"] for r in results)
    false = sum(len(r["false"]) for r in results)
    promoted = sum(r["promoted"] for r in results)
    print(f"\n{name}: {n} simulations, {clean} clean releases -> {false} false rollbacks, {promoted} promoted")
    print(f"  {'regression':<16} {'caught':>8} {'<=10 min':>9} {'median s':>9} {'p90 s':>8}")
    for kind in REGRESSIONS:
        delays = [r["caught"][kind] for r in results if kind in r["caught"]]
        hit = [d for d in delays if math.isfinite(d)]
        within = sum(d <= 600 for d in hit)
        med = f"{statistics.median(hit):.0f}" if hit else "-"
        p90 = f"{sorted(hit)[math.ceil(0.9 * len(hit)) - 1]:.0f}" if hit else "-"  # nearest rank
        print(f"  {kind:<16} {len(hit):>4}/{len(delays):<3} {within:>5}/{len(delays):<3} {med:>9} {p90:>8}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tuning", action="store_true", help="score the tuning seeds instead of the held-out ones")
    parser.add_argument("--share", type=float, nargs="*", default=[0.05, 0.2])
    parser.add_argument("--seeds", type=int, default=0, help="use only the first N seeds")
    parser.add_argument("--no-baseline", action="store_true", help="skip the peeked z-test baseline")
    args = parser.parse_args()
    seeds = TUNING if args.tuning else HELD_OUT
    if args.seeds:
        seeds = seeds[: args.seeds]
    params = rel.ReleaseParams()
    print(f"seeds {'tuning' if args.tuning else 'held-out'} {seeds}; params {params}")
    lines = []
    for share in args.share:
        results = [run(s, share, params) for s in seeds]
        report(f"mSPRT, canary {share:.0%} of 1 call/s", results)
        lines.append(summary(seeds, share, results))
        if share == args.share[0] and not args.no_baseline:
            baseline = [run(s, share, params, peek_z=2.58) for s in seeds]
            report(f"baseline: z-test peeked every batch (z 2.58), canary {share:.0%}", baseline)
            lines.append("baseline " + summary(seeds, share, baseline))
    print(f"\n{'held-out' if not args.tuning else 'TUNING'} summary:")
    for line in lines:
        print("  " + line)


if __name__ == "__main__":
    main()
