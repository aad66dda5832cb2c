"""The reads behind the API's routes: spend, alerts and the audit log, as SQL over ClickHouse.

Each function takes ``q(sql, params)`` (the store's ``query``, run on its ClickHouse thread:
``await store.run(fn, store.query, ...)``) and the route's already-validated arguments. Every
value reaches ClickHouse as a bound parameter; the only names spliced into the SQL are the
column and bucket names of the fixed tuples below, checked before any SQL is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import orjson

Query = Callable[[str, dict[str, Any]], Sequence[Sequence[Any]]]


def _equal(where: list[str], params: dict[str, Any], filters: dict[str, str | None]) -> None:
    """``column = {column:String}`` for each filter with a value (``None``: any; an empty string
    matches the empty value)."""
    for name, value in filters.items():
        if value is not None:
            where.append(f"{name} = {{{name}:String}}")
            params[name] = value


def _between(where: list[str], params: dict[str, Any], column: str, lo: datetime | None, hi: datetime | None) -> None:
    """``lo <= column < hi``, each bound only when given."""
    if lo is not None:
        where.append(f"{column} >= {{from_ts:DateTime64(3, 'UTC')}}")
        params["from_ts"] = lo
    if hi is not None:
        where.append(f"{column} < {{to_ts:DateTime64(3, 'UTC')}}")
        params["to_ts"] = hi


# ---------------------------------------------------------------- spend
SPEND_DIMENSIONS = ("tenant_id", "feature", "provider", "model", "prompt_version", "service_tier", "environment")
TIME_BUCKETS = {"hour": "toStartOfHour(ts)", "day": "toDate(ts)", "month": "toStartOfMonth(ts)"}
GROUPABLE = (*SPEND_DIMENSIONS, *TIME_BUCKETS)
SPEND_COLUMNS = ("events", "cost_usd", "unpriced_events", "late_events")


def spend(q: Query, filters: dict[str, str | None], groups: Sequence[str], *,
          from_ts: datetime | None = None, to_ts: datetime | None = None) -> list[dict[str, Any]]:
    """Spend of ``llm_call`` events, each event once (``FINAL`` over the ReplacingMergeTree keyed
    by event id), one row per group in group order (one row in all without groups). ``filters``
    maps dimensions of :data:`SPEND_DIMENSIONS` to a value (``None``: any); ``cost_usd`` is the
    driver's exact decimal text (``None`` when every event of the group is unpriced)."""
    for name in filters:
        if name not in SPEND_DIMENSIONS:
            raise ValueError(f"{name}: not a spend dimension (one of {', '.join(SPEND_DIMENSIONS)})")
    for name in groups:
        if name not in GROUPABLE:
            raise ValueError(f"group_by: unknown value {name[:40]!r} (one of {', '.join(GROUPABLE)})")
    where, params = ["event_type = 'llm_call'"], dict[str, Any]()
    _equal(where, params, filters)
    _between(where, params, "ts", from_ts, to_ts)
    cols = [f"toString({TIME_BUCKETS[g]}) AS {g}" if g in TIME_BUCKETS else g for g in groups]
    select = ", ".join([*cols, "count() AS events", "toString(sumOrNull(cost_usd)) AS cost_usd",
                        "countIf(unpriced = 1) AS unpriced_events", "countIf(late = 1) AS late_events"])
    sql = f"SELECT {select} FROM events FINAL WHERE {' AND '.join(where)}"
    if groups:
        sql += f" GROUP BY {', '.join(groups)} ORDER BY {', '.join(groups)}"
    # duplicates share (tenant, day, event_id), hence a month partition: FINAL need not merge across partitions
    sql += " SETTINGS do_not_merge_across_partitions_select_final = 1"
    names = [*groups, *SPEND_COLUMNS]
    return [dict(zip(names, row, strict=True)) for row in q(sql, params)]


# ---------------------------------------------------------------- alerts
def alerts(q: Query, *, limit: int, status: str | None = None, kind: str | None = None,
           severity: str | None = None, tenant_id: str | None = None) -> list[tuple[dict[str, Any], str]]:
    """Alerts newest first (by last seen), each as (its body, its key ``kind|scope_key``)."""
    where: list[str] = ["1"]
    params: dict[str, Any] = {"limit": limit}
    _equal(where, params, {"status": status or None, "kind": kind or None, "severity": severity or None})
    if tenant_id:
        where.append("JSONExtractString(scope, 'tenant_id') = {tenant:String}")
        params["tenant"] = tenant_id
    sql = (f"SELECT body, kind, scope_key FROM alerts FINAL WHERE {' AND '.join(where)} "
           "ORDER BY last_seen DESC LIMIT {limit:UInt32}")
    return [(orjson.loads(body), f"{k}|{key}") for body, k, key in q(sql, params)]


def alert_body(q: Query, alert_id: str) -> str | None:
    """The stored JSON body of one alert, or ``None``."""
    rows = q("SELECT body FROM alerts FINAL WHERE alert_id = {id:String} LIMIT 1", {"id": alert_id})
    return str(rows[0][0]) if rows else None


# ---------------------------------------------------------------- the audit log
ACTION_COLUMNS = ("action_id", "at", "decision", "directive_id", "scope_key", "tenant_id", "alert_id",
                  "policy_id", "actor", "reason", "before", "after", "evidence")
ACTION_FILTERS = ("tenant_id", "decision", "directive_id", "alert_id", "actor")


def actions(q: Query, filters: dict[str, str | None], *, limit: int, policy_id: str | None = None,
            from_ts: datetime | None = None, to_ts: datetime | None = None) -> list[dict[str, Any]]:
    """Audit rows newest first; ``filters`` maps columns of :data:`ACTION_FILTERS` to a value
    (``None`` or empty: any). A ``policy_id`` matches the policy and every version of it (``id@N``).
    ``before``, ``after`` and ``evidence`` come back decoded (``None`` when empty)."""
    where: list[str] = ["1"]
    params: dict[str, Any] = {"limit": limit}
    for name in filters:
        if name not in ACTION_FILTERS:
            raise ValueError(f"{name}: not a filter of the audit log")
    _equal(where, params, {name: value or None for name, value in filters.items()})  # empty: any
    if policy_id:
        where.append("(policy_id = {policy_id:String} OR startsWith(policy_id, {policy_prefix:String}))")
        params |= {"policy_id": policy_id, "policy_prefix": policy_id + "@"}
    _between(where, params, "at", from_ts, to_ts)
    sql = (f"SELECT {', '.join(ACTION_COLUMNS)} FROM actions WHERE {' AND '.join(where)} "
           "ORDER BY at DESC, action_id LIMIT {limit:UInt32}")
    out = []
    for row in q(sql, params):
        item = dict(zip(ACTION_COLUMNS, row, strict=True))
        for name in ("before", "after", "evidence"):
            item[name] = orjson.loads(item[name]) if item[name] else None
        out.append(item)
    return out
