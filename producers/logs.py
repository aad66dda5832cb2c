"""How the shim logs: through the standard ``logging`` module, never to stdout.

The shim is a library inside someone else's process (a CLI whose stdout is JSON, a pipe), so it
only creates loggers under ``flyball.producers`` and lets the host configure handlers and levels.
A broker outage is one warning when it starts and one when it ends, with counts, not a line per
failed retry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


@dataclass(slots=True)
class Outage:
    """One warning per outage of ``what``; the failures in between are counted, not logged."""

    logger: logging.Logger
    what: str
    since: float | None = None
    failures: int = 0
    records: int = 0

    def failed(self, error: BaseException | str, *, now: float, records: int = 0) -> None:
        self.failures += 1
        self.records += records
        if self.since is None:
            self.since = now
            self.logger.warning("%s failing: %s (further failures are counted until it recovers)",
                                self.what, str(error)[:200])

    def recovered(self, *, now: float) -> None:
        if self.since is None:
            return
        self.logger.warning("%s recovered after %.1f s: %d failed attempts, %d records retried",
                            self.what, now - self.since, self.failures, self.records)
        self.since, self.failures, self.records = None, 0, 0
