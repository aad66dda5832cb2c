"""The KPI rollups stay exact however the events arrive: out of order, in batches with refreshes
between them, replayed after they were rolled up, across a restart of the refresher. The figures
served from the rollups are compared with the documented queries over the events and with the
independent computation of ``test_kpis`` (own module: one chDB data directory per process, and
``test_kpis`` keeps its own open for the module)."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

from flyball.control_plane.kpi_rollup import KPIRollup
from flyball.control_plane.kpis import Span, kpis
from flyball.control_plane.migrations import ALL_MIGRATIONS
from flyball.control_plane.runtime import load_prices
from flyball.control_plane.slo import DEFAULT_SLOS
from flyball.stream_processors.pipeline import Pipeline
from tests.integration.test_kpis import END, START, _check_group, check_against_documented_queries, expected, generate


def test_rollups_stay_exact_through_out_of_order_batches_and_replays(tmp_path: Path) -> None:
    """Events arrive in shuffled batches (feedback before the calls it names, a targeted call after
    its feedback, outcomes before their requests), with the rollups refreshed between batches,
    batches replayed after they were rolled up, and a restarted refresher resuming from its stored
    mark. The figures served from the rollups equal the documented queries over the events, and
    the independent computation."""
    from flyball.stream_processors.sinks.clickhouse import ClickHouseStore

    store = ClickHouseStore(f"chdb://{tmp_path / 'ch'}")
    try:
        store.migrate(ALL_MIGRATIONS)
        book = load_prices(None)
        events, wire = generate(41)
        rows = Pipeline(lambda: book).process(wire, now=None).rows
        order = list(range(len(rows)))
        random.Random(5).shuffle(order)
        batches = [[rows[i] for i in order[k::5]] for k in range(5)]
        rollup = KPIRollup(store, overlap=timedelta(0))  # nothing else writes: no insert in flight

        def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
            return store.call(store.query, sql, params)  # type: ignore[no-any-return]

        def check() -> None:
            served = kpis(query, Span(START, END, "feature"), slos=DEFAULT_SLOS, book=book)
            check_against_documented_queries(store, served, book)
            want = expected(events, book, group_by="feature")
            for g in served["groups"]:
                _check_group(g, want[g["key"]])

        for batch in batches:  # each batch rolled up before the next arrives
            store.call(store.write_events, batch)
            rollup.refresh(DEFAULT_SLOS)
        check()
        rnd = random.Random(8)
        for i, batch in enumerate(batches):  # replays of parts of old batches, rolled up again
            store.call(store.write_events, rnd.sample(batch, len(batch) // 3))
            rollup.refresh(DEFAULT_SLOS)
            if i == 2:
                rollup = KPIRollup(store, overlap=timedelta(0))  # a restart: resumes from kpi_rollup_state
        store.call(store.write_events, rows)  # everything replayed once more
        rollup.refresh(DEFAULT_SLOS)
        # the rollups hold duplicate rows now (nothing merged them away), and still count once
        assert store.call(store.query, "SELECT count() > uniqExact(event_id) FROM kpi_flagged_call", {})[0][0] == 1
        check()
    finally:
        store.close()
