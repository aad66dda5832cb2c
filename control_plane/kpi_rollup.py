"""The KPI report's rollups, all exact under duplicates and replays (every event counts once):

- ``kpi_day``: llm calls per tenant, feature, model and UTC day, with p95 states;
- ``slo_day``: each SLO's eligible and bad calls per tenant, feature and day;
- ``safety_day``: safety triggers per tenant, feature, category and day;
- ``kpi_flag`` and ``kpi_flagged_call``: what "cost per successful outcome" needs. The flags
  (negative feedback, explicit outcomes) are few, and so are the calls of the requests they name;
  the report matches the two instead of every call against every flag.

The day tables are recomputed from ``events FINAL`` for the days that received rows since the
last pass (``ingested_at``), like ``spend_minute``: a replayed batch or a re-priced event replaces
its day's row instead of adding to it. The flag tables hold one row per event id
(``ReplacingMergeTree`` read with ``FINAL``): a replayed flag or call is the same row again.
A new flag looks up the calls of its request among all stored events (``request_id`` through the
console's bloom-filter index, a targeted call by its tenant and id); a new call joins the
flagged requests already known. ``HOUR_SELECT`` and ``SAFETY_SELECT`` are the one definition of
a day row; the KPI queries run the same selects over raw events for the partial days at a
period's edges. p95s are ClickHouse's ``quantileBFloat16`` (a histogram of values rounded to
bfloat16: within 0.4 % of the exact value, and the same whether merged from the rollup or
computed from events). How far the rollups are complete is kept in ``kpi_rollup_state``, so a
restarted control plane resumes, and a new rollup table (no state yet) is built over all events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from flyball.schemas.events import CallStatus

from .slo import SLOs
from .slo_sql import sli_conditions
from .state import utc

log = structlog.get_logger(__name__)
FAILURE_CLASSES = tuple(s.value for s in CallStatus if s != CallStatus.OK)
KEYS = "tenant_id, feature, provider, model, toDate(ts) AS day"
HOUR_SELECT = (
    f"{KEYS}, count() AS calls, countIf(status = 'ok') AS ok, "
    + ", ".join(f"countIf(status = '{c}') AS {c}" for c in FAILURE_CLASSES)
    + ", sum(ifNull(cost_usd, toDecimal128(0, 12))) AS cost_usd, countIf(unpriced = 1) AS unpriced, "
    "sum(input_tokens) AS input_tokens, sum(cache_read_tokens) AS cache_read_tokens, "
    "countIf(status = 'ok' AND stream = 1 AND isNotNull(ttft_ms)) AS streamed_ok, "
    "quantileBFloat16StateIf(0.95)(latency_ms, status = 'ok') AS latency_ok, "
    "quantileBFloat16StateIf(0.95)(ifNull(ttft_ms, 0), status = 'ok' AND stream = 1 AND isNotNull(ttft_ms)) "
    "AS ttft_ok"
)
HOUR_GROUP = "GROUP BY tenant_id, feature, provider, model, day"
KPI_COLUMNS = ("tenant_id, feature, provider, model, day, calls, ok, " + ", ".join(FAILURE_CLASSES)
               + ", cost_usd, unpriced, input_tokens, cache_read_tokens, streamed_ok, latency_ok, ttft_ok")
SAFETY_SELECT = "toDate(ts) AS day, tenant_id, feature, category, count() AS triggers"
SAFETY_GROUP = "GROUP BY day, tenant_id, feature, category"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SINCE = "ingested_at >= {since:DateTime64(3, 'UTC')}"
DIRTY = f"SELECT DISTINCT toDate(ts) FROM events WHERE {SINCE} AND event_type = 'llm_call'"
FINAL_SETTING = " SETTINGS do_not_merge_across_partitions_select_final = 1"
# a request: (tenant_id, request key); a call without a request id is a request of its own
REQUEST_KEY = "if(request_id != '', request_id, toString(event_id))"
# the same request as one string, the tenant length-prefixed so that no two requests share it
REQUEST = f"concat(toString(length(tenant_id)), ':', tenant_id, {REQUEST_KEY})"
# the events that flag a request: negative feedback, and an explicit outcome on any event
FLAG = "((event_type = 'feedback' AND score < 0) OR outcome IN ('success', 'failure'))"


def kpi_refresh_sql() -> str:
    return (f"INSERT INTO kpi_day SELECT {HOUR_SELECT}, now64(3) FROM events FINAL "
            f"WHERE event_type = 'llm_call' AND toDate(ts) IN ({DIRTY}) {HOUR_GROUP}{FINAL_SETTING}")


def safety_refresh_sql() -> str:
    dirty = DIRTY.replace("'llm_call'", "'safety_trigger'")
    return (f"INSERT INTO safety_day SELECT {SAFETY_SELECT}, now64(3) FROM events FINAL "
            f"WHERE event_type = 'safety_trigger' AND toDate(ts) IN ({dirty}) {SAFETY_GROUP}{FINAL_SETTING}")


_TARGETS = "SELECT tenant_id, toUUIDOrZero(target_event_id) FROM kpi_flag WHERE negative = 1 AND target_event_id != ''"
_NEW_CALLS = f"SELECT {REQUEST} FROM events WHERE {SINCE} AND event_type = 'llm_call'"
_CALL = ("INSERT INTO kpi_flagged_call SELECT event_id, ts, tenant_id, feature, "
         f"{REQUEST_KEY}, {REQUEST}, request_id != '', status = 'ok', ingested_at, now64(3) FROM events "
         "WHERE event_type = 'llm_call' AND ")


# what arrived since the last pass, to skip the statements that have nothing to do
NEW_SQL = (f"SELECT countIf(event_type = 'llm_call'), countIf(event_type = 'safety_trigger'), countIf({FLAG}), "
           f"countIf(event_type = 'feedback' AND score < 0 AND target_event_id != '') FROM events WHERE {SINCE}")
NEW_KINDS = ("calls", "safety", "flags", "targets")


def flag_refresh_sqls() -> list[tuple[str, tuple[str, ...]]]:
    """The statements that bring ``kpi_flag`` and ``kpi_flagged_call`` up to date with the events
    ingested since ``{since}``, in order, each with the kinds of new rows (``NEW_KINDS``) that give
    it work. Each lookup is its own statement, so that ClickHouse can use an index for it (an OR
    of lookups reads every row)."""
    return [
        # the new flags
        ("INSERT INTO kpi_flag SELECT event_id, ts, tenant_id, feature, "
        f"{REQUEST_KEY}, {REQUEST}, request_id != '', event_type = 'llm_call', target_event_id, "
        "event_type = 'feedback' AND ifNull(score, 0) < 0, if(outcome IN ('success', 'failure'), outcome, ''), "
        f"ingested_at, now64(3) FROM events WHERE {SINCE} AND {FLAG}", ("flags",)),
        # every call of a request a new flag names by its request id (request_id alone first: one
        # column, and the bloom-filter index when the flags are few; a tuple match reads 2.5x slower)
        (_CALL + f"request_id IN (SELECT request_key FROM kpi_flag WHERE {SINCE} AND has_request = 1) "
         f"AND {REQUEST} IN (SELECT request FROM kpi_flag WHERE {SINCE} AND has_request = 1)", ("flags",)),
        # ... or whose key is a call's own id (a call without a request id)
        (_CALL + "(tenant_id, event_id) IN (SELECT tenant_id, toUUIDOrZero(request_key) FROM kpi_flag "
         f"WHERE {SINCE} AND (has_request = 1 OR is_call = 1) AND isNotNull(toUUIDOrNull(request_key)))", ("flags",)),
        # the calls new negative feedback targets (same tenant)
        (_CALL + f"(tenant_id, event_id) IN ({_TARGETS} AND {SINCE})", ("targets",)),
        # new calls of requests already flagged, or targeted by earlier feedback (the flagged keys
        # are narrowed to the new calls' keys first, a small set, rather than hashed whole)
        (_CALL + f"{SINCE} AND ({REQUEST} IN (SELECT request FROM (SELECT request FROM kpi_flag UNION ALL "
         f"SELECT request FROM kpi_flagged_call) WHERE request IN ({_NEW_CALLS})) "
         f"OR (tenant_id, event_id) IN ({_TARGETS}))", ("calls",)),
        # the other calls of a request reached through a targeted call found just now
        (_CALL + "(tenant_id, request_id) IN (SELECT tenant_id, request_key FROM kpi_flagged_call "
         f"WHERE has_request = 1 AND (tenant_id, event_id) IN ({_TARGETS} AND {SINCE} UNION ALL "
         f"SELECT tenant_id, event_id FROM kpi_flagged_call WHERE {SINCE} AND (tenant_id, event_id) IN ({_TARGETS})))",
         ("targets", "calls")),
    ]


def slo_select(slos: SLOs, where: str) -> tuple[str, dict[str, Any]]:
    """Rows (slo_id, slo_version, tenant_id, feature, day, total, bad) of every SLO of the set
    from ``events FINAL`` rows of llm calls matching ``where``, in one scan: a ``slo_day`` row."""
    params: dict[str, Any] = {}
    arms = []
    for i, slo in enumerate(slos.slos):
        eligible, bad, extra = sli_conditions(slo, prefix=f"s{i}_")
        params |= extra | {f"s{i}_id": slo.slo_id, f"s{i}_v": slo.version}
        arms.append(f"({{s{i}_id:String}}, {{s{i}_v:UInt32}}, countIf({eligible}), countIf(({eligible}) AND ({bad})))")
    sql = ("SELECT s.1 AS slo_id, s.2 AS slo_version, tenant_id, feature, day, s.3 AS total, s.4 AS bad FROM ("
           f"SELECT tenant_id, feature, toDate(ts) AS day, [{', '.join(arms)}] AS per_slo "
           f"FROM events FINAL WHERE event_type = 'llm_call' AND ({where}) GROUP BY tenant_id, feature, day"
           ") ARRAY JOIN per_slo AS s WHERE s.3 > 0")
    return sql, params


def slo_refresh_sql(slos: SLOs, *, all_days: bool) -> tuple[str, dict[str, Any]] | None:
    """One insert for every SLO of the set (a scan of the dirty days, or of everything)."""
    if not slos.slos:
        return None
    sql, params = slo_select(slos, "1" if all_days else f"toDate(ts) IN ({DIRTY})")
    return (f"INSERT INTO slo_day SELECT *, now64(3) FROM ({sql}) "
            "SETTINGS do_not_merge_across_partitions_select_final = 1", params)


class KPIRollup:
    """Keeps the KPI rollups current. ``refresh`` is synchronous and runs its statements through
    the store's ``query``/``command`` (on its thread)."""

    def __init__(self, store: Any, *, overlap: timedelta = timedelta(seconds=10)) -> None:
        """``overlap``: how far before a pass's start the next one re-reads, for inserts still in
        flight while it ran (their ``ingested_at`` is when they began)."""
        self.store = store
        self.overlap = overlap
        self._since: datetime | None = None
        self._slo_versions: tuple[tuple[str, int], ...] | None = None

    @property
    def since(self) -> datetime | None:
        """The ingest time from which the next pass reads (None before the first pass)."""
        return self._since

    @property
    def slo_versions(self) -> tuple[tuple[str, int], ...] | None:
        return self._slo_versions

    def _q(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self.store.call(self.store.query, sql, params or {})  # type: ignore[no-any-return]

    def _c(self, sql: str, params: dict[str, Any]) -> None:
        self.store.call(self.store.command, sql, params)

    def refresh(self, slos: SLOs) -> None:
        started = datetime.now(UTC)
        since = self._since
        if since is None:
            rows = self._q("SELECT count(), max(complete_since) FROM kpi_rollup_state")
            since = (utc(rows[0][1]) if rows and rows[0][0] else None) or EPOCH
        counts = self._q(NEW_SQL, {"since": since})[0]
        new = {kind for kind, n in zip(NEW_KINDS, counts, strict=True) if n}
        statements = [(kpi_refresh_sql(), ("calls",)), (safety_refresh_sql(), ("safety",)), *flag_refresh_sqls()]
        for sql, needs in statements:
            if new.intersection(needs):
                self._c(sql, {"since": since})
        versions = tuple((s.slo_id, s.version) for s in slos.slos)
        fresh = []  # SLO versions with no rows yet: computed over every day once
        if versions != self._slo_versions:
            have = {(i, int(v)) for i, v in self._q("SELECT DISTINCT slo_id, slo_version FROM slo_day")}
            fresh = [s for s in slos.slos if (s.slo_id, s.version) not in have]
        if fresh:
            full = slo_refresh_sql(SLOs(tuple(fresh)), all_days=True)
            if full is not None:
                self._c(*full)
        rest = SLOs(tuple(s for s in slos.slos if s not in fresh))
        dirty = slo_refresh_sql(rest, all_days=False)
        if dirty is not None and "calls" in new:
            sql, params = dirty
            self._c(sql, params | {"since": since})
        self._slo_versions = versions
        # rows ingested up to a little before this pass began are in; the next pass re-reads the
        # overlap (harmless: every rollup row is replaced, not added)
        self._since = started - self.overlap
        self._c("INSERT INTO kpi_rollup_state VALUES ({at:DateTime64(3, 'UTC')})", {"at": self._since})


# rows that change a period's figures when they arrive: its own events, the history before it the
# forecast reads (at most two months), and flags (feedback, outcomes), which may name any call
HISTORY = timedelta(days=62)
PENDING_SQL = (f"SELECT count() FROM events WHERE {SINCE} AND ((ts >= {{a:DateTime64(3, 'UTC')}} "
               f"AND ts < {{b:DateTime64(3, 'UTC')}}) OR {FLAG})")


class KPIRefresher:
    """Keeps the KPI rollups current off the request path: ``loop`` refreshes them every few
    seconds in the background, and a KPI request only waits when rows that change its period
    arrived since the last pass (``ensure``): it then awaits a pass that started after it
    arrived, shared by every request waiting meanwhile, so the figures stay exact and no request
    runs a refresh of its own. Passes run one at a time, in a worker thread whose statements go
    through the store's ClickHouse thread one by one."""

    def __init__(self, rollup: KPIRollup) -> None:
        self.rollup = rollup
        self._task: asyncio.Task[None] | None = None
        self._task_started = 0.0
        self._done_started = -1.0  # when the newest finished pass started (monotonic)
        self._pass_since: datetime | None = None  # the ingest time the newest finished pass began at

    async def refresh_after(self, t: float, slos: SLOs) -> None:
        """Return once a pass that started at or after ``t`` (monotonic) has finished."""
        while True:
            task = self._task
            if task is not None and not task.done():
                await asyncio.shield(task)
                if self._task_started >= t:
                    return
                continue
            if self._done_started >= t:
                return
            self._task_started = time.monotonic()
            self._task = asyncio.ensure_future(self._pass(slos, self._task_started))

    async def _pass(self, slos: SLOs, started: float) -> None:
        await asyncio.to_thread(self.rollup.refresh, slos)
        self._done_started = max(self._done_started, started)

    def pending(self, start: datetime, end: datetime) -> bool:
        """Did rows that change the figures of ``[start, end)`` arrive since the rollups were
        complete? (Run in a worker thread: one indexed count through the ClickHouse thread.)"""
        since = self.rollup.since
        if since is None:
            return True
        rows = self.rollup._q(PENDING_SQL, {"since": since, "a": start - HISTORY, "b": end})
        return bool(rows and rows[0][0])

    async def ensure(self, slos: SLOs, start: datetime, end: datetime) -> None:
        """Make the rollups exact for a request about ``[start, end)`` arriving now."""
        t = time.monotonic()
        if slos.slos and self.rollup.slo_versions != tuple((s.slo_id, s.version) for s in slos.slos):
            await self.refresh_after(t, slos)  # new SLO versions: their rows are built by a pass
        elif await asyncio.to_thread(self.pending, start, end):
            await self.refresh_after(t, slos)

    async def loop(self, get_slos: Callable[[], Awaitable[SLOs]], interval_s: float) -> None:
        """Refresh every ``interval_s`` (a failed pass is retried at the next round)."""
        while True:
            try:
                await self.refresh_after(time.monotonic(), await get_slos())
            except Exception as exc:  # noqa: BLE001 - the next round tries again; requests still wait for exactness
                log.warning("kpi_rollup_failed", error=str(exc)[:300])
            await asyncio.sleep(interval_s)
