"""SLOs live: the versioned, audited SLO set, the ``slo_minute`` rollup, and the monitor that
evaluates burn rates every minute and publishes ``slo_burn`` alerts. Wiring around ``slo.py``.

Where it runs: in the control plane, not in the worker. An objective such as "every feature,
all tenants" spans every Kafka partition (events are keyed by tenant), so no single worker
replica sees all of its calls, while ClickHouse does; and the control plane already owns the
other versioned, audited settings. The monitor writes its alerts to the ``alerts`` table and to
``flyball.alerts.v1`` exactly as the worker's detectors do, so they go through the policies,
notifications and audit like every other alert.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from flyball.schemas import Alert, AlertKind

from .slo import LONGEST, SLO, Counts, SLOs, Subject, assess, dump_slos, floor_minute, load_slos, parse_slos, revise, window_counts
from .slo_sql import sli_conditions
from .state import VersionedRegistry, utc

log = structlog.get_logger(__name__)
class SLORegistry(VersionedRegistry[SLOs]):
    """The SLOs in force, versioned in ``slo_versions`` and audited in ``actions`` (decision
    ``slos_updated``), like the policies."""

    name = "slos"
    title = "SLOs"
    table = "slo_versions"

    def load(self, text: str) -> SLOs:
        return load_slos(text)

    def parse(self, data: Any) -> SLOs:
        return parse_slos(data)

    def dump(self, document: SLOs) -> dict[str, Any]:
        return dump_slos(document)

    def revise(self, old: SLOs, new: SLOs) -> SLOs:
        return revise(old, new)

    def version_of(self, document: SLOs) -> int:
        return document.version


# ------------------------------------------------------------------ the rollup
def refresh_sql(slo: SLO) -> tuple[str, dict[str, Any]]:
    """Recompute ``slo_minute`` rows of one SLO for the minutes in ``[lo, hi)`` that got rows
    ingested since ``since`` (every minute of the range when ``since`` is the epoch)."""
    eligible, bad, params = sli_conditions(slo)
    tenant = "''" if slo.tenant_id is None else "tenant_id"
    sql = (
        "INSERT INTO slo_minute SELECT {slo_id:String}, {slo_version:UInt32}, feature, "
        f"{tenant} AS subject_tenant, toStartOfMinute(ts) AS minute, countIf({eligible}) AS total, "
        f"countIf(({eligible}) AND ({bad})), now64(3) FROM events FINAL "
        "WHERE event_type = 'llm_call' AND ts >= {lo:DateTime64(3, 'UTC')} AND ts < {hi:DateTime64(3, 'UTC')} "
        "AND toStartOfMinute(ts) IN (SELECT DISTINCT toStartOfMinute(ts) FROM events "
        "    WHERE ingested_at >= {since:DateTime64(3, 'UTC')} AND event_type = 'llm_call' "
        "    AND ts >= {lo:DateTime64(3, 'UTC')}) "
        "GROUP BY feature, subject_tenant, minute HAVING total > 0")
    return sql, params | {"slo_id": slo.slo_id, "slo_version": slo.version}


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SLORollup:
    """Keeps ``slo_minute`` current for the SLOs in force: a full backfill of an SLO's window the
    first time a version is seen, then only the minutes that received rows since the last pass
    (recomputed from ``events FINAL``, so duplicates and re-inserts count once)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._since: dict[str, datetime] = {}

    def refresh(self, slos: SLOs, *, now: datetime) -> None:
        """Synchronous: call on a worker thread (it uses ``store.call``)."""
        for slo in slos.slos:
            started = datetime.now(UTC)
            since = self._since.get(slo.ref)
            if since is None:
                rows = self.store.call(self.store.query,
                                       "SELECT count(), max(computed_at) FROM slo_minute WHERE slo_id = {i:String} "
                                       "AND slo_version = {v:UInt32}", {"i": slo.slo_id, "v": slo.version})
                last = utc(rows[0][1]) if rows and rows[0][0] else None
                since = last - timedelta(seconds=10) if last is not None else EPOCH
            sql, params = refresh_sql(slo)
            params |= {"lo": floor_minute(now) - max(slo.window, LONGEST), "hi": now + timedelta(days=1),
                       "since": since}
            self.store.call(self.store.command, sql, params)
            self._since[slo.ref] = started - timedelta(seconds=10)

    def minutes(self, slo: SLO, *, now: datetime) -> dict[Subject, dict[datetime, Counts]]:
        rows = self.store.call(self.store.query,
                               "SELECT feature, tenant_id, minute, total, bad FROM slo_minute FINAL "
                               "WHERE slo_id = {i:String} AND slo_version = {v:UInt32} "
                               "AND minute >= {lo:DateTime('UTC')} AND minute < {hi:DateTime('UTC')}",
                               {"i": slo.slo_id, "v": slo.version, "lo": now - LONGEST, "hi": now})
        out: dict[Subject, dict[datetime, Counts]] = {}
        for feature, tenant, minute, total, bad in rows:
            out.setdefault(Subject(slo.slo_id, feature, tenant or None), {})[utc(minute) or minute] = \
                Counts(int(total), int(bad))
        return out

    def budgets(self, slo: SLO, *, now: datetime) -> dict[Subject, Counts]:
        rows = self.store.call(self.store.query,
                               "SELECT feature, tenant_id, sum(total), sum(bad) FROM slo_minute FINAL "
                               "WHERE slo_id = {i:String} AND slo_version = {v:UInt32} "
                               "AND minute >= {lo:DateTime('UTC')} AND minute < {hi:DateTime('UTC')} "
                               "GROUP BY feature, tenant_id",
                               {"i": slo.slo_id, "v": slo.version, "lo": now - slo.window, "hi": now})
        return {Subject(slo.slo_id, f, t or None): Counts(int(n), int(b)) for f, t, n, b in rows}


