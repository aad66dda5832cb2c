"""The data behind the console's pages: SQL over ClickHouse, tenant scope always applied.

Health and the spend-over-time chart read ``console_minute``, a per-minute rollup recomputed
from ``events FINAL`` (each event once, like ``spend_minute``) for the minutes that received
rows since the last refresh; money on the console's tables and its CSV comes from
``GET /v1/spend`` itself, so the two cannot disagree. ``bench/console.py`` times every query
here over 10M events.

Every function takes the tenant a principal may see (``None`` = all) and answers only about
it: a tenant-bound key never gets another tenant's rows, names or counts.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import structlog

log = structlog.get_logger(__name__)

Query = Callable[[str, dict[str, Any]], Sequence[Sequence[Any]]]

FILTERS = ("tenant_id", "feature", "provider", "model", "prompt_version", "environment")
RANGES: dict[str, int] = {"15m": 900, "1h": 3600, "6h": 21_600, "24h": 86_400, "7d": 604_800, "30d": 2_592_000}
TOP_N = 8  # series on a stacked chart; the rest is "other"

_ROLLUP_SELECT = (
    "SELECT tenant_id, toStartOfMinute(ts) AS minute, event_type, feature, provider, model, prompt_version, status, "
    "category, count(), countIf(unpriced = 1), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), "
    "sum(cache_write_tokens), sum(ifNull(cost_usd, toDecimal128(0, 12))), quantileBFloat16State(0.95)(latency_ms), "
    "now64(3), service_tier, countIf(late = 1), environment, "
    "quantileBFloat16StateIf(0.95)(ifNull(ttft_ms, 0), status = 'ok' AND stream = 1 AND isNotNull(ttft_ms)), "
    "countIf(event_type = 'retrieval' AND status = 'ok' AND results_count = 0) FROM events FINAL WHERE {where} "
    "GROUP BY tenant_id, minute, event_type, feature, provider, model, prompt_version, status, category, service_tier, "
    "environment")


_TIER_SELECT = (
    "SELECT tenant_id, {bucket}(minute) AS b, event_type, feature, provider, model, prompt_version, status, category, "
    "sum(events), sum(unpriced_events), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), "
    "sum(cache_write_tokens), sum(cost_usd), quantileBFloat16MergeState(0.95)(latency_p95), now64(3), service_tier, "
    "sum(late_events), environment, quantileBFloat16MergeState(0.95)(ttft_p95), sum(empty_retrievals) "
    "FROM {source} FINAL WHERE minute >= {{lo:DateTime('UTC')}} AND minute < {{hi:DateTime64(3, 'UTC')}} "
    "AND (tenant_id, {bucket}(minute)) IN "
    "(SELECT DISTINCT tenant_id, {bucket}(m) FROM ({dirty})) "
    "GROUP BY tenant_id, b, event_type, feature, provider, model, prompt_version, status, category, service_tier, "
    "environment")

# top users: each (tenant, day) that received rows, recomputed whole from events FINAL
_USER_SELECT = (
    "SELECT tenant_id, user_id_hash, d, n, failed, usd, row_number() OVER (PARTITION BY tenant_id, d "
    "ORDER BY usd DESC, user_id_hash), {{at:DateTime64(3, 'UTC')}} FROM (SELECT tenant_id, user_id_hash, toDate(ts) AS d, count() AS n, "
    "countIf(status != 'ok') AS failed, sum(ifNull(cost_usd, toDecimal128(0, 12))) AS usd FROM events FINAL "
    "WHERE event_type = 'llm_call' AND user_id_hash != '' AND ts >= {{lo:DateTime('UTC')}} AND ts < {{hi:DateTime64(3, 'UTC')}} "
    "AND (tenant_id, toDate(ts)) IN (SELECT DISTINCT tenant_id, toDate(m) FROM ({dirty})) "
    "GROUP BY tenant_id, user_id_hash, d)")
_USER_TOP = ("SELECT tenant_id, day, user_id_hash, cost_usd, computed_at FROM console_user_day "
             "WHERE day >= {{lo:Date}} AND computed_at = {{at:DateTime64(3, 'UTC')}} AND day_rank <= {{k:UInt64}}{extra}")
# cost per request and per request chain (trace; a request without one is its own chain) of
# each (tenant, day) that received rows: requests with at least one LLM call, the cost the sum of
# their calls' cost (unpriced calls add nothing); a request without an id is its call alone
_REQ_KEY = "if(request_id != '', request_id, toString(event_id))"
_CHAIN_KEY = f"if(trace_id != '', trace_id, {_REQ_KEY})"
REQUEST_TOP_SHARE, REQUEST_TOP_MIN = 0.2, 64  # each tenant-day keeps its costliest fifth, at least 64


def _request_select() -> str:
    costs = (
        "SELECT tenant_id, d, count() AS n, quantileExactState(0.95)(v) AS st, arraySlice(arrayReverseSort("
        f"groupArray(v)), 1, greatest({int(REQUEST_TOP_MIN)}, toUInt64(ceil({float(REQUEST_TOP_SHARE)} * count())))) "
        "AS top FROM (SELECT tenant_id, d, toDecimal64(least(usd, toDecimal128('999999.999999999999', 12)), 12) AS v "
        "FROM (SELECT tenant_id, toDate(ts) AS d, {key} AS k, sum(ifNull(cost_usd, toDecimal128(0, 12))) AS usd "
        "FROM events FINAL WHERE event_type = 'llm_call' AND ts >= {{lo:DateTime('UTC')}} "
        "AND ts < {{hi:DateTime64(3, 'UTC')}} AND (tenant_id, toDate(ts)) IN "
        "(SELECT DISTINCT tenant_id, toDate(m) FROM ({dirty})) GROUP BY tenant_id, d, k)) GROUP BY tenant_id, d")
    return ("SELECT r.tenant_id, r.d, r.n, r.st, c.n, c.st, {{at:DateTime64(3, 'UTC')}}, r.top, c.top FROM ("
            + costs.replace("{key}", _REQ_KEY) + ") AS r INNER JOIN ("
            + costs.replace("{key}", _CHAIN_KEY) + ") AS c ON r.tenant_id = c.tenant_id AND r.d = c.d")


USER_CANDIDATES = 100  # a range's top users are looked for among each tenant-day's 100 costliest
BACKFILL_ROWS = 60_000  # events per step of a rollup build from scratch (one statement at a time)


def refresh_rollup(store: Any, since: datetime) -> int:
    """Recompute the console's rollups for every (tenant, minute) that received rows since
    ``since``: ``console_minute`` from ``events FINAL``, then the hours and days around those
    minutes from the tier below (``console_hour``, ``console_day``: exact sums, merged latency
    digests), and the users' spend of the days around them (``console_user_day``). Run on the
    store's ClickHouse thread. Returns the (tenant, minute) pairs."""
    return _refresh(store, since)[0]


