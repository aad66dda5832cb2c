"""The KPI report's figures: one ClickHouse query per figure family, and pure assembly.

Each ``*_sql`` function returns the query behind a figure, served from the rollups of
``kpi_rollup.py``; ``docs/KPIS.md`` documents next to each figure the query that gives the same
number straight from the events (the tests run both). ``kpis`` runs them through a ``query``
callable (the store's, on its thread) and assembles the answer. Money is Decimal throughout and
leaves as exact decimal text; ratios are floats rounded to 6 places. Every event counts once:
the rollups are computed from ``events FINAL`` or keyed by event id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import orjson

from flyball.stream_processors.budgets import Period
from flyball.stream_processors.forecast import MICRO, forecast
from flyball.stream_processors.pricing import PriceBook

from .kpi_rollup import FAILURE_CLASSES, HOUR_GROUP, HOUR_SELECT, KPI_COLUMNS, SAFETY_GROUP, SAFETY_SELECT, slo_select
from .slo import SLO, SLOs, budget_consumed

Query = Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]
GROUP_BY = ("feature", "tenant_id")
MITIGATIONS = ("applied", "approved")  # decisions that put a directive in force
PER_OUTCOME = Decimal("0.000000000001")
FINAL = " SETTINGS do_not_merge_across_partitions_select_final = 1"
ALL = "all"


@dataclass(frozen=True, slots=True)
class Span:
    start: datetime
    end: datetime
    group_by: str | None = None
    tenant_id: str | None = None  # a tenant-bound key's tenant (or a filter)

    def where(self, *extra: str, ts: str = "ts") -> tuple[str, dict[str, Any]]:
        parts = [f"{ts} >= {{start:DateTime64(3, 'UTC')}}", f"{ts} < {{end:DateTime64(3, 'UTC')}}", *extra]
        params: dict[str, Any] = {"start": self.start, "end": self.end}
        if self.tenant_id is not None:
            parts.append("tenant_id = {tenant:String}")
            params["tenant"] = self.tenant_id
        return " AND ".join(parts), params

    @property
    def g(self) -> str:
        return self.group_by if self.group_by else f"'{ALL}'"


# ------------------------------------------------------------------ queries
def _day_down(t: datetime) -> datetime:
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


def _day_up(t: datetime) -> datetime:
    floor = _day_down(t)
    return floor if floor == t else floor + timedelta(days=1)


def day_source(p: Span, table: str, columns: str, select: str, group: str, event_type: str) -> tuple[str, dict[str, Any]]:
    """Rows of a daily rollup for the period: the rollup for its whole UTC days, and the same rows
    computed from ``events FINAL`` (``select ... group``) for the partial days at its edges."""
    lo, hi = _day_up(p.start), _day_down(p.end)
    params: dict[str, Any] = {"start": p.start, "end": p.end, "lo": lo, "hi": hi}
    tenant = ""
    if p.tenant_id is not None:
        tenant = " AND tenant_id = {tenant:String}"
        params["tenant"] = p.tenant_id
    if lo >= hi:  # no whole day inside: events only
        return (f"(SELECT {select} FROM events FINAL WHERE event_type = '{event_type}' AND "
                f"ts >= {{start:DateTime64(3, 'UTC')}} AND ts < {{end:DateTime64(3, 'UTC')}}{tenant} {group})",
                params)
    arms = [f"SELECT {columns} FROM {table} FINAL WHERE day >= toDate({{lo:DateTime('UTC')}}) "
            f"AND day < toDate({{hi:DateTime('UTC')}}){tenant}"]
    edges = []
    if p.start < lo:
        edges.append("(ts >= {start:DateTime64(3, 'UTC')} AND ts < {lo:DateTime64(3, 'UTC')})")
    if hi < p.end:
        edges.append("(ts >= {hi:DateTime64(3, 'UTC')} AND ts < {end:DateTime64(3, 'UTC')})")
    if edges:
        arms.append(f"SELECT {select} FROM events FINAL WHERE event_type = '{event_type}' "
                    f"AND ({' OR '.join(edges)}){tenant} {group}")
    return "(" + " UNION ALL ".join(arms) + ")", params


def llm_source(p: Span) -> tuple[str, dict[str, Any]]:
    """``kpi_day`` rows for the period (whole days from the rollup, edges from events)."""
    return day_source(p, "kpi_day", KPI_COLUMNS, HOUR_SELECT, HOUR_GROUP, "llm_call")


def calls_sql(p: Span, *, with_total: bool = False) -> tuple[str, dict[str, Any]]:
    """Calls, failures by class, spend, cache tokens, p95 latency (successful calls) and p95 TTFT
    (successful streamed calls that reported one), per group, from the daily rollup.
    ``with_total``: one more row, the whole period (a last column says which row it is), so
    that its p95s come from the same read (the states merged once more)."""
    source, params = llm_source(p)
    classes = ", ".join(f"sum({c})" for c in FAILURE_CLASSES)
    total, group = (", grouping(g)", "GROUPING SETS ((g), ())") if with_total else ("", "g")
    sql = (f"SELECT {p.g} AS g, sum(calls), {classes}, toString(sum(cost_usd)), sum(unpriced), sum(input_tokens), "
           "sum(cache_read_tokens), sum(ok), quantileBFloat16Merge(0.95)(latency_ok), sum(streamed_ok), "
           f"quantileBFloat16Merge(0.95)(ttft_ok){total} FROM {source} GROUP BY {group} ORDER BY g")
    return sql, params


def cache_sql(p: Span) -> tuple[str, dict[str, Any]]:
    """Tokens read from a provider's prompt cache per model (for the dollars saved)."""
    source, params = llm_source(p)
    return (f"SELECT {p.g} AS g, provider, model, sum(cache_read_tokens) AS n FROM {source} "
            "GROUP BY g, provider, model HAVING n > 0 ORDER BY g, provider, model", params)


