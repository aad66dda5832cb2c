#!/usr/bin/env python3
"""Spend-query benchmark: one tenant's monthly spend grouped by day over 10 million events.

    python bench/spend.py                  # 10,000,000 events, 7 queries per figure
    python bench/spend.py --events 1000000 # smaller (smoke)
    python bench/spend.py --ingest         # also run bench/pipeline.py --quick (cost path vs raw)

Data: flyball's own ``events`` table (the real migrations) filled in chDB with one
``INSERT ... SELECT FROM numbers(N)``: 20 tenants, 4 features, 3 models, timestamps spread over
one 30-day month, Decimal costs; then 1 % of the rows inserted a second time (a replayed batch),
so ``FINAL`` has duplicates to remove, as in production.

Figures (medians of ``--queries`` runs after one warm-up):
  api_final   the exact query ``GET /v1/spend?tenant_id=..&from=..&to=..&group_by=day`` runs
              (``FROM events FINAL``), timed end to end through the FastAPI app (ASGI, httpx);
  engine      the same SQL through clickhouse-connect only;
  no_final    the same query without FINAL (the baseline: what dedupe costs; its total is wrong
              by the duplicates, which the script shows);
  rollup      the same answer from ``spend_minute FINAL`` after ``Finance.refresh_rollups``;
  api_merged  api_final again once the parts are merged (``OPTIMIZE TABLE events FINAL``, which
              background merges do over time): FINAL is cheapest with few parts.
Target: api_final <= 200 ms. Ingest throughput of the cost path next to raw consume+insert is
``bench/pipeline.py`` (the worker path there prices every event); ``--ingest`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MONTH = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 4, 1, tzinfo=UTC)
TENANT = "tenant-7"


def fill(store: object, n: int) -> float:
    t0 = time.perf_counter()
    span_ms = 30 * 86_400_000
    store.call(store._client.command, f"""
        INSERT INTO events (event_id, ts, event_type, tenant_id, feature, service, environment, provider, model,
                            input_tokens, output_tokens, status, cost_usd, price_version, unpriced)
        SELECT generateUUIDv4(number),
               fromUnixTimestamp64Milli(toInt64({int(MONTH.timestamp() * 1000)} + intDiv(number * {span_ms}, {n}))),
               'llm_call', concat('tenant-', toString(number % 20)),
               ['chat', 'search', 'summarize', 'agent'][number % 4 + 1], 'bench', 'production', 'openai',
               ['gpt-4o-mini', 'gpt-4o', 'gpt-4.1'][intDiv(number, 20) % 3 + 1],
               1000 + number % 5000, 100 + number % 700, 'ok',
               toDecimal128(number % 9973, 12) / 1000000, 'openai/bench@2024-01-01T00:00:00Z', 0
        FROM numbers({n})
    """)  # type: ignore[attr-defined]
    store.call(store._client.command,  # type: ignore[attr-defined]
               "INSERT INTO events SELECT * FROM events WHERE cityHash64(event_id) % 100 = 0")
    return time.perf_counter() - t0


def median_ms(fn: object, runs: int) -> tuple[float, object]:
    result = fn()  # type: ignore[operator]  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--queries", type=int, default=7, help="timed queries per figure (median; >= 5)")
    ap.add_argument("--ingest", action="store_true", help="also run bench/pipeline.py --quick")
    args = ap.parse_args()

    import httpx

    from flyball.control_plane.app import Deps, create_app
    from flyball.control_plane.auth import KeyRing, Principal, Role
    from flyball.control_plane.finance import Finance
    from flyball.control_plane.migrations import ALL_MIGRATIONS
    from flyball.control_plane.policy_file import DEFAULT_POLICIES
    from flyball.control_plane.runtime import load_prices
    from flyball.stream_processors.sinks.clickhouse import ClickHouseStore

    with tempfile.TemporaryDirectory(prefix="flyball-bench-spend-") as tmp:
        store = ClickHouseStore(f"chdb://{tmp}/ch")
        store.migrate(ALL_MIGRATIONS)
        fill_s = fill(store, args.events)
        total_rows = store.call(store.query, "SELECT count() FROM events")[0][0]
        print(f"filled {args.events:,} events (+{total_rows - args.events:,} duplicate rows) in {fill_s:.1f}s")
        book = load_prices(None)
        finance = Finance(store, get_book=lambda: book)
        keys = KeyRing()
        keys.add("bench", Principal("bench", Role.FINANCE))
        app = create_app(Deps(store=store, control=None, keys=keys, policies=lambda: DEFAULT_POLICIES,
                              prices=lambda: book, finance=finance))
        params = {"tenant_id": TENANT, "from": MONTH.isoformat(), "to": END.isoformat(), "group_by": "day"}
        where = ("tenant_id = {t:String} AND event_type = 'llm_call' "
                 "AND ts >= {a:DateTime64(3, 'UTC')} AND ts < {b:DateTime64(3, 'UTC')}")
        qp = {"t": TENANT, "a": MONTH, "b": END}
        sql = ("SELECT toString(toDate(ts)) AS day, count(), toString(sumOrNull(cost_usd)) FROM events @FINAL@ "
               f"WHERE {where} GROUP BY day ORDER BY day")

        loop = asyncio.new_event_loop()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench",
                                   headers={"Authorization": "Bearer bench"})

        def api() -> dict[str, object]:
            r = loop.run_until_complete(client.get("/v1/spend", params=params))
            r.raise_for_status()
            return r.json()  # type: ignore[no-any-return]

        api_ms, body = median_ms(api, args.queries)
        engine_ms, rows = median_ms(lambda: store.call(store.query, sql.replace("@FINAL@", "FINAL"), qp), args.queries)
        raw_ms, raw_rows = median_ms(lambda: store.call(store.query, sql.replace("@FINAL@", ""), qp), args.queries)
        t0 = time.perf_counter()
        finance.refresh_rollups()
        rollup_build_s = time.perf_counter() - t0
        rsql = ("SELECT toString(toDate(minute)) AS day, sum(events), toString(sum(cost_usd)) FROM spend_minute FINAL "
                "WHERE tenant_id = {t:String} AND minute >= {a:DateTime('UTC')} AND minute < {b:DateTime('UTC')} "
                "GROUP BY day ORDER BY day")
        rollup_ms, rolled = median_ms(lambda: store.call(store.query, rsql, {"t": TENANT, "a": MONTH, "b": END}),
                                      args.queries)
        # background merges eventually fold each month into few parts; OPTIMIZE FINAL is that, now
        t0 = time.perf_counter()
        store.call(store._client.command, "OPTIMIZE TABLE events FINAL")
        merge_s = time.perf_counter() - t0
        merged_ms, merged_body = median_ms(api, args.queries)
        assert merged_body["total_usd"] == body["total_usd"]
        loop.run_until_complete(client.aclose())
        loop.close()
        store.close()

    exact = sum(Decimal(r[2]) for r in rows)  # type: ignore[union-attr]
    tenant_events = sum(int(r[1]) for r in rows)  # type: ignore[union-attr]
    assert Decimal(str(body["total_usd"])) == exact and body["events"] == tenant_events, "API disagrees with the engine"
    assert sum(Decimal(r[2]) for r in rolled) == exact, "rollup disagrees with events FINAL"  # type: ignore[union-attr]
    wrong = sum(Decimal(r[2]) for r in raw_rows) - exact  # type: ignore[union-attr]
    print(f"tenant {TENANT}: {tenant_events:,} events in {len(rows)} days, spend ${exact}")  # type: ignore[arg-type]
    print(f"{'figure':<12}{'median ms':>12}   (of {args.queries} queries)")
    print(f"{'api_final':<12}{api_ms:>12.1f}   GET /v1/spend group_by=day, FINAL, through FastAPI")
    print(f"{'engine':<12}{engine_ms:>12.1f}   same SQL, clickhouse-connect only")
    print(f"{'no_final':<12}{raw_ms:>12.1f}   baseline without dedupe (over-counts by ${wrong})")
    print(f"{'rollup':<12}{rollup_ms:>12.1f}   spend_minute FINAL (refresh over all rows took {rollup_build_s:.1f}s)")
    print(f"{'api_merged':<12}{merged_ms:>12.1f}   api_final after the parts are merged (OPTIMIZE FINAL took {merge_s:.1f}s)")
    print(f"api_final / no_final = {api_ms / raw_ms:.2f}x;  goal api_final <= 200 ms: {'MET' if api_ms <= 200 else 'NOT MET'}")
    if args.ingest:
        print("\ningest throughput, cost path vs raw consume+insert (bench/pipeline.py --quick):", flush=True)
        return subprocess.call([sys.executable, str(ROOT / "bench" / "pipeline.py"), "--quick"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
