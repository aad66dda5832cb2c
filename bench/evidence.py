#!/usr/bin/env python3
"""The evidence bound: for each labelled incident, how strong is the evidence in the data, for an
oracle that knows the incident's exact scope, start and end?

    python bench/evidence.py --variant U --seeds 11001 11002 --cache /tmp/dccache
    python bench/evidence.py --variant U --seeds 11001 --curve bench/out/detection_curve_custom_U.json

Days come from ``bench/evaltraffic.py`` through ``detection_curve._day`` (read from ``--cache`` if
there, else generated and written there). Per incident (``runaway_loop`` is skipped: "n/a"):

- scope events: events whose fields equal every field of the label's scope (``request_id`` ignored);
- baseline: the scope's events in the 3 hours before ``start``; with fewer than 30 relevant events
  there, everything before ``start``; with fewer than 10 still, "no baseline";
- the test on the prefix ``[start, t]``, at each relevant event time ``t`` in ``[start, end]``:
  error_rate / tool_failure / retrieval_failure: binomial tail of the failures against the
  baseline's failure share (+0.5 / +1); latency: calls slower than the baseline's 95th percentile
  against 5 %; safety_burst: Poisson tail of the triggers against the calls times the baseline's
  triggers per call; cost_spike / token_spike: compound Poisson (the amount summed over the
  prefix against the baseline's call rate and per-call mean and mean square), continued to real
  counts as ``detectors.amounts.tail_p`` does. Costs are priced with the built-in catalog.
- the oracle delay: the first ``t - start`` at which the prefix p falls below ``--bar``;
- a null control: the same test on a window as long that ends 60 s before the start (no incident
  there, though normal bursts and deploy-like steps are): how often the oracle itself cries wolf.

It bounds what any detector can do at that false-alarm level, and it is generous: the oracle looks
once per event with no correction for the many looks, and is handed the scope and the start.
With ``--curve`` (what ``detection_curve.py --out`` writes) each incident's detector delay is set
beside the oracle's: a miss is "feasible" when the oracle reaches the bar, else "beyond the bound".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from scipy.stats import binom, poisson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from detection_curve import SIZE_CLASSES, _day, _ts, builtin_book
from evaltraffic import VARIANTS
from flyball.stream_processors.detectors import tail_p
from flyball.stream_processors.pricing import PriceBook, Usage, price

BASELINE_S = 3 * 3600.0
MIN_WINDOW, MIN_ANY = 30, 10  # relevant events in the 3-hour baseline / in all the day before start
SLOW_SHARE = 0.05
FAILURES = {"error_rate": "llm_call", "tool_failure": "tool_call", "retrieval_failure": "retrieval"}
AMOUNTS = {"cost_spike", "token_spike"}
SKIPPED = {"runaway_loop"}
NULL_MIN_S = 3600.0  # a null window starts at least this long into the day (it needs a baseline)


# --- the tests (pure) ---------------------------------------------------------------------------

def binomial_tail(k: Any, n: Any, p: float) -> Any:
    """P(X >= k) for X ~ Binomial(n, p); 1 where k <= 0. Elementwise over arrays."""
    return np.where(np.asarray(k) <= 0, 1.0, binom.sf(np.asarray(k) - 1, n, p))


def poisson_tail(k: Any, mu: Any) -> Any:
    """P(X >= k) for X ~ Poisson(mu); 1 where k <= 0."""
    return np.where(np.asarray(k) <= 0, 1.0, poisson.sf(np.asarray(k) - 1, mu))


_TAIL = np.vectorize(tail_p, otypes=[float])


def compound_tail(total: Any, mu: Any, phi: float) -> Any:
    """P(sum >= total) for a compound Poisson sum of mean ``mu`` whose amounts have mean square over
    mean ``phi``: the detectors' own Poisson tail continued to real counts
    (``detectors.amounts.tail_p``) at total/phi against mu/phi, elementwise."""
    return _TAIL(np.asarray(total, dtype=float) / phi, np.asarray(mu, dtype=float) / phi)


@dataclass(frozen=True, slots=True)
class Evidence:
    """One incident's evidence: ``n`` relevant events and ``k`` bad ones (for amounts: the summed
    amount) over the whole window, ``expected`` k under the baseline, the whole window's ``p``, and
    the oracle ``delay_s`` (None: never below the bar). ``note`` says why there is no p."""

    n: int
    k: float
    expected: float
    p: float | None
    delay_s: float | None
    note: str = ""


def _first_below(times: np.ndarray, p: np.ndarray, start: float, bar: float) -> float | None:
    hit = np.flatnonzero(p < bar)
    return float(times[hit[0]] - start) if hit.size else None


def _counting(times: np.ndarray, bad: np.ndarray, p0: float, start: float, bar: float) -> Evidence:
    n = np.arange(1, len(times) + 1)
    k = np.cumsum(bad)
    p = binomial_tail(k, n, p0)
    return Evidence(len(times), float(k[-1]), len(times) * p0, float(p[-1]), _first_below(times, p, start, bar))


def failure_evidence(base_bad: Sequence[bool], times: Sequence[float], bad: Sequence[bool],
                     start: float, bar: float) -> Evidence:
    """Failures in the window against the baseline's share, (failures + 0.5) / (calls + 1)."""
    p0 = (sum(base_bad) + 0.5) / (len(base_bad) + 1)
    if not times:
        return Evidence(0, 0, 0.0, 1.0, None)
    return _counting(np.asarray(times, float), np.asarray(bad, bool), p0, start, bar)