def safety_sql(p: Span) -> tuple[str, dict[str, Any]]:
    """Safety triggers per category, from ``safety_day`` (edges from events)."""
    source, params = day_source(p, "safety_day", "day, tenant_id, feature, category, triggers", SAFETY_SELECT,
                                SAFETY_GROUP, "safety_trigger")
    return (f"SELECT {p.g} AS g, category, sum(triggers) FROM {source} GROUP BY g, category ORDER BY g, category",
            params)


def outcomes_sql(p: Span) -> tuple[str, dict[str, Any]]:
    """Per group: ok calls whose request has an explicit outcome or negative feedback in the
    period (they are not counted as successes by themselves), and requests whose latest explicit
    outcome in the period is success (in the group of the event that carried it). Successful
    outcomes = ok calls (``calls_sql``) - the first + the second. From ``kpi_flag`` (negative
    feedback and explicit outcomes) and ``kpi_flagged_call`` (the calls of the requests they
    name): the same figures as the events query in docs/KPIS.md, without reading every call.
    No ``FINAL``: a row stored twice is the same event twice, so sets and ``argMax`` are unchanged
    and the count is of distinct event ids."""
    where, params = p.where()
    targets = (f"SELECT tenant_id, toUUIDOrZero(target_event_id) FROM kpi_flag WHERE {where} "
               "AND negative = 1 AND target_event_id != ''")
    negative = (f"SELECT request FROM kpi_flag WHERE {where} AND negative = 1 AND has_request = 1 "
                f"UNION ALL SELECT request FROM kpi_flagged_call WHERE {where} AND (tenant_id, event_id) IN ({targets})")
    explicit = (f"SELECT request, argMax(outcome, (ts, event_id)) AS last_outcome, argMax({p.g}, (ts, event_id)) AS g "
                f"FROM kpi_flag WHERE {where} AND outcome != '' GROUP BY request")
    sql = (f"WITH explicit AS ({explicit}) SELECT g, sum(flagged_ok), sum(explicit_ok) FROM ("
           f"SELECT {p.g} AS g, uniqExact(event_id) AS flagged_ok, 0 AS explicit_ok FROM kpi_flagged_call WHERE {where} "
           f"AND ok = 1 AND request IN ({negative} UNION ALL SELECT request FROM explicit) GROUP BY g "
           "UNION ALL SELECT g, 0, countIf(last_outcome = 'success') FROM explicit GROUP BY g"
           ") GROUP BY g ORDER BY g")
    return sql, params