def _refresh(store: Any, since: datetime) -> tuple[int, datetime | None]:
    """``refresh_rollup``: the (tenant, minute) pairs and the earliest of those minutes."""
    dirty = ("SELECT DISTINCT tenant_id, toStartOfMinute(ts) AS m FROM events "
             "WHERE ingested_at >= {since:DateTime64(3, 'UTC')}")
    lo = store.query(f"SELECT min(m), count() FROM ({dirty})", {"since": since})
    if not lo or not lo[0][1]:
        return 0, None
    low = _utc(lo[0][0])
    where = (f"ts >= {{lo:DateTime('UTC')}} AND (tenant_id, toStartOfMinute(ts)) IN "
             f"(SELECT tenant_id, m FROM ({dirty}))")
    for sql, params in _rollup_statements(where, dirty, "", {"since": since}, low):
        store.command(sql, params)
    return int(lo[0][1]), low


def _rollup_statements(where: str, dirty: str, top_extra: str, params: dict[str, Any], low: datetime,
                       high: datetime = datetime(2299, 12, 31, tzinfo=UTC)) -> list[tuple[str, dict[str, Any]]]:
    """The statements that recompute the rollups for the events matching ``where`` (whole
    (tenant, minute) groups) and the hours, days and user-days around the minutes ``dirty``
    lists (all in ``[low, high)``), in order (each tier is built from the one before)."""
    params = {**params, "hi": high}
    out = [("INSERT INTO console_minute " + _ROLLUP_SELECT.format(where=where), {**params, "lo": low})]
    for table, source, bucket, start in (("console_hour", "console_minute", "toStartOfHour", _hour(low)),
                                         ("console_day", "console_hour", "toStartOfDay", _day(low))):
        out.append((f"INSERT INTO {table} " + _TIER_SELECT.format(bucket=bucket, source=source, dirty=dirty),
                    {**params, "lo": start}))
    at = datetime.now(UTC)  # one version for both user tables: the top list is read from this round's rows
    out.append(("INSERT INTO console_user_day " + _USER_SELECT.format(dirty=dirty),
                {**params, "lo": _day(low), "at": at}))
    out.append(("INSERT INTO console_user_top " + _USER_TOP.format(extra=top_extra),
                {**params, "lo": _day(low).date(), "at": at, "k": USER_CANDIDATES}))
    out.append(("INSERT INTO console_request_day " + _request_select().format(dirty=dirty),
                {**params, "lo": _day(low), "at": at}))
    return out


def backfill_steps(store: Any, rows_per_step: int = BACKFILL_ROWS) -> list[list[tuple[str, dict[str, Any]]]]:
    """A rollup build from scratch cut into bounded steps: the stored (tenant, UTC day) pairs,
    newest day first (the charts a user looks at first fill first), grouped into steps of about
    ``rows_per_step`` events of one day; each step a few statements over its tenants and day
    only (primary-key ranges of ``events``). Run each statement as its own call on the
    ClickHouse thread, so that the pages' queries queued meanwhile run between them."""
    pairs = store.query("SELECT toDate(ts) AS d, tenant_id, count() FROM events GROUP BY d, tenant_id "
                        "ORDER BY d DESC, tenant_id", {})
    steps: list[list[tuple[str, dict[str, Any]]]] = []
    batch: list[str] = []
    rows = 0
    day: Any = None

    def flush() -> None:
        if not batch:
            return
        lo = _utc(datetime.combine(day, datetime.min.time()))
        params = {"b_tenants": list(batch), "b_lo": lo, "b_hi": lo + timedelta(days=1)}
        where = ("tenant_id IN {b_tenants:Array(String)} AND ts >= {b_lo:DateTime64(3, 'UTC')} "
                 "AND ts < {b_hi:DateTime64(3, 'UTC')}")
        dirty = f"SELECT DISTINCT tenant_id, toStartOfMinute(ts) AS m FROM events WHERE {where}"
        extra = " AND tenant_id IN {b_tenants:Array(String)} AND day = {lo:Date}"
        steps.append(_rollup_statements(where, dirty, extra, params, lo, lo + timedelta(days=1)))

    for d, tenant, n in pairs:
        if batch and (d != day or rows + int(n) > rows_per_step):
            flush()
            batch, rows = [], 0
        day = d
        batch.append(str(tenant))
        rows += int(n)
    flush()
    return steps


def mark_complete(store: Any, since: datetime) -> None:
    """Every row ingested before ``since`` is in the rollups (the refresh that started then has
    finished): exact spend may read them for (tenant, day) pairs with no row ingested since."""
    store.insert("console_rollup_mark", [[since]], ["complete_since"])


def _hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def _day(t: datetime) -> datetime:
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


