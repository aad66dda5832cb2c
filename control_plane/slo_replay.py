"""SLO burn-rate alerts in event time, for ``flyball replay``: the same ``assess`` as the live
monitor, fed from running per-window sums over the replayed rows instead of the ``slo_minute``
rollup. Pure: rows in, alerts out; time is the pipeline's watermark."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from flyball.schemas import Alert
from flyball.stream_processors.pipeline import EVENT_COLUMNS

from .slo import LONGEST, WINDOWS, Counts, SLOs, Subject, assess, floor_minute

COL = {name: i for i, name in enumerate(EVENT_COLUMNS)}
MINUTE = timedelta(minutes=1)


class EventTimeSLOs:
    """Per subject: counts per minute, and the sums over every window ending at ``self.at`` (the
    last minute evaluated), kept current as time advances one minute at a time and as late rows
    land in minutes already passed."""

    def __init__(self, slos: SLOs) -> None:
        self.slos = slos
        self.windows: dict[Subject, tuple[timedelta, ...]] = {}
        self.minutes: dict[Subject, dict[datetime, Counts]] = {}
        self.sums: dict[Subject, dict[timedelta, Counts]] = {}
        self.open: dict[str, Alert] = {}
        self.at: datetime | None = None
        self.first: datetime | None = None  # the earliest minute counted: evaluation starts there
        self.keep = max([LONGEST, *(s.window for s in slos.slos)])

    def add(self, rows: Iterable[Sequence[Any]]) -> None:
        c_type, c_ts, c_feature, c_tenant = COL["event_type"], COL["ts"], COL["feature"], COL["tenant_id"]
        c_status, c_lat, c_ttft, c_stream = COL["status"], COL["latency_ms"], COL["ttft_ms"], COL["stream"]
        for row in rows:
            if row[c_type] != "llm_call":
                continue
            feature, tenant = row[c_feature], row[c_tenant]
            for slo in self.slos.slos:
                if not slo.applies(feature, tenant):
                    continue
                bad = slo.classify(status=row[c_status], latency_ms=row[c_lat], ttft_ms=row[c_ttft],
                                   stream=bool(row[c_stream]))
                if bad is None:
                    continue
                minute = floor_minute(row[c_ts])
                if self.first is None or minute < self.first:
                    self.first = minute
                self._count(slo.subject(feature, tenant), slo.window, minute, Counts(1, int(bad)))

    def _count(self, subject: Subject, window: timedelta, minute: datetime, c: Counts) -> None:
        if subject not in self.minutes:
            self.windows[subject] = tuple(dict.fromkeys((*WINDOWS, window)))
            self.minutes[subject] = {}
            self.sums[subject] = {w: Counts() for w in self.windows[subject]}
        per = self.minutes[subject]
        per[minute] = per.get(minute, Counts()) + c
        if self.at is not None and minute < self.at:  # late: already inside the windows that cover it
            sums = self.sums[subject]
            for w in self.windows[subject]:
                if minute >= self.at - w:
                    sums[w] = sums[w] + c

    def advance(self, watermark: datetime) -> list[Alert]:
        """Evaluate at every minute boundary from the first counted minute up to the watermark's
        minute (as the live monitor evaluates every minute); the alerts to publish."""
        target = floor_minute(watermark)
        if self.at is None:
            if self.first is None:
                return []
            self.at = self.first  # nothing counted lies before it: every sum starts at zero
        out: list[Alert] = []
        while self.at < target:
            if not self.open and self._quiet():
                # no count in any window and no alert open: every minute up to the next one
                # with counts evaluates to nothing, so go straight there (a replayed gap of a
                # month, or an event dated a century ahead, is not a loop over its minutes)
                ahead = [m for per in self.minutes.values() for m in per if m >= self.at]
                upto = min(target, min(ahead, default=target))
                if upto > self.at:
                    self.at = upto
                    self._prune()
                    continue
            leaving_at = self.at
            self.at = self.at + MINUTE
            for subject, per in self.minutes.items():
                sums = self.sums[subject]
                entering = per.get(leaving_at)
                for w in self.windows[subject]:
                    gone = per.get(leaving_at - w)
                    if entering is not None:
                        sums[w] = sums[w] + entering
                    if gone is not None:
                        sums[w] = sums[w] - gone
            out += self._evaluate(self.at)
            if self.at.minute == 0:
                self._prune()
        return out

    def _quiet(self) -> bool:
        return not any(c.total for sums in self.sums.values() for c in sums.values())

    def _evaluate(self, now: datetime) -> list[Alert]:
        windows, budgets = {}, {}
        for subject, sums in self.sums.items():
            slo = self.slos.by_id(subject.slo_id)
            if slo is None or (not any(c.total for c in sums.values()) and subject.scope().key() not in self.open):
                continue
            windows[subject] = {w: sums[w] for w in WINDOWS}
            budgets[subject] = sums[slo.window]
        if not windows and not self.open:
            return []
        alerts = assess(self.slos, windows, budgets, self.open, now=now,
                        minutes=lambda s: {m: c for m, c in self.minutes.get(s, {}).items() if now - LONGEST <= m < now})
        for a in alerts:
            if a.status == "open":
                self.open[a.scope.key()] = a
            else:
                self.open.pop(a.scope.key(), None)
        return alerts

    def _prune(self) -> None:
        assert self.at is not None
        horizon = self.at - self.keep - MINUTE
        for per in self.minutes.values():
            for m in [m for m in per if m < horizon]:
                del per[m]
