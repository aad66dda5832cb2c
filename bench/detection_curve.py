#!/usr/bin/env python3
"""The detection curve on independent traffic: recall by kind x incident size x volume, false alerts
and pages per tenant-day, delay; on tuning seeds or on held-out seeds.

    python bench/detection_curve.py                    # held-out seeds (what docs and README quote)
    python bench/detection_curve.py --split tune       # the seeds detector work may look at
    make quality

Traffic comes from ``bench/evaltraffic.py`` (written independently of the detectors and of
``flyball simulate``); each seed is one day of 12 tenants. The events go, as JSON lines, through the
worker's own :class:`Pipeline` in batches of 5,000 lines, exactly as ``flyball replay`` feeds it
(so the figures are what ``flyball replay --events F --out D`` writes to ``alerts.jsonl``).

Seeds are split once and for all: ``TUNE_SEEDS`` may be looked at while changing the detectors;
``HELDOUT_SEEDS`` are only run to report (docs/DETECTION.md, README).

Scoring against the labels:
- an incident is *detected* when an alert of its kind, whose scope agrees with the label on every
  field both carry (at least one), opened between 60 s before its start and 2 minutes after its end;
  *delay* = the alert's ``opened_at`` minus the start (0 if earlier);
- a *false alert* is an alert that no labelled incident explains (any kind, agreeing scope, opened
  within the incident's span as above); a *page* is a distinct ``incident_id`` among them (what an
  on-call person is woken for after grouping); both per tenant-day;
- ``unpriced_model`` and ``budget_threshold`` are not anomaly detectors and are not counted.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaltraffic import KINDS, VARIANTS, VOLUME_BANDS, Day
from flyball.schemas import Alert
from flyball.stream_processors.detectors import Detectors, SensitivityTable
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.pricing import PriceBook, load_catalog

ROOT = Path(__file__).resolve().parent.parent
# per traffic variant (evaltraffic.VARIANTS). Each held-out set is reported once and then becomes
# tuning data: A 9001-9004 (first set), A 17001-17002 and B 27001 (second set; A 27001 was looked
# at with them), A 47001-47003 and B 57001-57002 (third set), A 67001-67003 and B 77001-77002
# (fourth set), A 87001-87003 and B 97001-97002 (fifth set), A 31001-31003 and B 41001-41002
# (sixth set), A 33001-33003, B 43001-43002 and S/U 21001-21003 (seventh set), A 35001-35003,
# B 45001-45002 and S/U 23001-23003 (eighth set), A 39001-39003, B 49001-49002 and S/U
# 25001-25003 (ninth set), A 51001-51003, B 53001-53002 and S/U 29001-29003 (tenth set), A
# 61001-61003, B 63001-63002 and S/U 65001-65003 (eleventh set), A 71001-71003, B 73001-73002
# and S/U 75001-75003 (twelfth set). The current held-out set, A 81001-81003, B 83001-83002 and
# S/U 85001-85003, has never been run.
TUNE_SEEDS = {
    "A": (*range(1, 7), *range(9001, 9005), 17001, 17002, 27001, 47001, 47002, 47003, 67001, 67002, 67003,
          87001, 87002, 87003, 31001, 31002, 31003, 33001, 33002, 33003, 35001, 35002, 35003, 39001, 39002, 39003,
          51001, 51002, 51003, 61001, 61002, 61003, 71001, 71002, 71003),
    "B": (27001, 57001, 57002, 77001, 77002, 97001, 97002, 41001, 41002, 43001, 43002, 45001, 45002, 49001, 49002, 53001, 53002,
          63001, 63002, 73001, 73002),
    # the brief's fixed sizes (evaltraffic.BRIEF_STRONG / BRIEF_SUBTLE): a seed's S and U days differ
    # only in incident size
    "S": (*range(11001, 11007), 21001, 21002, 21003, 23001, 23002, 23003, 25001, 25002, 25003, 29001, 29002, 29003,
          65001, 65002, 65003, 75001, 75002, 75003),
    "U": (*range(11001, 11007), 21001, 21002, 21003, 23001, 23002, 23003, 25001, 25002, 25003, 29001, 29002, 29003,
          65001, 65002, 65003, 75001, 75002, 75003),
}
HELDOUT_SEEDS = {"A": (81001, 81002, 81003), "B": (83001, 83002), "S": (85001, 85002, 85003),
                 "U": (85001, 85002, 85003)}
NOT_ANOMALIES = {"unpriced_model", "budget_threshold"}
BEFORE_S, GRACE_S = 60.0, 120.0
BATCH = 5_000  # flyball replay's batch size
SIZE_CLASSES = ("subtle", "medium", "strong")


def builtin_book() -> PriceBook:
    text = resources.files("flyball.stream_processors").joinpath("data/prices.json").read_bytes()
    return load_catalog(text, source="flyball built-in catalog")


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def agrees(alert_scope: dict[str, str], label_scope: dict[str, str]) -> bool:
    common = set(alert_scope) & set(label_scope)
    return bool(common) and all(alert_scope[k] == label_scope[k] for k in common)


def _day(seed: int, variant: str, cache: Path | None) -> tuple[dict[str, Any], list[bytes]]:
    """A day's labels and event lines, generated, or read from ``cache`` (written on first use)."""
    if cache is not None:
        events, labels_path = cache / f"{variant}-{seed}.jsonl", cache / f"{variant}-{seed}.labels.json"
        if events.exists() and labels_path.exists():
            return json.loads(labels_path.read_bytes()), events.read_bytes().split(b"\n")
    day = Day(seed, spec=VARIANTS[variant])
    labels, lines = day.labels(), day.lines()
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        events.write_bytes(b"\n".join(lines))
        labels_path.write_text(json.dumps(labels))
    return labels, lines