async def rollup_loop(store: Any, interval_s: float) -> None:
    """Keep ``console_minute`` fresh: every ``interval_s``, the minutes that received rows since
    the previous round (with a 10 s overlap for rows inserted while it ran). With no completion
    mark (a new or upgraded database), first build the rollups from scratch in bounded steps
    (``backfill``): the pages' queries run between the steps, exact spend reads the events until
    the first mark is written, and the charts fill newest day first."""
    since: datetime | None = None
    try:  # after a restart, go on from where the rollups were complete
        found = await store.run(store.query, "SELECT max(complete_since), count() FROM console_rollup_mark", {})
        if found and found[0][1]:
            since = _utc(found[0][0])
    except Exception as exc:  # noqa: BLE001 - without the mark, rebuild from the start
        log.warning("console_rollup_mark_unreadable", error=str(exc)[:300])
    if since is None:
        since = await backfill(store)
        await compact(store, datetime(1970, 1, 1, tzinfo=UTC), COMPACT_EVERY)
    else:  # a rollup table newer than the mark (an upgrade): built over the stored events, in steps
        try:
            empty = await store.run(store.query, "SELECT (SELECT count() FROM console_request_day) = 0 "
                                    "AND (SELECT count() FROM events) > 0", {})
        except Exception as exc:  # noqa: BLE001 - checked again at the next start
            log.warning("console_rollup_check_failed", error=str(exc)[:300])
            empty = []
        if empty and empty[0][0]:
            await backfill(store, tables=("console_request_day",))
    rounds = 0
    while True:
        started = datetime.now(UTC)
        try:
            _, low = await store.run(_refresh, store, since)
            await store.run(mark_complete, store, since)
            since = started - timedelta(seconds=10)
            if low is not None:
                rounds += 1
                await compact(store, low, rounds)
        except Exception as exc:  # noqa: BLE001 - a failed refresh is retried next round from the same point
            log.warning("console_rollup_failed", error=str(exc)[:300])
        await asyncio.sleep(interval_s)


# the small rollup tables merged into one part per month after every refresh that touched them,
# the larger ones every COMPACT_EVERY such refreshes: FINAL on a partition of one part costs
# nothing (console_day over 30 days: 55 -> 20 ms in bench/console.py's data), and a refresh
# adds parts each round
COMPACT_EACH = ("console_day", "console_request_day")
COMPACT_SOMETIMES = ("console_hour", "console_user_top")
COMPACT_EVERY = 12


async def compact(store: Any, low: datetime, rounds: int) -> None:
    """``OPTIMIZE ... FINAL`` the monthly partitions from ``low``'s month to now of the small
    rollup tables (one statement per call on the ClickHouse thread; skipped on a cluster,
    where the tables are distributed)."""
    ddl = getattr(store, "ddl", None)
    if ddl is not None and ddl.cluster is not None:
        return
    tables = COMPACT_EACH + (COMPACT_SOMETIMES if rounds % COMPACT_EVERY == 0 else ())
    month, now = low.year * 12 + low.month - 1, datetime.now(UTC)
    months = [f"{m // 12}{m % 12 + 1:02d}" for m in range(max(month, now.year * 12 + now.month - 13),
                                                          now.year * 12 + now.month)]
    if low.year < 2000:  # everything (after a build from scratch)
        months = [str(r[0]) for r in await store.run(
            store.query, "SELECT DISTINCT partition_id FROM system.parts WHERE active AND database = "
            "currentDatabase() AND table = 'console_day'", {})]
    for table in tables:
        for part in months:
            try:
                await store.run(store.command, f"OPTIMIZE TABLE {table} PARTITION ID '{part}' FINAL", {})
            except Exception as exc:  # noqa: BLE001 - an optimisation: the next round tries again
                log.warning("console_rollup_compact_failed", table=table, error=str(exc)[:300])


async def backfill(store: Any, *, rows_per_step: int = BACKFILL_ROWS, tables: Sequence[str] = (),
                   after_statement: Callable[[], Any] | None = None) -> datetime:
    """Build the rollups from every stored event, one bounded statement per call on the
    ClickHouse thread (``backfill_steps``). Returns the ingest time from which the incremental
    refresh must go on (rows stored while the build ran are recomputed by it). A failed
    statement is retried after a pause; ``after_statement`` is awaited after each (tests).
    ``tables``: only the statements that fill these rollup tables (default: all)."""
    started = datetime.now(UTC)
    while True:
        try:
            steps = await store.run(backfill_steps, store, rows_per_step)
            break
        except Exception as exc:  # noqa: BLE001 - retried: the rollups are built before the incremental rounds
            log.warning("console_backfill_failed", error=str(exc)[:300])
            await asyncio.sleep(5)
    log.info("console_backfill_started", steps=len(steps))
    for step in steps:
        for sql, params in step:
            if tables and not any(sql.startswith(f"INSERT INTO {t} ") for t in tables):
                continue
            while True:
                try:
                    await store.run(store.command, sql, params)
                    break
                except Exception as exc:  # noqa: BLE001 - the same statement again (each replaces its rows)
                    log.warning("console_backfill_failed", error=str(exc)[:300])
                    await asyncio.sleep(5)
            if after_statement is not None:
                await after_statement()
    log.info("console_backfill_done", steps=len(steps), seconds=round((datetime.now(UTC) - started).total_seconds(), 1))
    return started - timedelta(seconds=10)


def _utc(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True, slots=True)
class Filters:
    """What a page is filtered on. ``tenant_id`` is already the scope the principal may see."""

    tenant_id: str | None = None
    feature: str | None = None
    provider: str | None = None
    model: str | None = None
    prompt_version: str | None = None
    environment: str | None = None
    range: str = "1h"
    end: datetime = field(default_factory=lambda: datetime.now(UTC))
    begin: datetime | None = None  # an explicit start (e.g. a calendar month) instead of the range

    @property
    def seconds(self) -> int:
        return int((self.end - self.begin).total_seconds()) if self.begin is not None else RANGES[self.range]

    @property
    def start(self) -> datetime:
        return self.begin if self.begin is not None else self.end - timedelta(seconds=self.seconds)

    @property
    def step_s(self) -> int:
        """Bucket width: 15-360 points per chart."""
        s = self.seconds
        return 60 if s <= 21_600 else 300 if s <= 86_400 else 3600 if s <= 604_800 else 86_400

    @property
    def table(self) -> str:
        """The rollup tier whose rows are no finer than a bucket (fewest rows to read)."""
        step = self.step_s
        return "console_minute" if step < 3600 else "console_hour" if step < 86_400 else "console_day"

    def where(self, time_col: str = "minute") -> tuple[str, dict[str, Any]]:
        parts = [f"{time_col} >= {{start:DateTime('UTC')}}", f"{time_col} < {{end:DateTime('UTC')}}"]
        params: dict[str, Any] = {"start": self.start, "end": self.end}
        for name in FILTERS:
            value = getattr(self, name)
            if value:
                parts.append(f"{name} = {{f_{name}:String}}")
                params[f"f_{name}"] = value
        return " AND ".join(parts), params

    def as_params(self) -> dict[str, str]:
        """The same filters for ``GET /v1/spend``."""
        out = {name: getattr(self, name) for name in FILTERS if getattr(self, name)}
        return {**out, "from": self.start.isoformat(), "to": self.end.isoformat()}


