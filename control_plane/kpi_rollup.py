"""The KPI report's daily rollups: ``kpi_day`` (llm calls per tenant, feature, model and UTC
day, with p95 states) and ``slo_day`` (each SLO's eligible and bad calls per tenant, feature and
day). A month of 10M events is a few thousand rollup rows, which is what lets the report answer
in about a second.

Both are recomputed from ``events FINAL`` for the days that received rows since the last pass
(``ingested_at``), like ``spend_minute``: a replayed batch or a re-priced event replaces its
day's row instead of adding to it. ``HOUR_SELECT`` is the one definition of a ``kpi_day`` row;
the KPI queries run the same select over raw events for the partial days at a period's edges.
p95s are ClickHouse's ``quantileBFloat16`` (a histogram of values rounded to bfloat16: within
0.4 % of the exact value, and the same whether merged from the rollup or computed from events).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flyball.schemas.events import CallStatus

from .slo import SLOs
from .slo_sql import sli_conditions
from .state import utc

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
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DIRTY = ("SELECT DISTINCT toDate(ts) FROM events WHERE ingested_at >= {since:DateTime64(3, 'UTC')} "
         "AND event_type = 'llm_call'")


def kpi_refresh_sql() -> str:
    return (f"INSERT INTO kpi_day SELECT {HOUR_SELECT}, now64(3) FROM events FINAL "
            f"WHERE event_type = 'llm_call' AND toDate(ts) IN ({DIRTY}) {HOUR_GROUP} "
            "SETTINGS do_not_merge_across_partitions_select_final = 1")


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
    """Keeps ``kpi_day`` and ``slo_day`` current. ``refresh`` is synchronous and runs its
    statements through ``query``/``command`` callables (the store's, on its thread)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._since: datetime | None = None
        self._slo_versions: tuple[tuple[str, int], ...] | None = None

    def _q(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self.store.call(self.store.query, sql, params or {})  # type: ignore[no-any-return]

    def _c(self, sql: str, params: dict[str, Any]) -> None:
        self.store.call(self.store.command, sql, params)

    def refresh(self, slos: SLOs) -> None:
        started = datetime.now(UTC)
        since = self._since
        if since is None:
            rows = self._q("SELECT count(), max(computed_at) FROM kpi_day")
            since = utc(rows[0][1]) - timedelta(seconds=10) if rows and rows[0][0] else EPOCH  # type: ignore[operator]
        self._c(kpi_refresh_sql(), {"since": since})
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
        if dirty is not None:
            sql, params = dirty
            self._c(sql, params | {"since": since})
        self._slo_versions = versions
        self._since = started - timedelta(seconds=10)