def run_seed(seed: int, variant: str = "A", cache: Path | None = None,
             detection: Path | None = None) -> dict[str, Any]:
    labels, lines = _day(seed, variant, cache)
    book = builtin_book()
    sens = SensitivityTable.load(detection) if detection is not None else SensitivityTable()
    pipe = Pipeline(lambda: book, detectors=Detectors(sensitivity=sens))
    alerts: dict[str, Alert] = {}
    dead: list[str] = []
    for i in range(0, len(lines), BATCH):
        result = pipe.process(lines[i:i + BATCH], now=None)
        dead += [d.reason for d in result.dead]
        for a in result.alerts:
            if a.kind not in NOT_ANOMALIES:
                alerts.setdefault(a.alert_id, a)
    if dead:  # the generator's traffic is valid by construction: a rejected event voids the day
        raise SystemExit(f"seed {seed} ({variant}): {len(dead)} of {len(lines)} events dead-lettered "
                         f"(first: {dead[0]}); no figure from this day")
    found = []
    explained: set[str] = set()
    for lb in labels["incidents"]:
        start, end = _ts(lb["start"]), _ts(lb["end"])
        delays = []
        for a in alerts.values():
            opened = (a.opened_at or a.first_seen).timestamp()
            if start - BEFORE_S <= opened <= end + GRACE_S and agrees(a.scope.compact(), lb["scope"]):
                explained.add(a.alert_id)
                if a.kind == lb["kind"]:
                    delays.append(max(0.0, opened - start))
        found.append({**lb, "delay_s": min(delays) if delays else None})
    false = [a for aid, a in alerts.items() if aid not in explained]
    return {
        "seed": seed, "variant": variant, "events": len(lines), "tenant_days": labels["tenant_days"], "incidents": found,
        "false_alerts": [{"kind": str(a.kind), "scope": a.scope.compact(), "opened_at": str(a.opened_at),
                          "incident_id": getattr(a, "incident_id", None) or a.alert_id, "summary": a.summary}
                         for a in false],
    }


