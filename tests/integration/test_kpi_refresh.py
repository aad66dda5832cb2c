"""The KPI rollups are refreshed off the request path (``KPIRefresher``): a KPI request runs no
refresh of its own, waits only when rows that change its period arrived since the last pass,
shares one pass with every request waiting meanwhile, and then reads exact rollups."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from flyball.control_plane.kpi_rollup import KPIRefresher, KPIRollup
from flyball.control_plane.slo import DEFAULT_SLOS
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore

from tests.integration._helpers import migrated_store

NOV, DEC = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
JAN, FEB = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
COLS = ["event_id", "ts", "event_type", "tenant_id", "feature", "provider", "model", "status", "latency_ms", "cost_usd"]


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[ClickHouseStore]:
    with migrated_store(tmp_path / "ch") as s:
        yield s


def calls(at: datetime, n: int, usd: str = "0.001000000001") -> list[list[Any]]:
    return [[str(uuid.uuid4()), at + timedelta(minutes=i), "llm_call", "acme", "chat", "openai", "gpt-4o", "ok",
             300.0, Decimal(usd)] for i in range(n)]


def test_requests_wait_only_for_new_rows_of_their_period_and_share_one_pass(store: ClickHouseStore) -> None:
    rollup = KPIRollup(store, overlap=timedelta(0))  # no overlap: "nothing new" is exact to the millisecond here
    passes = []
    plain = rollup.refresh

    def counted(slos: Any) -> None:
        passes.append(1)
        plain(slos)

    rollup.refresh = counted  # type: ignore[method-assign]
    refresher = KPIRefresher(rollup)
    rows = calls(NOV + timedelta(days=3), 20)
    store.call(store.insert, "events", rows + rows[:2], COLS)  # two redelivered

    def month_in_rollup(start: datetime) -> tuple[int, Decimal]:
        got = store.call(store.query, "SELECT sum(calls), sum(cost_usd) FROM kpi_day FINAL WHERE day >= {a:Date} "
                         "AND day < {b:Date}", {"a": start.date(), "b": (start + timedelta(days=28)).date()})
        return int(got[0][0] or 0), Decimal(str(got[0][1] or 0))

    async def scenario() -> None:
        await refresher.ensure(DEFAULT_SLOS, NOV, DEC)  # the first request: a pass (from scratch)
        assert len(passes) == 1 and month_in_rollup(NOV) == (20, Decimal("0.020000000020"))
        await refresher.ensure(DEFAULT_SLOS, NOV, DEC)  # nothing new: answered without a pass
        assert len(passes) == 1
        store.call(store.insert, "events", calls(JAN + timedelta(days=2), 5), COLS)
        await refresher.ensure(DEFAULT_SLOS, NOV, DEC)  # new rows, but not of November or its history
        assert len(passes) == 1
        await refresher.ensure(DEFAULT_SLOS, JAN, FEB)  # January's request waits for them
        assert len(passes) == 2 and month_in_rollup(JAN) == (5, Decimal("0.005000000005"))
        store.call(store.insert, "events", calls(NOV + timedelta(days=9), 3, "1.5"), COLS)
        # five requests arriving together: one pass for all, and each sees the new rows
        await asyncio.gather(*(refresher.ensure(DEFAULT_SLOS, NOV, DEC) for _ in range(5)))
        assert len(passes) == 3 and month_in_rollup(NOV) == (23, Decimal("4.520000000020"))

    asyncio.run(scenario())


def test_background_loop_refreshes_without_any_request(store: ClickHouseStore) -> None:
    refresher = KPIRefresher(KPIRollup(store))

    async def slos() -> Any:
        return DEFAULT_SLOS

    async def scenario() -> int:
        store.call(store.insert, "events", calls(NOV, 4), COLS)
        loop = asyncio.ensure_future(refresher.loop(slos, 0.05))
        try:
            for _ in range(400):
                got = store.call(store.query, "SELECT sum(calls) FROM kpi_day FINAL", {})
                if got[0][0]:
                    return int(got[0][0])
                await asyncio.sleep(0.05)
            return 0
        finally:
            loop.cancel()
            with pytest.raises(asyncio.CancelledError):
                await loop

    assert asyncio.run(scenario()) == 4