def latency_evidence(base_latency: Sequence[float], times: Sequence[float], latency: Sequence[float],
                     start: float, bar: float) -> Evidence:
    """Calls slower than the baseline's 95th percentile, against 5 %."""
    if not times:
        return Evidence(0, 0, 0.0, 1.0, None)
    q = float(np.percentile(base_latency, 95))
    return _counting(np.asarray(times, float), np.asarray(latency, float) > q, SLOW_SHARE, start, bar)


def burst_evidence(base_calls: int, base_triggers: int, times: Sequence[float], is_trigger: Sequence[bool],
                   start: float, bar: float) -> Evidence:
    """Triggers against calls x the baseline's (triggers + 0.5) / (calls + 1); ``times`` holds the
    window's calls and triggers. A trigger before any call counts against one call."""
    rate = (base_triggers + 0.5) / (base_calls + 1)
    if not times:
        return Evidence(0, 0, 0.0, 1.0, None)
    trig = np.asarray(is_trigger, bool)
    calls, k = np.cumsum(~trig), np.cumsum(trig)
    expected = np.maximum(calls, 1) * rate
    p = poisson_tail(k, expected)
    t = np.asarray(times, float)
    return Evidence(int(calls[-1]), float(k[-1]), float(expected[-1]), float(p[-1]), _first_below(t, p, start, bar))


def amount_evidence(base_amounts: Sequence[float], base_duration_s: float, times: Sequence[float],
                    amounts: Sequence[float], start: float, end: float, bar: float) -> Evidence:
    """Compound Poisson: the summed amount over ``[start, t]`` against the baseline's call rate
    lam and per-call mean m and mean square m2: mu = lam (t - start) m, phi = m2 / m. ``k`` is the
    window's summed amount, ``expected`` lam (end - start) m."""
    base = np.asarray(base_amounts, float)
    lam, m = len(base) / base_duration_s, float(base.mean())
    phi = float((base ** 2).mean()) / m if m > 0 else 1.0
    expected = lam * (end - start) * m
    if not times:
        return Evidence(0, 0, expected, 1.0, None)
    t = np.asarray(times, float)
    total = np.cumsum(np.asarray(amounts, float))
    p_at = compound_tail(total, lam * (t - start) * m, phi)
    p_end = float(compound_tail(total[-1], expected, phi))
    return Evidence(len(t), float(total[-1]), expected, p_end, _first_below(t, p_at, start, bar))


# --- from a day's events to the tests -----------------------------------------------------------

Event = dict[str, Any]  # a decoded event line plus "_t", its time in epoch seconds


def cost_of(book: PriceBook) -> Callable[[Event], float]:
    def cost(e: Event) -> float:
        usage = Usage(e["provider"], e["model"], datetime.fromtimestamp(e["_t"], UTC), int(e.get("input_tokens") or 0),
                      int(e.get("output_tokens") or 0), int(e.get("cache_read_tokens") or 0),
                      int(e.get("cache_write_tokens") or 0), int(e.get("reasoning_tokens") or 0))
        priced = price(usage, book)
        return float(priced.cost) if priced.cost is not None else 0.0
    return cost


def tokens_of(e: Event) -> float:
    return float((e.get("input_tokens") or 0) + (e.get("output_tokens") or 0))


