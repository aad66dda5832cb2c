"""The ClickHouse adapter's part in the worker's memory staying flat (docs/RELIABILITY.md, "The
soak"): it lets go of what it inserted as soon as the insert ends (a worker inserting 1,000
events/s must not hold its rows until the garbage collector's next pass: the driver's insert
context is a reference cycle), and chDB purges its allocator when the worker asks."""

from __future__ import annotations

import gc
import weakref
from datetime import UTC, datetime
from pathlib import Path

from flyball.stream_processors.sinks.clickhouse import ClickHouseStore


class Row(list[object]):
    """A row that can be watched with a weak reference (a plain tuple or list cannot)."""


def _rows(n: int) -> list[Row]:
    now = datetime.now(UTC)
    return [Row([f"group-{i}", now, now, "{}"]) for i in range(n)]


COLUMNS = ("group_id", "saved_at", "watermark", "state")


def test_rows_are_released_when_the_insert_returns_without_a_collection(tmp_path: Path) -> None:
    store = ClickHouseStore(f"chdb://{tmp_path}/ch")
    store.migrate()
    gc.disable()  # what the worker's rare collections amount to within one insert's lifetime
    try:
        rows = _rows(50)
        watched = [weakref.ref(r) for r in rows]
        store.call(store.insert, "detector_state", rows, COLUMNS)
        del rows
        assert [w for w in watched if w() is not None] == []
        assert store.query("SELECT count() FROM detector_state") == [(50,)]
    finally:
        gc.enable()
        store.close()


async def test_chdb_accepts_the_allocator_purge_and_keeps_its_data(tmp_path: Path) -> None:
    # what the purge frees is measured in the soak (docs/RELIABILITY.md: 10-28 MB), not here: this
    # asserts that chDB takes the command and that no data goes with the pages
    store = ClickHouseStore(f"chdb://{tmp_path}/ch")
    store.migrate()
    try:
        store.call(store.insert, "detector_state", _rows(10), COLUMNS)
        await store.run(store.purge_allocator)
        assert await store.run(store.query, "SELECT count() FROM detector_state") == [(10,)]
    finally:
        store.close()