def _recall(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "-"
    hit = sum(1 for r in rows if r["delay_s"] is not None)
    return f"{hit}/{len(rows)}"


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def report(results: list[dict[str, Any]], split: str, elapsed: float) -> dict[str, Any]:
    incidents = [i for r in results for i in r["incidents"]]
    false = [f for r in results for f in r["false_alerts"]]
    tenant_days = sum(r["tenant_days"] for r in results)
    pages = {(r["seed"], f["incident_id"]) for r in results for f in r["false_alerts"]}
    delays = [i["delay_s"] for i in incidents if i["delay_s"] is not None]
    bands = [name for _, name in VOLUME_BANDS]
    variants = sorted({r["variant"] for r in results})
    lines = [f"detection curve, {split} seeds {[r['seed'] for r in results]} (traffic variant {', '.join(variants)}): "
             f"{len(results)} days, {tenant_days} tenant-days, "
             f"{sum(r['events'] for r in results):,} events, {len(incidents)} incidents ({elapsed:.0f} s)", "",
             "| kind | " + " | ".join(SIZE_CLASSES) + " | all |", "|---|" + "---|" * (len(SIZE_CLASSES) + 1)]
    for kind in KINDS:
        rows = [i for i in incidents if i["kind"] == kind]
        lines.append(f"| {kind} | " + " | ".join(_recall([i for i in rows if i["size_class"] == c])
                                                  for c in SIZE_CLASSES) + f" | {_recall(rows)} |")
    lines.append("| **all kinds** | " + " | ".join(_recall([i for i in incidents if i["size_class"] == c])
                                                  for c in SIZE_CLASSES) + f" | **{_recall(incidents)}** |")
    lines += ["", "| scope volume | " + " | ".join(SIZE_CLASSES) + " | all |",
              "|---|" + "---|" * (len(SIZE_CLASSES) + 1)]
    for band in bands:
        rows = [i for i in incidents if i["volume_band"] == band]
        lines.append(f"| {band} | " + " | ".join(_recall([i for i in rows if i["size_class"] == c])
                                                for c in SIZE_CLASSES) + f" | {_recall(rows)} |")
    med, p95 = statistics.median(delays) if delays else None, _pct(delays, 0.95)
    per_td = len(false) / tenant_days if tenant_days else 0.0
    pages_td = len(pages) / tenant_days if tenant_days else 0.0
    by_kind: dict[str, int] = defaultdict(int)
    for f in false:
        by_kind[f["kind"]] += 1
    lines += ["", f"false alerts: {len(false)} over {tenant_days} tenant-days = **{per_td:.2f} per tenant-day** "
                  f"({dict(sorted(by_kind.items()))}); pages after grouping: {len(pages)} = **{pages_td:.2f} per "
                  f"tenant-day**",
              f"delay (opened_at - start) of detected incidents: median **{med:.0f} s**, p95 {p95:.0f} s"
              if med is not None else "delay: no detection"]
    print("\n".join(lines))
    return {"split": split, "seeds": [r["seed"] for r in results], "tenant_days": tenant_days,
            "incidents": incidents, "false_alerts": false, "false_alerts_per_tenant_day": per_td,
            "pages_per_tenant_day": pages_td, "median_delay_s": med, "p95_delay_s": p95, "table": lines,
            "when": datetime.now(UTC).isoformat(timespec="seconds"), "elapsed_s": elapsed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("tune", "heldout"), default="heldout")
    ap.add_argument("--seeds", type=int, nargs="*", help="explicit seeds (overrides --split; reported as 'custom')")
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="A", help="traffic shape (evaltraffic.VARIANTS)")
    ap.add_argument("--cache", type=Path, default=None, help="keep generated days here and reuse them")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--detection", type=Path, default=None,
                    help="sensitivity file (YAML/JSON, as FLYBALL_DETECTION_FILE): judge your own settings")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default bench/out/detection_curve_<split>.json)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every miss and false alert")
    a = ap.parse_args()
    seeds = a.seeds or (TUNE_SEEDS if a.split == "tune" else HELDOUT_SEEDS)[a.variant]
    if not seeds:
        ap.error(f"variant {a.variant} has no {a.split} seeds")
    split = "custom" if a.seeds else a.split
    t0 = time.monotonic()
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        results = list(pool.map(run_seed, seeds, [a.variant] * len(seeds), [a.cache] * len(seeds),
                                [a.detection] * len(seeds)))
    out = report(results, split, time.monotonic() - t0)
    if a.verbose:
        for r in results:
            for i in r["incidents"]:
                if i["delay_s"] is None:
                    print(f"  miss seed={r['seed']} {i['kind']} {i['scope']} size={i['size']} "
                          f"{i['size_class']} {i['volume_band']} rate={i['scope_rate_per_s']}", file=sys.stderr)
            for f in r["false_alerts"]:
                print(f"  false seed={r['seed']} {f['kind']} {f['scope']} {f['opened_at']} {f['summary']}",
                      file=sys.stderr)
    path = a.out or ROOT / "bench" / "out" / f"detection_curve_{split}_{a.variant}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
