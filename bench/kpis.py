#!/usr/bin/env python3
"""KPI report benchmark: the monthly report (``flyball report --month``'s data, every KPI query
twice over: overall and per feature, plus incidents and spend movers) over 10 million events.

    python bench/kpis.py                   # 10,000,000 events, 5 timed runs per figure
    python bench/kpis.py --events 1000000  # smaller (smoke)

Data: flyball's own ``events`` table (the real migrations) filled in chDB by ``INSERT ... SELECT
FROM numbers(N)``: 85 % of the events in the reported month (2026-11), 15 % in the month before
(forecast history and spend movers); 94 % llm calls (20 tenants, 4 features, 3 models, statuses
with 6 % failures, a third streamed with a TTFT, a quarter with cached input, about 3 calls per
request), 3 % safety triggers, 3 % feedback (a third negative), 0.1 % with an explicit outcome;
then 1 % of the rows inserted a second time (a replayed batch) so ``FINAL`` has duplicates to
remove; plus 300 alerts with resolutions and 150 directive actions.

Figures (medians of ``--runs`` after one warm-up; the machine is shared: the load average is
printed before and after, quote it with the figures):
  report       the rollups' incremental refresh (nothing new) + ``report.build`` for the month: all
               queries through clickhouse-connect, and the assembly;
  render       Markdown + HTML from that data;
  count        baseline: ``SELECT count() FROM events`` over the month (no FINAL);
  count_final  baseline: the same with ``FINAL`` (one deduplicating scan);
  refresh_new  the rollups' refresh after 10,000 newly ingested events (``fresh_events``: a replayed
               hour, and new calls and feedback naming requests from all over the month); once.
Per query: the share of one report run (the last) each query took. Target: report + render <= 2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MONTH, END, PREV = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC)


def fill(store: Any, n: int) -> float:
    t0 = time.perf_counter()
    cur, prev = int(n * 0.85), n - int(n * 0.85)
    for start, days, count, offset in ((MONTH, 30, cur, 0), (PREV, 31, prev, cur)):
        span_ms = days * 86_400_000
        store.call(store.command, f"""
            INSERT INTO events (event_id, ts, event_type, tenant_id, feature, service, environment, request_id,
                                provider, model, input_tokens, output_tokens, cache_read_tokens, latency_ms, status,
                                category, cost_usd, price_version, unpriced, ttft_ms, stream, score, outcome)
            SELECT generateUUIDv4(number) AS id,
                   fromUnixTimestamp64Milli(toInt64({int(start.timestamp() * 1000)} + intDiv((k - {offset}) * {span_ms}, {count}))),
                   multiIf(k % 100 < 94, 'llm_call', k % 100 < 97, 'safety_trigger', 'feedback') AS kind,
                   concat('tenant-', toString(intDiv(k, 3) % 20)),
                   ['chat', 'search', 'summarize', 'agent'][intDiv(k, 3) % 4 + 1], 'bench', 'production',
                   concat('r', toString({offset} + intDiv(k, 3))), 'openai',
                   ['gpt-4o-mini', 'gpt-4o', 'gpt-4.1'][k % 3 + 1],
                   1000 + k % 5000, 100 + k % 700, if(k % 4 = 0, 500, 0), 200 + (k * 7919) % 8000,
                   if(kind = 'llm_call', multiIf(k % 97 < 91, 'ok', k % 97 < 94, 'error', k % 97 < 96, 'timeout',
                                                 'rate_limited'), if(kind = 'safety_trigger', 'flagged', '')),
                   if(kind = 'safety_trigger', ['pii', 'toxicity', 'jailbreak'][k % 3 + 1], ''),
                   if(kind = 'llm_call', toDecimal128(k % 9973, 12) / 1000000, toDecimal128(0, 12)),
                   'openai/bench@2024-01-01T00:00:00Z', 0,
                   if(k % 3 = 0, toNullable(50.0 + (k * 31) % 3000), NULL), if(k % 3 = 0, 1, 0),
                   if(kind = 'feedback', toNullable(if(k % 3 = 0, -1.0, 1.0)), NULL),
                   if(k % 1000 = 7, 'success', '')
            FROM (SELECT number, number AS k FROM numbers({offset}, {count}))
        """)
    store.call(store.command, "INSERT INTO events SELECT * FROM events WHERE cityHash64(event_id) % 100 = 0")
    # alerts with resolutions, and the directives applied for half of them
    store.call(store.command, f"""
        INSERT INTO alerts SELECT concat('a', toString(number % 300)), ['error_rate', 'cost_spike', 'slo_burn'][number % 3 + 1],
            '', concat('{{"tenant_id":"tenant-', toString(number % 20), '","feature":"chat"}}'), 'critical',
            if(number < 300, 'open', 'resolved'), t - INTERVAL 5 MINUTE, t + INTERVAL (number >= 300) * 40 MINUTE,
            concat('{{"alert_id":"a', toString(number % 300), '","kind":"', ['error_rate', 'cost_spike', 'slo_burn'][number % 3 + 1],
                   '","scope":{{"tenant_id":"tenant-', toString(number % 20), '","feature":"chat"}},"severity":"critical",',
                   '"status":"', if(number < 300, 'open', 'resolved'), '","metric":"m","observed":"1","baseline":"0",',
                   '"threshold":"0","window_s":60,"first_seen":"', replaceOne(toString(t - INTERVAL 5 MINUTE), ' ', 'T'),
                   'Z","last_seen":"', replaceOne(toString(t + INTERVAL (number >= 300) * 40 MINUTE), ' ', 'T'),
                   'Z","opened_at":"', replaceOne(toString(t), ' ', 'T'), 'Z","summary":"bench"}}'),
            t + INTERVAL number SECOND
        FROM (SELECT number, toDateTime64('{MONTH:%Y-%m-%d %H:%M:%S}', 3, 'UTC') + INTERVAL (number % 300) * 2 HOUR AS t
              FROM numbers(500))
    """)
    store.call(store.command, f"""
        INSERT INTO actions SELECT concat('x', toString(number)),
            toDateTime64('{MONTH:%Y-%m-%d %H:%M:%S}', 3, 'UTC') + INTERVAL (number * 2 % 300) * 2 HOUR + INTERVAL 90 SECOND,
            'applied', concat('d', toString(number)), '', '', concat('a', toString(number * 2 % 300)), 'p@v1',
            'flyball', 'bench', '', '', '' FROM numbers(150)
    """)
    return time.perf_counter() - t0


def fresh_events(store: Any, n: int, total: int) -> None:
    """``n`` newly ingested rows, as after a few minutes of live traffic: half a replayed batch (an
    hour of 2026-11-20 inserted again), half new events in the month's last hour, a third of them
    negative feedback on requests from all over the month (so the flag lookups have work)."""
    store.call(store.command, f"INSERT INTO events SELECT * FROM events WHERE ts >= '2026-11-20 10:00:00' "
                              f"AND ts < '2026-11-20 11:00:00' LIMIT {n // 2}")
    store.call(store.command, f"""
        INSERT INTO events (event_id, ts, event_type, tenant_id, feature, request_id, provider, model, input_tokens,
                            output_tokens, latency_ms, status, cost_usd, price_version, score, outcome)
        SELECT generateUUIDv4(number), toDateTime64('2026-11-30 23:00:00', 3, 'UTC') + INTERVAL number * 500 MILLISECOND,
               if(number % 3 = 0, 'feedback', 'llm_call'), concat('tenant-', toString(intDiv(k, 3) % 20)),
               ['chat', 'search', 'summarize', 'agent'][intDiv(k, 3) % 4 + 1],
               if(number % 3 = 0, concat('r', toString(intDiv(k, 3))), concat('new-', toString(number))),
               'openai', 'gpt-4o-mini', 100, 10, 300, if(number % 3 = 0, '', 'ok'), toDecimal128(0.001, 12),
               'openai/bench@2024-01-01T00:00:00Z', if(number % 3 = 0, toNullable(-1.0), NULL),
               if(number % 50 = 1, 'success', '')
        FROM (SELECT number, (number * 7919) % {int(total * 0.85)} AS k FROM numbers({n - n // 2}))
    """)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per figure (median)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench._timing import timed
    from flyball.control_plane.kpi_rollup import KPIRollup
    from flyball.control_plane.migrations import ALL_MIGRATIONS
    from flyball.control_plane.report import build, html_page, markdown
    from flyball.control_plane.runtime import load_prices
    from flyball.control_plane.slo import DEFAULT_SLOS
    from flyball.stream_processors.sinks.clickhouse import ClickHouseStore

    load_before = os.getloadavg()
    per_query: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = ClickHouseStore(f"chdb://{tmp}/ch")
        store.migrate(ALL_MIGRATIONS)
        filled = fill(store, args.events)
        t_roll = time.perf_counter()
        KPIRollup(store).refresh(DEFAULT_SLOS)  # what the API does before a report (here: from scratch)
        t_roll = time.perf_counter() - t_roll
        rows = store.call(store.query, "SELECT count(), countIf(ts >= {s:DateTime64(3, 'UTC')}) FROM events FINAL",
                          {"s": MONTH})[0]
        print(f"filled {rows[0]:,} distinct events ({rows[1]:,} in 2026-11) in {filled:.1f} s; "
              f"rollups built from scratch in {t_roll:.1f} s")
        rollup = KPIRollup(store)
        rollup.refresh(DEFAULT_SLOS)
        time.sleep(11)  # past the refresh's 10 s overlap: the timed refreshes find nothing new
        book = load_prices(None)

        def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
            t0 = time.perf_counter()
            out: list[tuple[Any, ...]] = store.call(store.query, sql, params)
            label = " ".join(sql.split())[:70]
            per_query[label] = per_query.get(label, 0.0) + (time.perf_counter() - t0) * 1000
            return out

        def report() -> Any:
            per_query.clear()
            rollup.refresh(DEFAULT_SLOS)  # incremental: nothing was ingested since
            return build(query, "2026-11", slos=DEFAULT_SLOS, book=book)

        month = {"s": MONTH, "e": END}
        where = "ts >= {s:DateTime64(3, 'UTC')} AND ts < {e:DateTime64(3, 'UTC')}"
        # interleaved: the baseline and the report see the same machine
        count, count_final, report_ms = [], [], []
        data: Any = report()
        query(f"SELECT count() FROM events WHERE {where}", month)
        for _ in range(args.runs):
            for out, fn in ((count, lambda: query(f"SELECT count() FROM events WHERE {where}", month)),
                            (count_final, lambda: query(f"SELECT count() FROM events FINAL WHERE {where} "
                                                        "SETTINGS do_not_merge_across_partitions_select_final = 1",
                                                        month)),
                            (report_ms, report)):
                t0 = time.perf_counter()
                result = fn()
                out.append((time.perf_counter() - t0) * 1000)
                if fn is report:
                    data = result
        last_run = dict(per_query)
        render_ms = timed(lambda: (markdown(data), html_page(data)), args.runs).p50_ms
        fresh_events(store, 10_000, args.events)
        t0 = time.perf_counter()
        rollup.refresh(DEFAULT_SLOS)
        refresh_new = (time.perf_counter() - t0) * 1000
        store.close()
    load_after = os.getloadavg()
    rep, base, base_final = statistics.median(report_ms), statistics.median(count), statistics.median(count_final)
    total = rep + render_ms
    o = data["overall"]
    print(f"report: {o['calls']:,} calls, spend ${o['cost_usd']}, {o['successful_outcomes']:,} successful outcomes, "
          f"{len(data['incidents'])} incidents, {len(data['features'])} features, {len(data['movers'])} movers")
    print(f"load average (1, 5, 15 min) before {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}, "
          f"after {load_after[0]:.1f} {load_after[1]:.1f} {load_after[2]:.1f} (2 cores)")
    print(f"{'figure':<12} {'median ms':>10}   runs ms")
    for name, ms, runs in (("report", rep, report_ms), ("render", render_ms, None), ("count", base, count),
                           ("count_final", base_final, count_final), ("refresh_new", refresh_new, None)):
        print(f"{name:<12} {ms:>10.1f}   " + (" ".join(f"{x:.0f}" for x in runs) if runs else ""))
    print(f"report+render / count = {total / base:.1f}x; / count_final = {total / base_final:.2f}x")
    print(f"target report+render <= 2000 ms: {'met' if total <= 2000 else 'NOT met'} ({total:.0f} ms)")
    print("queries of the last report run (ms):")
    for label, ms in sorted(last_run.items(), key=lambda kv: -kv[1]):
        print(f"  {ms:7.1f}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