def slo_sql(p: Span, slos: SLOs) -> tuple[str, dict[str, Any]]:
    """Eligible and bad calls of every SLO in force per (feature, tenant): ``slo_day`` for the
    whole days, the same rows from events for the partial days at the edges."""
    lo, hi = _day_up(p.start), _day_down(p.end)
    params: dict[str, Any] = {"start": p.start, "end": p.end, "lo": lo, "hi": hi,
                              "pairs": [(s.slo_id, s.version) for s in slos.slos]}
    tenant = ""
    if p.tenant_id is not None:
        tenant = " AND tenant_id = {tenant:String}"
        params["tenant"] = p.tenant_id
    arms = []
    edges = []
    if lo < hi:
        arms.append("SELECT slo_id, feature, tenant_id, total, bad FROM slo_day FINAL WHERE "
                    "(slo_id, slo_version) IN {pairs:Array(Tuple(String, UInt32))} "
                    f"AND day >= toDate({{lo:DateTime('UTC')}}) AND day < toDate({{hi:DateTime('UTC')}}){tenant}")
        if p.start < lo:
            edges.append("(ts >= {start:DateTime64(3, 'UTC')} AND ts < {lo:DateTime64(3, 'UTC')})")
        if hi < p.end:
            edges.append("(ts >= {hi:DateTime64(3, 'UTC')} AND ts < {end:DateTime64(3, 'UTC')})")
    else:
        edges.append("(ts >= {start:DateTime64(3, 'UTC')} AND ts < {end:DateTime64(3, 'UTC')})")
    if edges:
        select, extra = slo_select(slos, " OR ".join(edges) + tenant)
        params |= extra
        arms.append(f"SELECT slo_id, feature, tenant_id, total, bad FROM ({select})")
    sql = (f"SELECT slo_id, feature, tenant_id, sum(total), sum(bad) FROM ({' UNION ALL '.join(arms)}) "
           "GROUP BY slo_id, feature, tenant_id ORDER BY slo_id, feature, tenant_id")
    return sql, params


def daily_spend_sql(p: Span, since: datetime) -> tuple[str, dict[str, Any]]:
    """Spend per group and UTC day in [since, start): the history the forecast is made from."""
    source, params = llm_source(Span(since, p.start, p.group_by, p.tenant_id))
    return (f"SELECT {p.g} AS g, day, toString(sum(cost_usd)) FROM {source} "
            "GROUP BY g, day ORDER BY g, day", params)


def alerts_sql(p: Span) -> tuple[str, dict[str, Any]]:
    """The latest version of every alert that overlaps the period (opened in it: filtered in Python
    on ``opened_at``, else ``first_seen``)."""
    params: dict[str, Any] = {"start": p.start, "end": p.end}
    where = "last_seen >= {start:DateTime64(3, 'UTC')} AND first_seen < {end:DateTime64(3, 'UTC')}"
    if p.tenant_id is not None:
        where += " AND JSONExtractString(scope, 'tenant_id') = {tenant:String}"
        params["tenant"] = p.tenant_id
    return f"SELECT body FROM alerts FINAL WHERE {where} ORDER BY first_seen, alert_id", params


def mitigations_sql(alert_ids: Sequence[str]) -> tuple[str, dict[str, Any]]:
    return ("SELECT alert_id, min(at) FROM actions WHERE alert_id IN {ids:Array(String)} "
            "AND decision IN {decisions:Array(String)} GROUP BY alert_id",
            {"ids": list(alert_ids), "decisions": list(MITIGATIONS)})


# ------------------------------------------------------------------ assembly
def ratio(num: float | int | Decimal, den: float | int | Decimal) -> float | None:
    return round(float(num) / float(den), 6) if den else None


def money(d: Decimal) -> str:
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass
class Group:
    key: str
    calls: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    cost: Decimal = Decimal(0)
    unpriced_calls: int = 0
    input_tokens: int = 0
    cache_read_tokens: int = 0
    ok_calls: int = 0
    p95_latency_ms: float | None = None
    streamed_ok: int = 0
    p95_ttft_ms: float | None = None
    saved: Decimal = Decimal(0)
    unpriced_cache_tokens: int = 0
    safety: dict[str, int] = field(default_factory=dict)
    successes: int = 0
    forecast: Decimal | None = None
    slo: list[dict[str, Any]] = field(default_factory=list)
    incidents: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        per_outcome = (self.cost / self.successes).quantize(PER_OUTCOME, ROUND_HALF_EVEN) if self.successes else None
        variance = self.cost - self.forecast if self.forecast is not None else None
        failed = sum(self.failures.values())
        return {
            "key": self.key, "calls": self.calls,
            "error_rate": ratio(failed, self.calls),
            "errors": {c: {"calls": n, "rate": ratio(n, self.calls)} for c, n in sorted(self.failures.items()) if n},
            "p95_latency_ms": self.p95_latency_ms, "p95_ttft_ms": self.p95_ttft_ms,
            "cost_usd": money(self.cost), "unpriced_calls": self.unpriced_calls,
            "successful_outcomes": self.successes,
            "cost_per_successful_outcome_usd": money(per_outcome) if per_outcome is not None else None,
            "forecast_usd": money(self.forecast) if self.forecast is not None else None,
            "spend_variance_usd": money(variance) if variance is not None else None,
            "spend_variance_ratio": ratio(variance, self.forecast) if variance is not None and self.forecast else None,
            "cache": {"input_tokens": self.input_tokens, "cache_read_tokens": self.cache_read_tokens,
                      "hit_rate": ratio(self.cache_read_tokens, self.input_tokens),
                      "saved_usd": money(self.saved), "unpriced_cache_read_tokens": self.unpriced_cache_tokens},
            "safety": {c: {"triggers": n, "per_1000_calls": ratio(n * 1000, self.calls)}
                       for c, n in sorted(self.safety.items())},
            "slo": self.slo,
            "incidents": self.incidents,
        }


