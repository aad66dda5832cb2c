#!/usr/bin/env python3
"""Capacity figures for docs/SCALING.md: the worker with 1, 2 and 3 replicas in one consumer
group on Apache Kafka, ClickHouse (chDB) insert rows/s, and API queries/s.

    python bench/scaling.py                    # N=120,000 events, replicas 1,2,3, + API
    python bench/scaling.py --quick            # N=30,000 (smoke)
    python bench/scaling.py --replicas 1,2 --no-api

Worker: N events (bench/pipeline.py's generator: 50 tenants) are produced once to
``flyball.events.v1`` with 6 partitions on a private Apache Kafka (scripts/testbrokers.py,
stopped at the end; or the one in FLYBALL_TEST_KAFKA_BOOTSTRAP, whose events topic must then
hold no other records... so the default is a private one). For each replica count k, k
processes each run flyball's real ``IngestService`` (pricing, detectors, chDB insert, commit)
in one fresh consumer group (session timeout 20 s: on this loaded machine 6 s lets a starved
replica miss heartbeats and trigger a rebalance mid-run), each with its own chDB directory (chDB allows one process per
directory; with a ClickHouse server they would share one). The clock starts when every replica
holds its partitions (a start file releases them together, so group joins and rebalances are
outside it) and stops at the last replica's last insert; every event id must be stored by some
replica (records a rebalance re-delivers are counted as ``redelivered``; in production the
replicas share ClickHouse, whose ReplacingMergeTree keeps one); each replica reports the CPU seconds
it spent and its chDB insert time. Figures: aggregate events/s (wall), events per CPU-second
(per core), and chDB rows per insert-second.

API: ``GET /v1/spend`` (one tenant x 7 days, by day) and ``GET /v1/alerts`` against a chDB
store holding the produced events, served by uvicorn in one process, driven by 8 concurrent
httpx clients for a fixed time: queries/s and CPU per query.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PARTITIONS = 6


# ------------------------------------------------------------------ one replica (a subprocess)
async def replica(a: argparse.Namespace) -> dict[str, Any]:
    from pipeline import builtin_prices, quiet_logging

    from flyball.stream_processors.ingest import IngestService, tune_gc_for_batches
    from flyball.stream_processors.pipeline import BatchResult, Pipeline
    from flyball.stream_processors.sinks.clickhouse import ClickHouseStore

    quiet_logging()

    class TimedStore(ClickHouseStore):
        insert_s = 0.0

        def write_events(self, rows: Any) -> None:
            t = time.perf_counter()
            try:
                super().write_events(rows)
            finally:
                TimedStore.insert_s += time.perf_counter() - t

    class Timed(IngestService):
        last_wall = 0.0
        last_cpu = 0.0

        async def handle(self, raws: list[bytes]) -> BatchResult:
            result = await super().handle(raws)
            Timed.last_wall, Timed.last_cpu = time.time(), time.process_time()
            return result

    book = builtin_prices()
    store = TimedStore(f"chdb://{a.chdb_dir}")
    store.migrate()
    tune_gc_for_batches()
    svc = Timed(bootstrap=a.bootstrap, store=store, pipeline=Pipeline(lambda: book), group_id=a.group,
                session_timeout_ms=20_000, checkpoint_interval_s=None)
    await svc.start()
    consumer = svc._consumer
    assert consumer is not None
    while not Path(a.go_file).exists():  # report the assignment as it changes through the group's rebalances
        assigned = sorted(tp.partition for tp in consumer.assignment())
        if assigned:
            Path(a.ready_file).write_text(json.dumps(assigned))
        await asyncio.sleep(0.02)
    go_wall, go_cpu = time.time(), time.process_time()
    task = asyncio.create_task(svc.run())
    progress, stop = Path(a.result + ".rows"), Path(a.go_file + ".stop")
    while not stop.exists():  # the parent stops the group once all replicas together stored N rows
        progress.write_text(str(svc.stats.rows))
        await asyncio.sleep(0.05)
    await svc.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    stored = store.query("SELECT count() FROM events")[0][0]
    ids = store.query("SELECT toString(event_id) FROM events")
    Path(a.result + ".ids").write_text("\n".join(r[0] for r in ids))
    store.close()
    return {"rows": svc.stats.rows, "stored": stored, "dead": svc.stats.dead_lettered,
            "partitions": json.loads(Path(a.ready_file).read_text()),
            "go_wall": go_wall, "last_wall": Timed.last_wall or go_wall,
            "cpu_s": (Timed.last_cpu or go_cpu) - go_cpu, "insert_s": TimedStore.insert_s}


# ------------------------------------------------------------------ the parent
async def produce(bootstrap: str, n: int) -> None:
    from pipeline import make_events

    from flyball.producers.transports.kafka import start_producer
    from flyball.schemas import EVENTS
    from flyball.stream_processors.topics import ensure_topics

    await ensure_topics(bootstrap, partitions=PARTITIONS)
    producer = await start_producer(bootstrap, linger_ms=20, compression_type="zstd", max_batch_size=256 * 1024)
    try:
        futures = [await producer.send(EVENTS, value=v, key=k) for k, v in make_events(n)]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def run_group(bootstrap: str, k: int, n: int, work: Path, timeout: float) -> dict[str, Any]:
    group = f"scale-{k}-{uuid.uuid4().hex[:8]}"
    go = work / f"go-{group}"
    procs, files = [], []
    for i in range(k):
        result, ready = work / f"result-{group}-{i}.json", work / f"ready-{group}-{i}"
        files.append((result, ready))
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--replica", "--bootstrap", bootstrap, "--group", group, "--chdb-dir",
             str(work / f"chdb-{group}-{i}"), "--ready-file", str(ready), "--go-file", str(go), "--result",
             str(result)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + timeout
    # every replica assigned, and the assignment stable (no rebalance still going on)
    while time.monotonic() < deadline:
        assigned = [json.loads(t) for _, r in files if r.exists() and (t := r.read_text())]
        if len(assigned) == k and sorted(x for p in assigned for x in p) == list(range(PARTITIONS)):
            time.sleep(1.0)  # and still so a second later (no rebalance in flight)
            again = [json.loads(t) for _, r in files if r.exists() and (t := r.read_text())]
            if again == assigned:
                break
        time.sleep(0.1)
    else:
        for p in procs:
            p.kill()
        raise RuntimeError(f"{k} replicas did not share the {PARTITIONS} partitions within {timeout}s")
    go.write_text("go")
    while time.monotonic() < deadline:
        done = sum(int(t) for r, _ in files if (f := Path(str(r) + ".rows")).exists() and (t := f.read_text()))
        if done >= n:  # then until no replica progresses for 2 s (a rebalance re-delivers records)
            settled = time.monotonic()
            while time.monotonic() - settled < 2.0:
                time.sleep(0.1)
                now = sum(int(t) for r, _ in files if (f := Path(str(r) + ".rows")).exists() and (t := f.read_text()))
                if now != done:
                    done, settled = now, time.monotonic()
            break
        time.sleep(0.05)
    Path(str(go) + ".stop").write_text("stop")
    results = []
    for p, (result, _) in zip(procs, files, strict=True):
        _, err = p.communicate(timeout=timeout)
        if p.returncode != 0 or not result.exists():
            raise RuntimeError(f"replica failed (exit {p.returncode}): {err[-2000:]}")
        results.append(json.loads(result.read_text()))
    rows = sum(r["rows"] for r in results)
    distinct: set[str] = set()
    for result, _ in files:
        distinct.update(Path(str(result) + ".ids").read_text().split())
    if len(distinct) != n or any(r["dead"] for r in results):
        raise RuntimeError(f"{k} replicas stored {len(distinct)} distinct of {n} events: {results}")
    start = min(r["go_wall"] for r in results)
    end = max(r["last_wall"] for r in results)
    cpu = sum(r["cpu_s"] for r in results)
    insert = sum(r["insert_s"] for r in results)
    return {"replicas": k, "events": n, "redelivered": rows - n, "wall_s": round(end - start, 2),
            "eps": round(n / (end - start)),
            "cpu_s": round(cpu, 2), "events_per_cpu_s": round(n / cpu), "chdb_rows_per_insert_s": round(n / insert),
            "partitions": [r["partitions"] for r in results]}


def api_figures(n: int, seconds: float) -> dict[str, Any]:
    import httpx
    from pipeline import builtin_prices, make_events
    from tests.integration._helpers import serve_app

    from flyball.control_plane.app import Deps, create_app
    from flyball.control_plane.auth import KeyRing, Principal, Role
    from flyball.control_plane.policy_file import DEFAULT_POLICIES
    from flyball.control_plane.migrations import ALL_MIGRATIONS
    from flyball.stream_processors.pipeline import Pipeline
    from flyball.stream_processors.sinks.clickhouse import ClickHouseStore

    book = builtin_prices()
    with tempfile.TemporaryDirectory() as d:
        store = ClickHouseStore(f"chdb://{d}")
        store.migrate(ALL_MIGRATIONS)
        rows = Pipeline(lambda: book).process([v for _, v in make_events(n)], now=None).rows
        store.call(store.write_events, rows)
        keys = KeyRing()
        keys.add("k", Principal("admin", Role.ADMIN))
        app = create_app(Deps(store=store, control=None, keys=keys, policies=lambda: DEFAULT_POLICIES,
                              prices=lambda: book))
        out: dict[str, Any] = {"events_in_store": n}
        with serve_app(app) as url:
            for name, path in (("spend_one_tenant_by_day", "/v1/spend?tenant_id=tenant-07&group_by=day"),
                               ("alerts", "/v1/alerts")):
                async def drive(path: str = path) -> tuple[int, float, float]:
                    done = 0
                    c0, t0 = time.process_time(), time.perf_counter()
                    async with httpx.AsyncClient(base_url=url, headers={"Authorization": "Bearer k"},
                                                 timeout=30) as http:
                        async def client() -> None:
                            nonlocal done
                            while time.perf_counter() - t0 < seconds:
                                r = await http.get(path)
                                assert r.status_code == 200, r.text
                                done += 1
                        await asyncio.gather(*(client() for _ in range(8)))
                    return done, time.perf_counter() - t0, time.process_time() - c0
                done, wall, cpu = asyncio.run(drive())
                out[name] = {"queries": done, "qps": round(done / wall, 1), "cpu_ms_per_query": round(1000 * cpu / done, 2)}
        store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--replicas", default="1,2,3")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--no-api", action="store_true")
    p.add_argument("--no-workers", action="store_true")
    p.add_argument("--timeout", type=float, default=300)
    # one replica (internal)
    p.add_argument("--replica", action="store_true")
    p.add_argument("--bootstrap")
    p.add_argument("--group")
    p.add_argument("--chdb-dir")
    p.add_argument("--ready-file")
    p.add_argument("--go-file")
    p.add_argument("--result")
    a = p.parse_args(argv)
    if a.replica:
        Path(a.result).write_text(json.dumps(asyncio.run(replica(a))))
        return 0
    n = 30_000 if a.quick else 120_000
    out: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()}
    if not a.no_workers:
        from _brokers import test_brokers

        os.environ.pop("FLYBALL_TEST_KAFKA_BOOTSTRAP", None)  # a private Kafka: the events topic holds only ours
        with test_brokers(["kafka"]) as addresses, tempfile.TemporaryDirectory() as d:
            bootstrap = addresses["kafka"]
            asyncio.run(produce(bootstrap, n))
            runs: dict[int, list[dict[str, Any]]] = {}
            for _ in range(a.rounds):
                for k in [int(x) for x in a.replicas.split(",")]:
                    r = run_group(bootstrap, k, n, Path(d), a.timeout)
                    print(json.dumps(r), flush=True)
                    runs.setdefault(k, []).append(r)
            base = statistics.median(r["eps"] for r in runs[min(runs)])
            out["workers"] = {k: {"eps_median": round(statistics.median(r["eps"] for r in rs)),
                                  "speedup_vs_1": round(statistics.median(r["eps"] for r in rs) / base, 2),
                                  "events_per_cpu_s_median": round(statistics.median(r["events_per_cpu_s"] for r in rs)),
                                  "chdb_rows_per_insert_s_median": round(statistics.median(
                                      r["chdb_rows_per_insert_s"] for r in rs)),
                                  "runs": rs} for k, rs in runs.items()}
    if not a.no_api:
        out["api"] = api_figures(n, 5.0 if a.quick else 10.0)
    out["load_avg_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    (ROOT / "bench" / "out").mkdir(exist_ok=True)
    (ROOT / "bench" / "out" / "scaling.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