def _relevant(kind: str) -> str:
    return FAILURES.get(kind, "llm_call")


def _failed(e: Event) -> bool:
    return e.get("status") != "ok" or (e["event_type"] == "retrieval" and e.get("results_count") == 0)


def assess(kind: str, scope_events: Sequence[Event], start: float, end: float, day_start: float,
           bar: float, amount: Callable[[Event], float] = tokens_of) -> Evidence:
    """One incident's evidence from its scope's events (sorted by ``_t``). ``day_start`` bounds the
    fallback baseline's duration (the amount test needs a call rate)."""
    if kind in SKIPPED:
        return Evidence(0, 0, 0.0, None, None, "n/a")
    want = _relevant(kind)
    types = {want, "safety_trigger"} if kind == "safety_burst" else {want}
    before = [e for e in scope_events if e["_t"] < start and e["event_type"] in types]
    window = [e for e in scope_events if start <= e["_t"] <= end and e["event_type"] in types]
    base = [e for e in before if e["_t"] >= start - BASELINE_S]
    base_s = min(BASELINE_S, start - day_start)
    if sum(e["event_type"] == want for e in base) < MIN_WINDOW:
        base, base_s = before, start - day_start
    base_rel = [e for e in base if e["event_type"] == want]
    if len(base_rel) < MIN_ANY:
        return Evidence(len([e for e in window if e["event_type"] == want]), 0, 0.0, None, None, "no baseline")
    times = [e["_t"] for e in window]
    if kind in FAILURES:
        return failure_evidence([_failed(e) for e in base_rel], times, [_failed(e) for e in window], start, bar)
    if kind == "latency":
        return latency_evidence([float(e["latency_ms"]) for e in base_rel], times,
                                [float(e["latency_ms"]) for e in window], start, bar)
    if kind == "safety_burst":
        return burst_evidence(len(base_rel), len(base) - len(base_rel), times,
                              [e["event_type"] == "safety_trigger" for e in window], start, bar)
    if kind in AMOUNTS:
        return amount_evidence([amount(e) for e in base_rel], base_s, times, [amount(e) for e in window],
                               start, end, bar)
    raise ValueError(f"unknown incident kind {kind!r}")


def scope_of(label: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in label["scope"].items() if k != "request_id"}


def incident_key(label: dict[str, Any]) -> str:
    return f"{label['kind']}|{json.dumps(label['scope'], sort_keys=True)}|{label['start']}"


def run_day(seed: int, variant: str, cache: Path | None, bar: float, book: PriceBook) -> list[dict[str, Any]]:
    labels, lines = _day(seed, variant, cache)
    events: list[Event] = []
    for line in lines:
        if line.strip():
            e = orjson.loads(line)
            e["_t"] = _ts(e["ts"])
            events.append(e)
    events.sort(key=lambda e: e["_t"])
    day_start = events[0]["_t"]
    cost = cost_of(book)
    out = []
    for lb in labels["incidents"]:
        scope = scope_of(lb)
        mine = [e for e in events if all(e.get(f) == v for f, v in scope.items())]
        amount = cost if lb["kind"] == "cost_spike" else tokens_of
        start, end = _ts(lb["start"]), _ts(lb["end"])
        ev = assess(lb["kind"], mine, start, end, day_start, bar, amount)
        # the null control: a window as long, ending a minute before the incident (no incident in it)
        null_start = start - 60 - (end - start)
        null = assess(lb["kind"], mine, null_start, start - 60, day_start, bar, amount) \
            if null_start - day_start >= NULL_MIN_S else Evidence(0, 0, 0.0, None, None, "too early")
        out.append({**lb, "seed": seed, "oracle": asdict(ev), "null": asdict(null)})
    return out


# --- the report ---------------------------------------------------------------------------------

def _num(x: float | None, fmt: str = ".0f") -> str:
    return "-" if x is None else format(x, fmt)


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def verdict(row: dict[str, Any], bar: float) -> str:
    o = row["oracle"]
    if o["note"]:
        return o["note"]
    feasible = o["delay_s"] is not None
    if "detector_delay_s" not in row:
        return "feasible" if feasible else "beyond the bound"
    if row["detector_delay_s"] is not None:
        return "found" if feasible else "found, beyond the bound"
    return "MISSED though feasible" if feasible else "missed, beyond the bound"