def cache_saving(book: PriceBook, provider: str, model: str, tokens: int, at: datetime) -> Decimal | None:
    """Dollars a cached read saved against fresh input at the list price in force at ``at``
    (standard tier, base rates); None when the model has no price."""
    entry = book.lookup(provider, model, at)
    if entry is None:
        return None
    rates = entry.rates
    read = rates.cache_read if rates.cache_read is not None else rates.input
    return tokens * (rates.input - read)


def slo_rows(slos: Sequence[SLO], rows: Iterable[Sequence[Any]], *, group_by: str | None,
             tenant_id: str | None) -> dict[str, list[dict[str, Any]]]:
    """Attainment per SLO and objective, keyed by report group, from (slo_id, feature, tenant,
    eligible, bad) rows. Per feature (or overall): each objective (an SLO on one feature, and one
    tenant if the SLO is per tenant or the key is bound to one); per tenant: each SLO over that
    tenant's calls, its features pooled."""
    by_id = {s.slo_id: s for s in slos}
    acc: dict[tuple[str, str, str, str], list[int]] = {}
    for slo_id, feature, tenant, eligible, bad in rows:
        slo = by_id.get(slo_id)
        if slo is None or not slo.applies(feature, tenant):
            continue
        if group_by == "tenant_id":
            group, subject_feature, subject_tenant = tenant, slo.feature, tenant
        else:
            subject_feature = feature
            subject_tenant = tenant if slo.tenant_id is not None else (tenant_id or "")
            group = feature if group_by == "feature" else ALL
        c = acc.setdefault((group, slo_id, subject_feature, subject_tenant), [0, 0])
        c[0] += int(eligible)
        c[1] += int(bad)
    out: dict[str, list[dict[str, Any]]] = {}
    for (group, slo_id, feature, tenant), (eligible, bad) in sorted(acc.items()):
        if not eligible:
            continue
        slo = by_id[slo_id]
        attained = Decimal(eligible - bad) / Decimal(eligible)
        consumed = budget_consumed(_Counts(eligible, bad), slo.budget)
        out.setdefault(group, []).append({
            "slo_id": slo_id, "slo_version": slo.version, "kind": str(slo.kind), "feature": feature,
            "tenant_id": tenant or None, "target": slo.target, "eligible_calls": eligible, "bad_calls": bad,
            "attainment": round(float(attained), 6), "met": attained >= Decimal(repr(slo.target)),
            "error_budget_remaining": round(float(1 - consumed), 6),
        })
    return out


@dataclass(frozen=True, slots=True)
class _Counts:
    total: int
    bad: int