def _bucket(f: Filters) -> str:
    return f"toUInt32(toStartOfInterval(minute, INTERVAL {f.step_s} SECOND))"


def _axis(f: Filters) -> list[int]:
    step = f.step_s
    first = int(f.start.timestamp()) // step * step
    return list(range(first, int(f.end.timestamp()), step))


def _series(axis: list[int], values: dict[int, float]) -> list[float | None]:
    return [values.get(t) for t in axis]


def health(q: Query, f: Filters) -> dict[str, Any]:
    """Charts for the Health page: each a shared time axis (unix seconds) plus named series."""
    where, params = f.where()
    b = _bucket(f)
    rows = q(f"SELECT {b} AS t, event_type, status, category, sum(events), sum(input_tokens + output_tokens), "
             f"toFloat64(sum(cost_usd)), sum(empty_retrievals) FROM {f.table} FINAL WHERE {where} "
             "GROUP BY t, event_type, status, category ORDER BY t", params)
    lat = q(f"SELECT {b} AS t, quantileBFloat16Merge(0.95)(latency_p95), quantileBFloat16Merge(0.95)(ttft_p95) "
            f"FROM {f.table} FINAL WHERE {where} AND event_type = 'llm_call' GROUP BY t ORDER BY t", params)
    axis = _axis(f)
    per_min = f.step_s / 60
    calls: dict[int, float] = {}
    tools: dict[int, float] = {}
    retrievals: dict[int, float] = {}
    classes: dict[str, dict[int, float]] = {k: {} for k in ERROR_CLASSES}
    tokens: dict[int, float] = {}
    cost: dict[int, float] = {}
    safety: dict[str, dict[int, float]] = {}
    retrieval_failed: dict[int, float] = {}
    outcomes: dict[str, dict[int, float]] = {"successful": {}, "failed": {}}
    for t, etype, status, category, n, toks, usd, empty in rows:
        t, n = int(t), float(n)
        if etype == "llm_call":
            calls[t] = calls.get(t, 0) + n
            side = outcomes["successful" if status == "ok" else "failed"]
            side[t] = side.get(t, 0) + n / per_min
            tokens[t] = tokens.get(t, 0) + float(toks) / per_min
            cost[t] = cost.get(t, 0) + float(usd) / per_min
            klass = {"error": "provider_error", "timeout": "timeout", "rate_limited": "rate_limited"}.get(status)
            if klass:
                classes[klass][t] = classes[klass].get(t, 0) + n
        elif etype == "tool_call":
            tools[t] = tools.get(t, 0) + n
            if status != "ok":
                classes["tool_error"][t] = classes["tool_error"].get(t, 0) + n
        elif etype == "retrieval":
            retrievals[t] = retrievals.get(t, 0) + n
            if status != "ok":
                classes["retrieval_error"][t] = classes["retrieval_error"].get(t, 0) + n
            if empty:  # status ok with results_count 0
                classes["empty_retrieval"][t] = classes["empty_retrieval"].get(t, 0) + float(empty)
            if status != "ok" or empty:  # failed or came back empty
                retrieval_failed[t] = retrieval_failed.get(t, 0) + (n if status != "ok" else float(empty))
        elif etype == "safety_trigger":
            cat = category or "other"
            safety.setdefault(cat, {})[t] = safety.setdefault(cat, {}).get(t, 0) + n / per_min
            if status == "blocked":
                classes["safety_block"][t] = classes["safety_block"].get(t, 0) + n

    def rate(num: dict[int, float], den: dict[int, float]) -> dict[int, float]:
        return {t: 100.0 * num.get(t, 0) / d for t, d in den.items() if d}

    denominators = {"provider_error": calls, "timeout": calls, "rate_limited": calls, "tool_error": tools,
                    "retrieval_error": retrievals, "empty_retrieval": retrievals, "safety_block": calls}
    latency = {int(t): float(v) for t, v, _ in lat if v == v}  # NaN when a bucket has no calls
    ttft = {int(t): float(v) for t, _, v in lat if v == v}  # NaN when a bucket has no streamed call
    return {
        "axis": axis, "step_s": f.step_s,
        "charts": {
            "latency": {"unit": "ms", "title": "p95 latency of LLM calls",
                        "series": {"p95 latency": _series(axis, latency)}},
            "ttft": {"unit": "ms", "title": "p95 time to first token (successful streamed calls)",
                     "series": {"p95 TTFT": _series(axis, ttft)}},
            "outcomes": {"unit": "calls/min", "title": "successful vs failed LLM calls",
                         "series": {k: _series(axis, v) for k, v in outcomes.items()}},
            "errors": {"unit": "%", "title": "error rate by class",
                       "series": {ERROR_CLASSES[k]: _series(axis, rate(v, denominators[k])) for k, v in classes.items()}},
            "tokens": {"unit": "tokens/min", "title": "tokens per minute", "series": {"tokens": _series(axis, tokens)}},
            "cost": {"unit": "USD/min", "title": "cost per minute", "series": {"cost": _series(axis, cost)}},
            "safety": {"unit": "triggers/min", "title": "safety triggers by category",
                       "series": {c: _series(axis, v) for c, v in sorted(safety.items())}},
            "retrieval": {"unit": "%", "title": "retrieval failure rate (errors or empty results)",
                          "series": {"failed or empty": _series(axis, rate(retrieval_failed, retrievals))}},
        },
        "totals": {"llm_calls": int(sum(calls.values())), "tool_calls": int(sum(tools.values())),
                   "retrievals": int(sum(retrievals.values()))},
    }


