#!/usr/bin/env python3
"""Detector quality: recall, false alerts and detection delay over simulated traffic.

    python bench/quality.py                      # 10 incident seeds + 2 clean days, 2 processes (2-3 min)
    python bench/quality.py --seeds 30 --clean-seeds 5
    make quality

For each seed, ``flyball simulate``'s generator produces traffic in memory and the events go
through the worker's own :class:`Pipeline` in batches of 5,000 (what ``flyball replay`` does,
in-process, no Kafka, no ClickHouse), cut into batches of at most 10 s of event time as a live worker
would see them (a 5,000-event batch of this traffic spans ten minutes and would blur the delay). Scoring against the labels:

- an incident is *detected* when an alert of the same kind, whose scope agrees with the label on
  every field both carry, opened between the incident's start and its end + 2 minutes;
- *delay* = the alert's ``opened_at`` (event time at which the evidence crossed the threshold)
  minus the incident's start;
- *false alerts* = every alert opened on the ``clean`` scenario (no incidents), per tenant-day;
  ``unpriced_model`` and ``budget_threshold`` are not anomaly detectors and are not counted.

Targets: recall >= 95 % per kind, <= 1 false alert per tenant-day, median delay <= 60 s.
Writes ``bench/out/quality.json``; exit 0 whether or not the targets are met.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from flyball.schemas import Alert
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.pricing import PriceBook, load_catalog
from flyball.stream_processors.simulate import KINDS, Simulation, simulate

ROOT = Path(__file__).resolve().parent.parent
NOT_ANOMALIES = {"unpriced_model", "budget_threshold"}
GRACE_S = 120.0
BATCH = 5_000
BATCH_S = 10.0  # a live worker sees a few hundred ms per batch; 10 s of event time bounds the quantization


def builtin_book() -> PriceBook:
    text = resources.files("flyball.stream_processors").joinpath("data/prices.json").read_bytes()
    return load_catalog(text, source="flyball built-in catalog")


def run(sim: Simulation, book: PriceBook) -> dict[str, Alert]:
    """Feed the simulation through a fresh Pipeline; the first emission of each alert id."""
    pipe = Pipeline(lambda: book)
    first: dict[str, Alert] = {}
    batch: list[bytes] = []
    cut = None
    for t, line in zip((t for t, _ in sim.events), sim.lines(), strict=True):
        if cut is not None and (t >= cut or len(batch) >= BATCH):
            _collect(pipe.process(batch, now=None).alerts, first)
            batch = []
            cut = None
        if cut is None:
            cut = t + BATCH_S
        batch.append(line)
    if batch:
        _collect(pipe.process(batch, now=None).alerts, first)
    return first


def _collect(alerts: list[Alert], first: dict[str, Alert]) -> None:
    for alert in alerts:
        if alert.kind not in NOT_ANOMALIES and alert.alert_id not in first:
            first[alert.alert_id] = alert


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def agrees(alert_scope: dict[str, str], label_scope: dict[str, str]) -> bool:
    common = set(alert_scope) & set(label_scope)
    return bool(common) and all(alert_scope[k] == label_scope[k] for k in common)


def score_incidents(sim: Simulation, alerts: dict[str, Alert]) -> tuple[list[tuple[str, float | None]], int]:
    found: list[tuple[str, float | None]] = []
    explained: set[str] = set()
    for label in sim.labels()["incidents"]:
        start, end = _ts(label["start"]), _ts(label["end"])
        delays = []
        for a in alerts.values():
            opened = (a.opened_at or a.first_seen).timestamp()
            if start - GRACE_S <= opened <= end + GRACE_S and agrees(a.scope.compact(), label["scope"]):
                explained.add(a.alert_id)  # any kind: a cost spike also spikes tokens
                if a.kind == label["kind"] and opened >= start:
                    delays.append(opened - start)
        found.append((label["kind"], min(delays) if delays else None))
    return found, len(set(alerts) - explained)


def incident_run(seed: int) -> dict[str, Any]:
    sim = simulate("incidents", seed)
    found, extra = score_incidents(sim, run(sim, builtin_book()))
    labels = sim.labels()["incidents"]
    misses = [next(lb for lb in labels if lb["kind"] == kind) for kind, delay in found if delay is None]
    return {"seed": seed, "events": len(sim.events), "found": found, "unexplained": extra, "misses": misses}


def clean_run(seed: int) -> dict[str, Any]:
    sim = simulate("clean", seed)
    alerts = [(str(a.kind), a.scope.key(), a.metric, a.observed, a.baseline, str(a.opened_at))
              for a in run(sim, builtin_book()).values()]
    return {"seed": seed, "events": len(sim.events), "tenant_days": sim.labels()["tenant_days"], "alerts": alerts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10, help="incident scenarios (one incident of every kind each)")
    ap.add_argument("--clean-seeds", type=int, default=2, help="clean days (5 tenants each)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "quality.json")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every miss and false alert")
    a = ap.parse_args()
    t0 = time.monotonic()
    per_kind: dict[str, list[float | None]] = defaultdict(list)
    unexplained = 0
    events = 0
    false_alerts: dict[str, int] = defaultdict(int)
    tenant_days = 0.0
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        cleans = [pool.submit(clean_run, 1000 + seed) for seed in range(a.clean_seeds)]
        incidents = [pool.submit(incident_run, seed) for seed in range(a.seeds)]
        for fut in incidents:
            r = fut.result()
            events += r["events"]
            unexplained += r["unexplained"]
            for kind, delay in r["found"]:
                per_kind[kind].append(delay)
            for miss in r["misses"] if a.verbose else []:
                print(f"  miss seed={r['seed']} {miss}", file=sys.stderr)
        for fut in cleans:
            r = fut.result()
            events += r["events"]
            tenant_days += r["tenant_days"]
            for kind, key, metric, observed, baseline, opened in r["alerts"]:
                false_alerts[kind] += 1
                if a.verbose:
                    print(f"  false seed={r['seed']} {kind} {key} {metric} {observed} vs {baseline} at {opened}",
                          file=sys.stderr)
    elapsed = time.monotonic() - t0

    rows = []
    all_delays: list[float] = []
    for kind in KINDS:
        got = per_kind[kind]
        delays = sorted(d for d in got if d is not None)
        all_delays += delays
        rows.append({
            "kind": kind, "incidents": len(got), "detected": len(delays),
            "recall": len(delays) / len(got) if got else None,
            "median_delay_s": statistics.median(delays) if delays else None,
            "p95_delay_s": delays[min(len(delays) - 1, int(0.95 * len(delays)))] if delays else None,
            "false_alerts_clean": false_alerts.get(kind, 0),
        })
    total_false = sum(false_alerts.values())
    per_td = total_false / tenant_days if tenant_days else 0.0
    print(f"detector quality: {a.seeds} incident scenarios ({a.seeds} x {len(KINDS)} incidents), "
          f"{a.clean_seeds} clean days x 5 tenants = {tenant_days:.0f} tenant-days, {events:,} events, {elapsed:.0f} s")
    print()
    print("| kind | recall | median delay | p95 delay | false alerts (clean) |")
    print("|---|---|---|---|---|")
    for r in rows:
        med = f"{r['median_delay_s']:.0f} s" if r["median_delay_s"] is not None else "-"
        p95 = f"{r['p95_delay_s']:.0f} s" if r["p95_delay_s"] is not None else "-"
        print(f"| {r['kind']} | {r['detected']}/{r['incidents']} ({(r['recall'] or 0):.0%}) | {med} | {p95} | "
              f"{r['false_alerts_clean']} |")
    med_all = statistics.median(all_delays) if all_delays else float("nan")
    p95_all = sorted(all_delays)[int(0.95 * (len(all_delays) - 1))] if all_delays else float("nan")
    print(f"| **all** | {len(all_delays)}/{sum(r['incidents'] for r in rows)} | {med_all:.0f} s | {p95_all:.0f} s | "
          f"{total_false} = **{per_td:.2f} per tenant-day** |")
    print()
    met = {
        "recall >= 95% per kind": all((r["recall"] or 0) >= 0.95 for r in rows),
        "<= 1 false alert per tenant-day": per_td <= 1.0,
        "median delay <= 60 s": med_all <= 60,
    }
    for name, ok in met.items():
        print(f"target {name}: {'MET' if ok else 'NOT MET'}")
    print(f"(alerts in incident scenarios not explained by any labelled incident: {unexplained})")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({
        "benchmark": "quality", "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "seeds": a.seeds, "clean_seeds": a.clean_seeds, "tenant_days": tenant_days, "events": events,
        "kinds": rows, "false_alerts_per_tenant_day": per_td, "median_delay_s": med_all, "p95_delay_s": p95_all,
        "unexplained_alerts_in_incident_runs": unexplained, "targets": met, "elapsed_s": elapsed,
    }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