def incidents(alerts: Iterable[dict[str, Any]], mitigated: Mapping[str, datetime], *, start: datetime,
              end: datetime, group_by: str | None) -> tuple[dict[str, dict[str, dict[str, Any]]], list[dict[str, Any]]]:
    """MTTD (incident start = the alert's ``first_seen``, the start of its evidence window, to its
    ``opened_at``), time to mitigation (open to the first directive applied or approved for it)
    and MTTR (open to the ``last_seen`` of its resolved version), per group and alert kind; and
    the alerts opened in the period, for the report's timelines."""
    acc: dict[str, dict[str, dict[str, list[float]]]] = {}
    listed = []
    for a in alerts:
        first = _utc(a["first_seen"])
        opened = _utc(a["opened_at"]) if a.get("opened_at") else first
        if not start <= opened < end:
            continue
        scope = a.get("scope") or {}
        group = ALL if not group_by else (scope.get(group_by) or "")
        kind = a["kind"]
        slot = acc.setdefault(group, {}).setdefault(kind, {"detect": [], "mitigate": [], "resolve": [], "n": []})
        slot["n"].append(1)
        slot["detect"].append(max(0.0, (opened - first).total_seconds()))
        mit = mitigated.get(a["alert_id"])
        if mit is not None:
            slot["mitigate"].append(max(0.0, (_utc(mit) - opened).total_seconds()))
        resolved = _utc(a["last_seen"]) if a.get("status") == "resolved" else None
        if resolved is not None:
            slot["resolve"].append(max(0.0, (resolved - opened).total_seconds()))
        listed.append({**a, "_opened": opened, "_mitigated": _utc(mit) if mit else None, "_resolved": resolved})

    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 3) if xs else None

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for group, kinds in acc.items():
        for kind, s in sorted(kinds.items()):
            out.setdefault(group, {})[kind] = {
                "alerts": len(s["n"]), "mttd_s": mean(s["detect"]), "mitigated": len(s["mitigate"]),
                "time_to_mitigation_s": mean(s["mitigate"]), "resolved": len(s["resolve"]), "mttr_s": mean(s["resolve"]),
            }
    return out, listed


def forecast_start(p: Span) -> datetime:
    """The history the forecast made at the period's start reads: the month containing the instant
    before the start, up to the start (the previous month, for a report on a whole month)."""
    before = p.start - timedelta(microseconds=1)
    return datetime(before.year, before.month, 1, tzinfo=UTC)


def forecast_for(daily: Mapping[date, Decimal], p: Span) -> Decimal | None:
    """The spend expected over the period, as forecast at its start: the forecast core's fitted
    daily rate (median / Theil-Sen over the complete days before the start) times the period's
    days; None without any spend history to forecast from."""
    if not daily:
        return None
    f = forecast(daily, period=Period.MONTHLY, now=p.start - timedelta(microseconds=1))
    days = Decimal((p.end - p.start).total_seconds()) / Decimal(86400)
    return (f.daily_rate * days).quantize(MICRO)


def kpis(query: Query, p: Span, *, slos: SLOs, book: PriceBook, with_total: bool = False) -> dict[str, Any]:
    """Run every KPI query for the period and assemble the answer (see docs/KPIS.md).
    ``with_total`` (grouped by feature): also the whole period's figures as ``total``, added up
    from the groups (the p95s, which do not add up, from one more rollup query)."""
    if with_total and p.group_by != "feature":
        raise ValueError("group_by: with_total adds up per-feature groups")
    groups: dict[str, Group] = {}

    def group(key: Any) -> Group:
        k = str(key)
        if k not in groups:
            groups[k] = Group(k)
        return groups[k]

    n = len(FAILURE_CLASSES)
    whole: tuple[Any, ...] | None = None  # the total row (with_total)
    for row in query(*calls_sql(p, with_total=with_total)):
        if with_total and row[-1]:
            whole = row
            continue
        g = group(row[0])
        g.calls = int(row[1])
        g.failures = {c: int(v) for c, v in zip(FAILURE_CLASSES, row[2:2 + n], strict=True)}
        rest = row[2 + n:]
        g.cost, g.unpriced_calls = Decimal(rest[0]), int(rest[1])
        g.input_tokens, g.cache_read_tokens, g.ok_calls = int(rest[2]), int(rest[3]), int(rest[4])
        g.p95_latency_ms = round(float(rest[5]), 3) if g.ok_calls else None
        g.streamed_ok = int(rest[6])
        g.p95_ttft_ms = round(float(rest[7]), 3) if g.streamed_ok else None
    price_at = p.end - timedelta(milliseconds=1)
    for key, provider, model, tokens in query(*cache_sql(p)):
        g = group(key)
        saved = cache_saving(book, provider, model, int(tokens), price_at)
        if saved is None:
            g.unpriced_cache_tokens += int(tokens)
        else:
            g.saved += saved
    for key, category, count in query(*safety_sql(p)):
        group(key).safety[category] = int(count)
    flagged: dict[str, tuple[int, int]] = {str(k): (int(f), int(x)) for k, f, x in query(*outcomes_sql(p))}
    for key, g in groups.items():
        f, x = flagged.get(key, (0, 0))
        g.successes = g.ok_calls - f + x
    daily: dict[str, dict[date, Decimal]] = {}
    for key, day, cost in query(*daily_spend_sql(p, forecast_start(p))):
        daily.setdefault(str(key), {})[day if isinstance(day, date) else date.fromisoformat(str(day))] = Decimal(cost)
    for key, g in groups.items():
        g.forecast = forecast_for(daily.get(key, {}), p)
    slo_list = [s for s in slos.slos if p.tenant_id is None or s.tenant_id in (None, "*", p.tenant_id)]
    if slo_list:
        for key, items in slo_rows(slo_list, query(*slo_sql(p, SLOs(tuple(slo_list), slos.version))), group_by=p.group_by,
                                   tenant_id=p.tenant_id).items():
            group(key).slo = items
    alerts = [orjson.loads(body) for (body,) in query(*alerts_sql(p))]
    mitigated: dict[str, datetime] = {}
    if alerts:
        mitigated = {a: _utc(at) for a, at in query(*mitigations_sql([a["alert_id"] for a in alerts]))}
    by_group, listed = incidents(alerts, mitigated, start=p.start, end=p.end, group_by=p.group_by)
    for key, kinds in by_group.items():
        group(key).incidents = kinds
    answer = {
        "from": p.start.isoformat(), "to": p.end.isoformat(), "group_by": p.group_by, "tenant_id": p.tenant_id,
        "currency": "USD", "slos_version": slos.version,
        "groups": [groups[k].as_json() for k in sorted(groups)],
        "_incidents": listed,
    }
    if with_total:
        answer["total"] = _total(whole, p, groups, daily, alerts, mitigated).as_json()
    return answer


