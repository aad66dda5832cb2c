#!/usr/bin/env python3
"""Detector overhead and memory: what the anomaly detectors cost the worker.

    python bench/detectors.py              # 100k events x 5 repetitions, then memory with 10,000 scopes
    python bench/detectors.py --quick      # 20k events x 3, 2,000 scopes

1. Per-event cost. ``Pipeline.process`` over the same events in the same batches (20,000, as
   the worker's ``getmany``), timed as this thread's CPU time, alternating two pipelines:
   WITH the detectors (the worker as shipped) and WITHOUT (a bench-only stand-in whose per-event
   ``BatchWindows.add`` and per-batch ``observe``/``advance`` do nothing; validation, dedupe,
   pricing and row building are identical). The events are a simulated incident scenario
   (``flyball simulate --scenario incidents``: LLM calls, tool calls, retrievals, safety
   triggers, with incidents firing alerts), re-timed to be dense: all in 10 minutes of event
   time, as a busy worker sees them. Medians of the repetitions; target: WITH <= 1.20 x WITHOUT.
   The collector is tuned as ``flyball worker`` tunes it at start (``tune_gc_for_batches``;
   ``--default-gc`` keeps Python's defaults instead).

2. Memory. A fresh process (``--single memory``) creates ``--scopes`` active scopes of every
   per-tenant kind at once, over 30 minutes of event time (the spike detectors' full history):
   tenant+feature pairs (cost and token spikes, 1 call each 45 s), their tenants, one safety category each, and one open request
   each (a request = 4 calls over 3 minutes; runaway detector), plus 50 provider/models, 200 tools and 200 retrieval indexes.
   Events are built unvalidated (``model_construct``) and fed through the worker's own
   ``BatchWindows.add`` + ``Detectors.observe``/``advance``; VmRSS is read from /proc.
   Target: <= 500 MB RSS for the whole process.

Writes ``bench/out/detectors.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench._worker
OUT = ROOT / "bench" / "out" / "detectors.json"
BATCH = 20_000


def book() -> Any:
    from flyball.stream_processors.pricing import load_catalog

    text = resources.files("flyball.stream_processors").joinpath("data/prices.json").read_bytes()
    return load_catalog(text, source="built-in")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def dense_events(n: int) -> list[bytes]:
    """``n`` simulated events (incidents scenario), squeezed into 10 minutes of event time."""
    from flyball.stream_processors.simulate import simulate

    sim = simulate("incidents", 0)
    events = sim.events[-n:] if len(sim.events) >= n else sim.events
    while len(events) < n:
        events = events + sim.events[: n - len(events)]
    t0, t1 = events[0][0], events[-1][0]
    span = max(t1 - t0, 1.0)
    base = datetime(2026, 3, 2, 12, tzinfo=UTC).timestamp()
    out = []
    for t, body in events:
        body = dict(body, event_id=str(uuid.uuid4()),
                    ts=datetime.fromtimestamp(base + (t - t0) / span * 600, tz=UTC).isoformat())
        out.append(orjson.dumps(body))
    return out


def overhead(n: int, reps: int, *, default_gc: bool = False) -> dict[str, Any]:
    from bench._worker import without_detectors
    from flyball.stream_processors.ingest import tune_gc_for_batches
    from flyball.stream_processors.pipeline import Pipeline

    raws = dense_events(n)
    batches = [raws[i:i + BATCH] for i in range(0, len(raws), BATCH)]
    pb = book()
    if not default_gc:
        tune_gc_for_batches()  # as `flyball worker` does at start
    gc_mode = "default" if default_gc else "worker (tune_gc_for_batches)"
    times: dict[str, list[float]] = {"with": [], "without": []}
    alerts = 0
    for _ in range(reps):
        for label in ("without", "with"):
            with without_detectors() if label == "without" else contextlib.nullcontext() as off:
                pipe = Pipeline(lambda: pb, detectors=off)
                t = time.thread_time()
                got = sum(len(pipe.process(b, now=None).alerts) for b in batches)
                times[label].append((time.thread_time() - t) / len(raws) * 1e6)
            if label == "with":
                alerts = got
    with_us, without_us = statistics.median(times["with"]), statistics.median(times["without"])
    # the detectors' own share, timed in isolation on the same events, decoded as the worker decodes
    # them (its fast path's objects where it has one: less exposed to noise than the difference)
    from flyball.stream_processors.decode import decode_event
    from flyball.stream_processors.detectors import BatchWindows, Detectors

    events = [decode_event(r) for r in raws]
    costs = [Decimal("0.001") if e.event_type == "llm_call" else None for e in events]
    add_us, observe_us = [], []
    for _ in range(reps):
        t = time.thread_time()
        filled = []
        for i in range(0, len(events), BATCH):
            windows = BatchWindows()
            add = windows.add  # as Pipeline.process adds
            for e, c in zip(events[i:i + BATCH], costs[i:i + BATCH], strict=True):
                add(e, c)
            filled.append((windows, events[min(i + BATCH, len(events)) - 1].ts))
        t1 = time.thread_time()
        det = Detectors()
        for windows, last in filled:
            det.observe(windows)
            det.advance(last)
        t2 = time.thread_time()
        add_us.append((t1 - t) / len(events) * 1e6)
        observe_us.append((t2 - t1) / len(events) * 1e6)
    return {"events": len(raws), "reps": reps, "batch": BATCH, "gc": gc_mode, "us_per_event_with": with_us,
            "detectors_add_us": statistics.median(add_us), "detectors_observe_us": statistics.median(observe_us),
            "us_per_event_without": without_us, "ratio": with_us / without_us, "alerts_with": alerts,
            "all_us_with": times["with"], "all_us_without": times["without"]}


def memory(scopes: int) -> dict[str, Any]:
    from flyball.schemas import LLMCall, Retrieval, SafetyTrigger, ToolCall
    from flyball.stream_processors.detectors import BatchWindows, Detectors

    start_rss = rss_mb()
    det = Detectors()
    tenants = max(1, scopes // 5)
    features = ("chat", "agent", "search", "summarize", "extract")
    base = datetime(2026, 3, 2, 12, tzinfo=UTC)
    models = [("openai", f"model-{i}") for i in range(50)]
    cost = Decimal("0.000412")
    t0 = time.perf_counter()
    windows = BatchWindows()
    count = 0
    # unvalidated events: one model_construct'ed template per type, copied with new field values
    call_t = LLMCall.model_construct(event_id="", ts=base, tenant_id="", feature="", request_id="", trace_id="",
                                     provider="openai", model="", input_tokens=1200, output_tokens=300,
                                     latency_ms=800.0, ttft_ms=200.0, status="ok")
    safety_t = SafetyTrigger.model_construct(event_id="", ts=base, tenant_id="", feature="", category="pii",
                                             filter_name="pii")
    tool_t = ToolCall.model_construct(event_id="", ts=base, tenant_id="", feature="", tool_name="", status="ok",
                                      latency_ms=50.0)
    retr_t = Retrieval.model_construct(event_id="", ts=base, tenant_id="", feature="", index_name="", status="ok",
                                       results_count=3, latency_ms=20.0)

    def make(template: Any, **fields: Any) -> Any:
        event = template.__copy__()
        event.__dict__.update(fields)
        return event

    for step in range(40):  # 30 minutes (the spike detectors' history), one call per scope every 45 s
        for s in range(scopes):
            tenant, feature = f"tenant-{s % tenants:05d}", features[s // tenants % 5]
            ts = base + timedelta(seconds=step * 45 + (s % 300) / 10)
            eid = str(uuid.UUID(int=(step << 32) + s))
            env = {"event_id": eid, "ts": ts, "tenant_id": tenant, "feature": feature}
            windows.add(make(call_t, **env, request_id=f"req-{s}-{step // 4}", model=models[s % 50][1]), cost)
            if step % 4 == 0:
                windows.add(make(safety_t, **env), None)
                windows.add(make(tool_t, **env, tool_name=f"tool-{s % 200}"), None)
                windows.add(make(retr_t, **env, index_name=f"index-{s % 200}"), None)
            count += 1
            if count % BATCH == 0:
                det.observe(windows)
                det.advance(ts)
                windows = BatchWindows()
    det.observe(windows)
    det.advance(base + timedelta(minutes=30))
    state = len(orjson.dumps(det.snapshot()))
    return {"scopes": scopes, "tenants": tenants, "calls": count, "seconds": time.perf_counter() - t0,
            "rss_mb_before": start_rss, "rss_mb_after": rss_mb(), "snapshot_bytes": state,
            "tenant_feature_series": len(det.cost_feature.state), "safety_scopes": len(det.safety.state),
            "open_requests": len(det.runaway.requests), "open_alerts": len(det.book.open)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--scopes", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--default-gc", action="store_true", help="keep Python's GC settings, not the worker's")
    ap.add_argument("--single", choices=["memory"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.events, a.reps, a.scopes = 20_000, 3, 2_000
    if a.single == "memory":
        print(json.dumps(memory(a.scopes)))
        return 0
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    cost = overhead(a.events, a.reps, default_gc=a.default_gc)
    print(f"per-event cost, Pipeline.process, {cost['events']:,} events in batches of {BATCH:,}, "
          f"median of {cost['reps']} (thread CPU time, GC: {cost['gc']}):")
    print(f"  without detectors  {cost['us_per_event_without']:6.2f} us/event")
    print(f"  with detectors     {cost['us_per_event_with']:6.2f} us/event   ({cost['alerts_with']} alerts)")
    print(f"  ratio              {cost['ratio']:6.3f}   target <= 1.20: {'MET' if cost['ratio'] <= 1.2 else 'NOT MET'}")
    own = cost["detectors_add_us"] + cost["detectors_observe_us"]
    print(f"  detectors alone: BatchWindows.add {cost['detectors_add_us']:.2f} + observe/advance "
          f"{cost['detectors_observe_us']:.2f} = {own:.2f} us/event = {own / cost['us_per_event_without']:.1%} "
          f"of the pipeline without them")
    done = subprocess.run([sys.executable, __file__, "--single", "memory", "--scopes", str(a.scopes)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 1
    mem = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"memory with {mem['scopes']:,} active scopes ({mem['tenants']:,} tenants, {mem['calls']:,} calls over "
          f"30 min of event time, {mem['seconds']:.1f} s):")
    print(f"  RSS {mem['rss_mb_before']:.0f} MB after imports -> {mem['rss_mb_after']:.0f} MB   "
          f"target <= 500 MB: {'MET' if mem['rss_mb_after'] <= 500 else 'NOT MET'}")
    print(f"  detector state as JSON: {mem['snapshot_bytes'] / 1e6:.1f} MB "
          f"({mem['tenant_feature_series']:,} tenant+feature series, {mem['safety_scopes']:,} safety scopes, "
          f"{mem['open_requests']:,} open requests)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"benchmark": "detectors", "when": datetime.now(UTC).isoformat(timespec="seconds"),
                               "overhead": cost, "memory": mem}, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