def report(rows: list[dict[str, Any]], bar: float, joined: bool) -> list[str]:
    lines = ["| seed | kind | scope rate /s | n | k | expected k | window p | oracle delay s |"
             + (" detector delay s |" if joined else "") + " verdict |",
             "|---|---|---|---|---|---|---|---|" + ("---|" if joined else "") + "---|"]
    for r in rows:
        o = r["oracle"]
        k = _num(o["k"], ".3g") if r["kind"] in AMOUNTS else _num(o["k"])
        lines.append(f"| {r['seed']} | {r['kind']} | {r['scope_rate_per_s']:.3f} | {o['n']} | {k} | "
                     f"{_num(o['expected'], '.3g')} | {_num(o['p'], '.1e')} | {_num(o['delay_s'])} |"
                     + (f" {_num(r.get('detector_delay_s'))} |" if joined else "") + f" {verdict(r, bar)} |")
    assessed = [r for r in rows if not r["oracle"]["note"]]
    lines += ["", f"bar p < {bar:g}; {len(assessed)} incidents assessed, {len(rows) - len(assessed)} not "
              f"(runaway_loop n/a, or no baseline)", ""]
    head = "| size class | assessed | feasible |" + (" recall | recall of feasible | misses beyond the bound |"
                                                   if joined else "")
    lines += [head, "|---|---|---|" + ("---|---|---|" if joined else "")]
    for c in (*SIZE_CLASSES, "all"):
        sub = [r for r in assessed if c in ("all", r["size_class"])]
        if not sub:
            continue
        feas = [r for r in sub if r["oracle"]["delay_s"] is not None]
        line = f"| {c} | {len(sub)} | {len(feas)} |"
        if joined:
            hit = [r for r in sub if r["detector_delay_s"] is not None]
            hit_f = [r for r in feas if r["detector_delay_s"] is not None]
            beyond = [r for r in sub if r["detector_delay_s"] is None and r["oracle"]["delay_s"] is None]
            line += f" {len(hit)}/{len(sub)} | {len(hit_f)}/{len(feas)} | {len(beyond)} |"
        lines.append(line)
    nulls = [r for r in assessed if r["null"]["p"] is not None]
    false = [f"{r['seed']} {r['kind']} (p {r['null']['p']:.1e})" for r in nulls if r["null"]["delay_s"] is not None]
    lines += ["", f"null control (a window as long, ending 60 s before the start): {len(false)} of {len(nulls)} "
              "reach the bar" + (f": {', '.join(false)}" if false else "")]
    if joined:
        both = [r for r in assessed if r["detector_delay_s"] is not None and r["oracle"]["delay_s"] is not None]
        lines += ["", f"over the {len(both)} incidents both found: median oracle delay "
                  f"{_num(_median([r['oracle']['delay_s'] for r in both]))} s, median detector delay "
                  f"{_num(_median([r['detector_delay_s'] for r in both]))} s"]
    return lines


def join_curve(rows: list[dict[str, Any]], curve: dict[str, Any]) -> None:
    """Sets ``detector_delay_s`` on each row from the curve's incident of the same kind, scope and
    start; a row the curve does not hold is an error (the curve was run on other seeds)."""
    delays = {incident_key(i): i["delay_s"] for i in curve["incidents"]}
    for r in rows:
        key = incident_key(r)
        if key not in delays:
            raise SystemExit(f"seed {r['seed']}: {r['kind']} {r['scope']} at {r['start']} is not in the curve")
        r["detector_delay_s"] = delays[key]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="U")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--cache", type=Path, default=None, help="days cached by detection_curve.py (read, or written)")
    ap.add_argument("--bar", type=float, default=1e-5, help="p below which the oracle calls it (default 1e-5)")
    ap.add_argument("--curve", type=Path, default=None, help="detection_curve.py --out JSON to join")
    ap.add_argument("--out", type=Path, default=None, help="JSON with every incident's evidence")
    a = ap.parse_args()
    book = builtin_book()
    rows = [r for seed in a.seeds for r in run_day(seed, a.variant, a.cache, a.bar, book)]
    if a.curve is not None:
        join_curve(rows, json.loads(a.curve.read_text()))
    lines = [f"evidence bound, variant {a.variant}, seeds {a.seeds}", "", *report(rows, a.bar, a.curve is not None)]
    print("\n".join(lines))
    if a.out is not None:
        a.out.write_text(json.dumps({"variant": a.variant, "seeds": a.seeds, "bar": a.bar, "incidents": rows,
                                     "table": lines}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