ERROR_CLASSES = {"provider_error": "provider errors", "timeout": "timeouts", "rate_limited": "rate limits",
                 "tool_error": "tool errors", "retrieval_error": "retrieval errors",
                 "empty_retrieval": "empty retrievals", "safety_block": "safety blocks"}


def markers(q: Query, f: Filters) -> list[dict[str, Any]]:
    """Alerts (first seen) and directive decisions in the range, for drawing on charts."""
    params: dict[str, Any] = {"start": f.start, "end": f.end}
    tenant_a = tenant_b = ""
    if f.tenant_id:
        tenant_a = " AND JSONExtractString(scope, 'tenant_id') = {t:String}"
        tenant_b = " AND tenant_id = {t:String}"
        params["t"] = f.tenant_id
    alerts = q("SELECT toUInt32(first_seen), kind, scope_key, alert_id FROM alerts FINAL "
               "WHERE last_seen >= {start:DateTime64(3, 'UTC')} AND first_seen < {end:DateTime64(3, 'UTC')}"
               f"{tenant_a} ORDER BY first_seen LIMIT 200", params)
    acts = q("SELECT toUInt32(at), decision, scope_key, directive_id FROM actions "
             "WHERE at >= {start:DateTime64(3, 'UTC')} AND at < {end:DateTime64(3, 'UTC')} AND directive_id != '' "
             f"AND decision IN ('applied', 'reverted', 'expired', 'approved'){tenant_b} ORDER BY at LIMIT 200", params)
    return ([{"t": int(t), "type": "alert", "label": f"{k} {s}", "id": i} for t, k, s, i in alerts]
            + [{"t": int(t), "type": "directive", "label": f"directive {d} {s}", "id": i} for t, d, s, i in acts])


def spend_series(q: Query, f: Filters, by: str) -> dict[str, Any]:
    """Spend per bucket stacked by ``model`` or ``feature``: the top ``TOP_N`` and "other"."""
    if by not in ("model", "feature", "provider"):
        raise ValueError("by: one of model, feature, provider")
    where, params = f.where()
    b = _bucket(f)
    rows = q(f"SELECT {b} AS t, {by}, sum(cost_usd) FROM {f.table} FINAL "
             f"WHERE {where} AND event_type = 'llm_call' GROUP BY t, {by} ORDER BY t", params)
    totals: dict[str, Decimal] = {}
    for _, name, usd in rows:
        totals[name] = totals.get(name, Decimal(0)) + Decimal(usd)
    top = [n for n, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_N]]
    series: dict[str, dict[int, float]] = {n or "(none)": {} for n in top}
    for t, name, usd in rows:
        label = (name or "(none)") if name in top else "other"
        s = series.setdefault(label, {})
        s[int(t)] = s.get(int(t), 0.0) + float(usd)
    axis = _axis(f)
    return {"axis": axis, "step_s": f.step_s, "unit": "USD per bucket", "by": by,
            "series": {n: [v.get(t, 0.0) for t in axis] for n, v in series.items()}}


def tokens_split(q: Query, f: Filters, cache_saving: Callable[[str, str, int], Decimal]) -> dict[str, Any]:
    """Tokens split into input (uncached), output, cache read and cache write, per model, with
    what the cache reads saved at each model's prices (``cache_saving(provider, model, tokens)``)."""
    where, params = f.where()
    rows = q("SELECT provider, model, sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), "
             f"sum(cache_write_tokens), sum(events), sum(unpriced_events) FROM {f.table} FINAL "
             f"WHERE {where} AND event_type = 'llm_call' GROUP BY provider, model ORDER BY provider, model", params)
    out = []
    saving = Decimal(0)
    for provider, model, inp, outp, cr, cw, n, unpriced in rows:
        s = cache_saving(provider, model, int(cr))
        saving += s
        out.append({"provider": provider, "model": model, "input_uncached": int(inp) - int(cr) - int(cw),
                    "output": int(outp), "cache_read": int(cr), "cache_write": int(cw), "calls": int(n),
                    "unpriced_calls": int(unpriced), "cache_saving_usd": s})
    return {"models": out, "cache_saving_usd": saving}


SPEND_GROUPS = ("tenant_id", "feature", "provider", "model", "prompt_version", "service_tier", "environment", "day",
                "month")
_SPEND_BUCKETS = {"day": "toDate({t})", "month": "toStartOfMonth({t})"}


@dataclass(frozen=True, slots=True)
class SpendWindow:
    """One spend answer wanted from ``spend_windows``: ``[start, end)`` grouped by ``groups``;
    ``filtered``: with the non-tenant filters of the page (feature, model, ...), else the tenant
    scope only (the forecast's month)."""

    start: datetime
    end: datetime
    groups: tuple[str, ...]
    filtered: bool = True


def spend_rows(q: Query, f: Filters, groups: Sequence[str], *, start: datetime | None = None,
               end: datetime | None = None) -> list[dict[str, Any]]:
    """Spend as ``GET /v1/spend`` computes it (llm_call, each event once, exact decimals, rows
    ordered by the groups) for one window: ``spend_windows`` with one window."""
    return spend_windows(q, f, [SpendWindow(start or f.start, end or f.end, tuple(groups))])[0]