def _total(whole: Sequence[Any] | None, p: Span, groups: Mapping[str, Group],
           daily: Mapping[str, Mapping[date, Decimal]], alerts: list[dict[str, Any]],
           mitigated: Mapping[str, datetime]) -> Group:
    t = Group(ALL)
    for g in groups.values():
        t.calls += g.calls
        for c, n in g.failures.items():
            t.failures[c] = t.failures.get(c, 0) + n
        t.cost += g.cost
        t.unpriced_calls += g.unpriced_calls
        t.input_tokens += g.input_tokens
        t.cache_read_tokens += g.cache_read_tokens
        t.ok_calls += g.ok_calls
        t.streamed_ok += g.streamed_ok
        t.saved += g.saved
        t.unpriced_cache_tokens += g.unpriced_cache_tokens
        for c, n in g.safety.items():
            t.safety[c] = t.safety.get(c, 0) + n
        t.successes += g.successes
        t.slo += g.slo  # per feature, the objectives are the same as overall
    if whole is not None:
        rest = whole[2 + len(FAILURE_CLASSES):]
        t.p95_latency_ms = round(float(rest[5]), 3) if t.ok_calls else None
        t.p95_ttft_ms = round(float(rest[7]), 3) if t.streamed_ok else None
    summed: dict[date, Decimal] = {}
    for per in daily.values():
        for d, v in per.items():
            summed[d] = summed.get(d, Decimal(0)) + v
    t.forecast = forecast_for(summed, p)
    t.incidents = incidents(alerts, mitigated, start=p.start, end=p.end, group_by=None)[0].get(ALL, {})
    return t


CSV_HEADER = ["group", "kpi", "dimension", "value"]


def csv_rows(answer: Mapping[str, Any]) -> list[list[Any]]:
    """The answer in long form: one (group, kpi, dimension, value) row per figure."""
    out: list[list[Any]] = []
    for g in answer["groups"]:
        key = g["key"]
        for name in ("calls", "error_rate", "p95_latency_ms", "p95_ttft_ms", "cost_usd", "unpriced_calls",
                     "successful_outcomes", "cost_per_successful_outcome_usd", "forecast_usd", "spend_variance_usd",
                     "spend_variance_ratio"):
            out.append([key, name, "", g[name]])
        for cls, v in g["errors"].items():
            out.append([key, "error_rate_by_class", cls, v["rate"]])
        for name, v in g["cache"].items():
            out.append([key, f"cache_{name}", "", v])
        for cat, v in g["safety"].items():
            out.append([key, "safety_per_1000_calls", cat, v["per_1000_calls"]])
        for s in g["slo"]:
            dim = f"{s['slo_id']}|feature={s['feature']}" + (f"|tenant_id={s['tenant_id']}" if s["tenant_id"] else "")
            out.append([key, "slo_attainment", dim, s["attainment"]])
            out.append([key, "slo_error_budget_remaining", dim, s["error_budget_remaining"]])
        for kind, v in g["incidents"].items():
            for name in ("alerts", "mttd_s", "time_to_mitigation_s", "mttr_s"):
                out.append([key, name, kind, v[name]])
    return out