class SLOMonitor:
    """Every ``interval_s``: refresh the rollup, evaluate at the current minute, publish."""

    def __init__(self, store: Any, *, slos: Callable[[], SLOs], publish: Callable[[list[Alert]], Awaitable[None]],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), interval_s: float = 60.0) -> None:
        self.store = store
        self.slos = slos
        self.publish = publish
        self.clock = clock
        self.interval_s = interval_s
        self.rollup = SLORollup(store)
        self.open: dict[str, Alert] = {}  # scope key -> open slo_burn alert
        self._loaded = False

    def _load_open(self) -> None:
        rows = self.store.call(self.store.query, "SELECT body FROM alerts FINAL WHERE kind = {k:String} "
                                                 "AND status = 'open'", {"k": str(AlertKind.SLO_BURN)})
        for (body,) in rows:
            alert = Alert.model_validate_json(body)
            self.open[alert.scope.key()] = alert
        self._loaded = True

    def step(self, now: datetime) -> list[Alert]:
        """Synchronous (a worker thread): refresh, read, decide; returns the alerts to publish."""
        if not self._loaded:
            self._load_open()
        at = floor_minute(now)
        slos = self.slos()
        self.rollup.refresh(slos, now=now)
        minutes: dict[Subject, dict[datetime, Counts]] = {}
        budgets: dict[Subject, Counts] = {}
        for slo in slos.slos:
            minutes |= self.rollup.minutes(slo, now=at)
            budgets |= self.rollup.budgets(slo, now=at)
        windows = {subject: window_counts(m, at) for subject, m in minutes.items()}
        alerts = assess(slos, windows, budgets, self.open, now=at, minutes=lambda s: minutes.get(s, {}))
        for a in alerts:
            if a.status == "open":
                self.open[a.scope.key()] = a
            else:
                self.open.pop(a.scope.key(), None)
        return alerts

    async def run(self) -> None:
        while True:
            try:
                alerts = await asyncio.to_thread(self.step, self.clock())
                if alerts:
                    await self.publish(alerts)
                    for a in alerts:
                        log.info("alert_raised" if a.status == "open" else "alert_resolved", alert_id=a.alert_id,
                                 kind=str(a.kind), scope=a.scope.key(), severity=a.severity)
            except Exception as exc:  # noqa: BLE001 - a failed pass is retried at the next interval
                log.warning("slo_evaluation_failed", error=str(exc)[:300])
            await asyncio.sleep(self.interval_s)


class AlertPublisher:
    """The ``alerts`` table, then ``flyball.alerts.v1`` (as the worker's detectors publish)."""

    def __init__(self, store: Any, bootstrap: str) -> None:
        self.store = store
        self.bootstrap = bootstrap
        self._producer: Any = None

    async def __call__(self, alerts: list[Alert]) -> None:
        from flyball.producers.transports.kafka import start_producer
        from flyball.schemas import ALERTS
        from flyball.stream_processors.ingest import alert_row

        now = datetime.now(UTC)
        await self.store.run(self.store.write_alerts, [alert_row(a, now) for a in alerts])
        if self._producer is None:
            self._producer = await start_producer(self.bootstrap)
        for alert in alerts:
            await self._producer.send_and_wait(ALERTS, key=alert.key().encode(), value=alert.model_dump_json().encode())

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