def spend_windows(q: Query, f: Filters, windows: Sequence[SpendWindow]) -> list[list[dict[str, Any]]]:
    """Spend for several windows at once (a page's period, the one before it, the month for the
    forecast) in at most three queries, whatever the number of windows: the rollups' completion
    mark and the (tenant, day) pairs that received rows since then (one query); every whole UTC
    day of the windows' span from ``console_day`` except those pairs (one); the rest (days cut by
    a window's edge, pairs still receiving rows) from ``events FINAL``, labelled by the segment
    between window edges they fall in (one). Each window then adds up the rows inside it as
    Decimals, so every answer equals ``GET /v1/spend``'s to the last digit."""
    for w in windows:
        for g in w.groups:
            if g not in SPEND_GROUPS:
                raise ValueError(f"group_by: one of {', '.join(SPEND_GROUPS)}")
    if not windows:
        return []
    lo, hi = min(w.start for w in windows), max(w.end for w in windows)
    bounds = sorted({t for w in windows for t in (w.start, w.end)})
    union = [g for g in SPEND_GROUPS if any(g in w.groups for w in windows)]
    params: dict[str, Any] = {"lo": lo, "hi": hi}
    scope = ""
    if f.tenant_id:
        scope = " AND tenant_id = {f_tenant_id:String}"
        params["f_tenant_id"] = f.tenant_id
    conds = []
    for name in FILTERS:
        value = getattr(f, name)
        if value and name != "tenant_id":
            conds.append(f"{name} = {{f_{name}:String}}")
            params[f"f_{name}"] = value
    cond = " AND ".join(conds) or "1"
    # whole days inside [lo, hi) that no window edge cuts: the rollup may answer them
    first = _day(lo) if _day(lo) == lo else _day(lo) + timedelta(days=1)
    cut = {_day(b) for b in bounds if _day(b) != b}
    whole = []
    d = first
    while d + timedelta(days=1) <= hi:
        if d not in cut:
            whole.append(d)
        d += timedelta(days=1)
    params["whole"] = [x.date() for x in whole]
    if whole:
        params["d0"], params["d1"] = whole[0], whole[-1] + timedelta(days=1)
    use_rollup = False
    dirty: list[tuple[str, Any]] = []
    if whole:
        mark = q("SELECT count(), max(complete_since), (SELECT groupUniqArray((tenant_id, toDate(ts))) FROM events "
                 "WHERE ingested_at >= (SELECT if(count() = 0, toDateTime64('2299-12-31 00:00:00', 3, 'UTC'), "
                 "max(complete_since)) FROM console_rollup_mark) AND ts >= {d0:DateTime64(3, 'UTC')} "
                 f"AND ts < {{d1:DateTime64(3, 'UTC')}}{scope}) FROM console_rollup_mark",
                 params)
        use_rollup = bool(mark and mark[0][0])
        if use_rollup:
            dirty = [(str(t), dd) for t, dd in mark[0][2]]
    params["dirty"] = dirty
    # per row: the union of the groups' values, its day, and (raw rows) its segment between edges
    acc: list[dict[tuple[str, ...], list[Any]]] = [{} for _ in windows]
    idx = [[union.index(g) for g in w.groups] for w in windows]

    def add(rows: Sequence[Sequence[Any]], raw: bool) -> None:
        n = len(union)
        for row in rows:
            values = [str(v) for v in row[:n]]
            if raw:
                seg = int(row[n])
                a, b = bounds[seg - 1], bounds[seg]
            else:
                a = _utc(datetime.combine(row[n], datetime.min.time()))
                b = a + timedelta(days=1)
            fe, fc, fu, fl, ue, uc, uu, ul = row[n + 1:]
            for i, w in enumerate(windows):
                if not (w.start <= a and b <= w.end):
                    continue
                e, c, u, late = (fe, fc, fu, fl) if w.filtered else (ue, uc, uu, ul)
                if not e:
                    continue
                key = tuple(values[j] for j in idx[i])
                slot = acc[i].setdefault(key, [0, Decimal(0), 0, 0])
                slot[0] += int(e)
                slot[1] += Decimal(str(c))
                slot[2] += int(u)
                slot[3] += int(late)

    def cols(t: str) -> str:
        return "".join((f"toString({_SPEND_BUCKETS[g].format(t=t)})" if g in _SPEND_BUCKETS else g) + ", "
                       for g in union)

    if use_rollup:
        rsel = cols("minute")
        add(q(f"SELECT {rsel}toDate(minute) AS d, sumIf(events, {cond}), sumIf(cost_usd, {cond}), "
              f"sumIf(unpriced_events, {cond}), sumIf(late_events, {cond}), sum(events), sum(cost_usd), "
              "sum(unpriced_events), sum(late_events) FROM console_day FINAL WHERE event_type = 'llm_call' "
              "AND minute >= {d0:DateTime('UTC')} AND minute < {d1:DateTime('UTC')} AND toDate(minute) IN {whole:Array(Date)} "
              f"AND (tenant_id, toDate(minute)) NOT IN {{dirty:Array(Tuple(String, Date))}}{scope} "
              f"GROUP BY {rsel}d", params), raw=False)
        raw_where = ("(toDate(ts) NOT IN {whole:Array(Date)} OR (tenant_id, toDate(ts)) IN "
                     "{dirty:Array(Tuple(String, Date))})") if dirty else "toDate(ts) NOT IN {whole:Array(Date)}"
    else:
        raw_where = "1"
    if not use_rollup or dirty or len(whole) * 86_400 < (hi - lo).total_seconds():
        sel = cols("ts")
        params["bounds"] = bounds
        zero = "toDecimal128(0, 12)"
        add(q(f"SELECT {sel}arrayCount(x -> x <= ts, {{bounds:Array(DateTime64(3, 'UTC'))}}) AS seg, "
              f"countIf({cond}), sumIf(ifNull(cost_usd, {zero}), {cond}), countIf(unpriced = 1 AND {cond}), "
              f"countIf(late = 1 AND {cond}), count(), sum(ifNull(cost_usd, {zero})), countIf(unpriced = 1), "
              "countIf(late = 1) FROM events FINAL WHERE event_type = 'llm_call' AND ts >= {lo:DateTime64(3, 'UTC')} "
              f"AND ts < {{hi:DateTime64(3, 'UTC')}} AND {raw_where}{scope} GROUP BY {sel}seg "
              "SETTINGS do_not_merge_across_partitions_select_final = 1", params), raw=True)
    out = []
    for i, w in enumerate(windows):
        rows = []
        for key in sorted(acc[i]):
            events, cost, unpriced, late = acc[i][key]
            rows.append({**dict(zip(w.groups, key, strict=True)), "events": events, "cost_usd": _dec_text(cost),
                         "unpriced_events": unpriced, "late_events": late})
        out.append(rows)
    return out


