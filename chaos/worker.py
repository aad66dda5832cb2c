"""`flyball worker` with a fault-injecting ClickHouse store at its store seam.

    python -m chaos.worker [flyball worker arguments]

The store is the real chDB store; while the file named by ``FLYBALL_CHAOS_FAIL_FILE`` exists,
every event and alert insert raises before reaching ClickHouse (as a server that refuses
connections would), and ``FLYBALL_CHAOS_SLOW_ROWS_PER_S`` (when set) makes each insert take
``rows / rate`` seconds longer: a slow consumer. ``FLYBALL_CHAOS_DEDUPE_IDS`` sets the size of
the worker's window of recent event ids (the soak fills it early, so that RSS can be judged
flat after). Everything else is the unmodified worker.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.exceptions import OperationalError
from flyball.control_plane import cli, runtime
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore


class InjectedFault(OperationalError):
    """The chaos harness switched ClickHouse writes off (raised as the driver raises a network
    failure, so the store classifies it as temporary and the worker retries it, bounded)."""


class FaultyStore(ClickHouseStore):
    def __init__(self, url: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)
        fail = os.environ.get("FLYBALL_CHAOS_FAIL_FILE", "")
        self.fail_file = Path(fail) if fail else None
        slow = os.environ.get("FLYBALL_CHAOS_SLOW_ROWS_PER_S", "")
        self.rows_per_s = float(slow) if slow else 0.0

    def _gate(self, rows: Sequence[Sequence[Any]]) -> None:
        if self.fail_file is not None and self.fail_file.exists():
            raise InjectedFault(f"injected: ClickHouse writes fail while {self.fail_file} exists")
        if self.rows_per_s > 0:
            time.sleep(len(rows) / self.rows_per_s)

    def write_events(self, rows: Sequence[Sequence[Any]]) -> None:
        self._gate(rows)
        super().write_events(rows)

    def write_alerts(self, rows: Sequence[Sequence[Any]]) -> None:
        self._gate(rows)
        super().write_alerts(rows)


def main() -> int:
    runtime.ClickHouseStore = FaultyStore  # type: ignore[misc]  # the seam: the store the worker builds
    if ids := os.environ.get("FLYBALL_CHAOS_DEDUPE_IDS", ""):  # the soak: a window it can fill
        runtime.Pipeline = functools.partial(Pipeline, dedupe_capacity=int(ids))  # type: ignore[misc]
    return cli.main(["worker", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