def spend_csv(rows: Sequence[dict[str, Any]], groups: Sequence[str]) -> str:
    """The CSV ``GET /v1/spend`` answers with ``Accept: text/csv`` (same header, order, format)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    names = [*groups, "events", "cost_usd", "unpriced_events", "late_events"]
    writer.writerow(names)
    for row in rows:
        writer.writerow([row[n] for n in names])
    return buf.getvalue()


def top_movers(rows_now: Sequence[dict[str, Any]], rows_before: Sequence[dict[str, Any]], key: str,
               n: int = 5) -> list[dict[str, Any]]:
    """The groups whose spend changed most against the previous period (pure)."""
    now = {str(r[key]): Decimal(r["cost_usd"]) for r in rows_now}
    before = {str(r[key]): Decimal(r["cost_usd"]) for r in rows_before}
    moves = []
    for name in set(now) | set(before):
        a, b = before.get(name, Decimal(0)), now.get(name, Decimal(0))
        pct = None if a == 0 else ((b - a) * 100 / a).quantize(Decimal("0.1"))
        moves.append({"name": name, "before_usd": a, "now_usd": b, "delta_usd": b - a, "pct": pct})
    moves.sort(key=lambda m: (-abs(m["delta_usd"]), m["name"]))
    return moves[:n]


def top_users(q: Query, f: Filters, n: int = 10) -> dict[str, Any]:
    """The ``n`` users (``user_id_hash`` of their LLM calls) that cost most in the UTC days the
    range touches, always as top-N (there may be millions of users): candidates are ranked by
    what they cost on the days they were among their tenant's ``USER_CANDIDATES`` costliest
    (``console_user_top``, a small table), then the shown calls and cost are each candidate's
    exact sums over all those days (``console_user_day`` by primary key, each event once).
    Within the tenant scope; the other filters do not apply."""
    first, last = f.start.date(), (f.end - timedelta(microseconds=1)).date()
    params: dict[str, Any] = {"d0": first, "d1": last, "n": n, "c": 3 * n}
    tenant = ""
    if f.tenant_id:
        tenant = " AND tenant_id = {t:String}"
        params["t"] = f.tenant_id
    days = "day >= {d0:Date} AND day <= {d1:Date}" + tenant
    found = q(f"SELECT tenant_id, user_id_hash FROM console_user_top FINAL WHERE {days} "
              "GROUP BY tenant_id, user_id_hash ORDER BY sum(cost_usd) DESC, tenant_id, user_id_hash "
              "LIMIT {c:UInt32}", params)
    rows: Sequence[Sequence[Any]] = []
    if found:
        params["cands"] = [(str(t), str(u)) for t, u in found]
        rows = q(f"SELECT tenant_id, user_id_hash, sum(events), sum(failed_events), sum(cost_usd) FROM console_user_day "
                 f"FINAL WHERE {days} AND (tenant_id, user_id_hash) IN {{cands:Array(Tuple(String, String))}} "
                 "GROUP BY tenant_id, user_id_hash ORDER BY sum(cost_usd) DESC, tenant_id, user_id_hash "
                 "LIMIT {n:UInt32}", params)
    users = [{"tenant_id": str(t), "user_id_hash": str(u), "calls": int(c), "failed_calls": int(x),
              "cost_usd": _dec_text(usd)} for t, u, c, x, usd in rows]
    return {"first_day": first.isoformat(), "last_day": last.isoformat(), "users": users,
            "candidates": USER_CANDIDATES}


def request_costs(q: Query, f: Filters) -> dict[str, Any]:
    """p95 cost per request and per request chain over the UTC days the range touches, within
    the tenant scope (the other filters do not apply): exact Decimals, as ``quantileExact``
    over every request's cost (the element at floor(0.95 n) of the sorted costs). Read from
    each tenant-day's costliest requests (``request_top``) when the answer provably lies among
    them: the r-th costliest of their union, r = n - floor(0.95 n), is the answer when every
    tenant-day whose list is cut has its cheapest kept cost at or below it (no cost left out can
    be above it); otherwise merged from the full quantile states. A request that spans UTC
    midnight counts as one request on each day."""
    first, last = f.start.date(), (f.end - timedelta(microseconds=1)).date()
    params: dict[str, Any] = {"d0": first, "d1": last}
    tenant = ""
    if f.tenant_id:
        tenant = " AND tenant_id = {t:String}"
        params["t"] = f.tenant_id
    where = f"FROM console_request_day FINAL WHERE day >= {{d0:Date}} AND day <= {{d1:Date}}{tenant}"
    parts = []
    for kind, n in (("request", "requests"), ("chain", "chains")):
        parts.append(
            f"sum({n}) AS n_{kind}, n_{kind} - toUInt64(floor(0.95 * n_{kind})) AS r_{kind}, "
            f"arrayReverseSort(arrayFlatten(groupArray({kind}_top))) AS u_{kind}, "
            f"if(n_{kind} > 0 AND length(u_{kind}) >= r_{kind}, u_{kind}[r_{kind}], NULL) AS c_{kind}, "
            f"isNotNull(c_{kind}) AND (countIf(length({kind}_top) < {n}) = 0 "
            f"OR maxIf(arrayMin({kind}_top), length({kind}_top) < {n}) <= c_{kind}) AS ok_{kind}")
    rows = q(f"SELECT n_request, c_request, ok_request, n_chain, c_chain, ok_chain FROM (SELECT {', '.join(parts)} "
             f"{where})", params)
    n, p95, ok, chains, chain_p95, chain_ok = rows[0] if rows else (0, None, True, 0, None, True)
    if (n and not ok) or (chains and not chain_ok):  # the answer may lie below a cut list: every cost
        full = q(f"SELECT quantileExactMerge(0.95)(request_cost), quantileExactMerge(0.95)(chain_cost) {where}",
                 params)
        p95, chain_p95 = full[0]
    return {"first_day": first.isoformat(), "last_day": last.isoformat(), "requests": int(n or 0),
            "request_p95_usd": _dec_text(p95) if n else None, "chains": int(chains or 0),
            "chain_p95_usd": _dec_text(chain_p95) if chains else None}


def request_chain(q: Query, ident: str, tenant_id: str | None, limit: int = 500) -> list[dict[str, Any]]:
    """Every event of one request or trace (by ``request_id`` or ``trace_id``), oldest first;
    ids, fields, tokens, cost, latency and status, never text."""
    params: dict[str, Any] = {"id": ident, "limit": limit}
    tenant = ""
    if tenant_id is not None:
        tenant = " AND tenant_id = {t:String}"
        params["t"] = tenant_id
    cols = ["event_id", "ts", "event_type", "tenant_id", "feature", "service", "request_id", "trace_id", "provider",
            "model", "tool_name", "category", "index_name", "status", "input_tokens", "output_tokens",
            "cache_read_tokens", "cache_write_tokens", "latency_ms", "cost_usd", "unpriced"]
    # One branch per column, so each uses its bloom-filter index (an OR across two indexes prunes
    # nothing, and FINAL reads every granule); each event once: its newest insert, as FINAL keeps.
    one = f"SELECT {', '.join(cols)}, ingested_at FROM events WHERE @COND@{tenant}"
    rows = q(f"SELECT {', '.join(cols)} FROM (SELECT * FROM ({one.replace('@COND@', 'request_id = {id:String}')} "
             f"UNION ALL {one.replace('@COND@', 'trace_id = {id:String} AND request_id != {id:String}')}) "
             "ORDER BY ingested_at DESC LIMIT 1 BY event_id) ORDER BY ts, event_id LIMIT {limit:UInt32}", params)
    out = []
    for row in rows:
        item = dict(zip(cols, row, strict=True))
        item["event_id"] = str(item["event_id"])
        item["ts"] = (_utc(item["ts"])).isoformat()
        item["cost_usd"] = None if item["cost_usd"] is None else _dec_text(item["cost_usd"])
        item["latency_ms"] = float(item["latency_ms"])
        out.append(item)
    return out


def sample_events(q: Query, ids: Sequence[str], tenant_id: str | None) -> list[dict[str, Any]]:
    """An alert's sample events: ids and fields, never text."""
    if not ids:
        return []
    params: dict[str, Any] = {"ids": list(ids)}
    tenant = ""
    if tenant_id is not None:
        tenant = " AND tenant_id = {t:String}"
        params["t"] = tenant_id
    cols = ["event_id", "ts", "event_type", "tenant_id", "feature", "request_id", "provider", "model", "tool_name",
            "status", "input_tokens", "output_tokens", "latency_ms", "cost_usd"]
    rows = q(f"SELECT {', '.join(cols)} FROM events FINAL WHERE event_id IN {{ids:Array(UUID)}}{tenant} ORDER BY ts",
             params)
    out = []
    for row in rows:
        item = dict(zip(cols, row, strict=True))
        item["event_id"] = str(item["event_id"])
        item["ts"] = _utc(item["ts"]).isoformat()
        item["cost_usd"] = None if item["cost_usd"] is None else _dec_text(item["cost_usd"])
        out.append(item)
    return out


def _dec_text(value: Any) -> str:
    text = format(Decimal(str(value)), "f")
    return (text.rstrip("0").rstrip(".") if "." in text else text) or "0"


def alert_series(q: Query, scope: dict[str, Any], metric: str, first_seen: datetime, last_seen: datetime,
                 window_s: int) -> dict[str, Any]:
    """The series an alert's detector watched, per minute, from 30 minutes before the alert to
    10 after: cost, tokens, calls or error share of its scope (rollup dimensions only)."""
    start = first_seen - timedelta(minutes=30)
    end = last_seen + timedelta(minutes=10)
    parts = ["minute >= {start:DateTime('UTC')}", "minute < {end:DateTime('UTC')}"]
    params: dict[str, Any] = {"start": start, "end": end}
    for name in FILTERS:
        if scope.get(name):
            parts.append(f"{name} = {{s_{name}:String}}")
            params[f"s_{name}"] = scope[name]
    m = metric.lower()
    if "cost" in m or "usd" in m:
        expr, unit, etype = "toFloat64(sum(cost_usd))", "USD/min", "llm_call"
    elif "token" in m:
        expr, unit, etype = "toFloat64(sum(input_tokens + output_tokens))", "tokens/min", "llm_call"
    elif scope.get("category"):
        parts.append("category = {s_category:String}")
        params["s_category"] = scope["category"]
        expr, unit, etype = "toFloat64(sum(events))", "triggers/min", "safety_trigger"
    elif "latency" in m:
        expr, unit, etype = "quantileBFloat16Merge(0.95)(latency_p95)", "ms (p95)", "llm_call"
    elif "error" in m or "fail" in m:
        expr, unit, etype = "100 * sumIf(events, status != 'ok') / sum(events)", "% failed", ""
    else:
        expr, unit, etype = "toFloat64(sum(events))", "events/min", ""
    if etype:
        parts.append(f"event_type = '{etype}'")
    rows = q(f"SELECT toUInt32(minute) AS t, {expr} FROM console_minute FINAL WHERE {' AND '.join(parts)} "
             "GROUP BY t ORDER BY t", params)
    first = int(start.timestamp()) // 60 * 60
    axis = list(range(first, int(end.timestamp()), 60))
    values = {int(t): float(v) for t, v in rows if v == v}
    return {"axis": axis, "unit": unit, "series": {metric: [values.get(t) for t in axis]},
            "window": [int((first_seen - timedelta(seconds=window_s)).timestamp()) // 60 * 60, int(last_seen.timestamp())],
            "window_s": window_s}


def suggestions(q: Query, column: str, tenant_id: str | None, prefix: str, limit: int = 20) -> list[str]:
    """Values for a filter box from the last 30 days of the rollup, within the tenant scope."""
    if column not in FILTERS:
        raise ValueError("column: one of " + ", ".join(FILTERS))
    params: dict[str, Any] = {"p": prefix, "limit": limit, "since": datetime.now(UTC) - timedelta(days=30)}
    tenant = ""
    if tenant_id is not None:
        tenant = " AND tenant_id = {t:String}"
        params["t"] = tenant_id
    rows = q(f"SELECT DISTINCT {column} FROM console_day WHERE minute >= {{since:DateTime('UTC')}} "
             f"AND startsWith({column}, {{p:String}}) AND {column} != ''{tenant} ORDER BY {column} "
             "LIMIT {limit:UInt32}", params)
    return [str(r[0]) for r in rows]


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=lambda v: format(v, "f") if isinstance(v, Decimal) else str(v))
