"""The release comparison as stored by the worker (``release_versions``): each live version of
a feature, side by side with its comparison verdict. A query over the store; the API route and
``flyball versions`` render it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

Query = Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]
COLUMNS = ("feature", "tenant_id", "dimension", "version", "calls", "share", "role", "incumbent", "verdict", "started", "decided_at",
           "calls_new", "calls_old", "metrics", "window_s", "as_of")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).isoformat()


MAX_ROWS = 1000


def live_versions(q: Query, feature: str | None, tenant_id: str | None,
                  dimension: str | None = None) -> dict[str, Any]:
    """The versions of ``feature`` (of every feature when None; feature-wide comparisons when
    ``tenant_id`` is None, that tenant's when comparisons run per tenant) that took traffic in
    the window of the latest snapshot, most-used first per dimension; a candidate carries its
    verdict against the incumbent and the per-metric evidence (``new`` is this version, ``old``
    the incumbent). At most ``MAX_ROWS`` rows."""
    params: dict[str, Any] = {"tenant": tenant_id or "", "limit": MAX_ROWS}
    where = "tenant_id = {tenant:String} AND calls > 0"
    if feature is not None:
        where += " AND feature = {feature:String}"
        params["feature"] = feature
    if dimension is not None:
        where += " AND dimension = {dimension:String}"
        params["dimension"] = dimension
    rows = q(f"SELECT {', '.join(COLUMNS)} FROM release_versions FINAL WHERE {where} "
             "ORDER BY feature, dimension, calls DESC, version LIMIT {limit:UInt32}", params)
    versions = []
    for row in rows:
        item = dict(zip(COLUMNS, row, strict=True))
        item["share"] = round(float(item["share"]), 6)
        item["metrics"] = orjson.loads(item["metrics"]) if item["metrics"] else []
        for name in ("started", "decided_at", "as_of"):
            item[name] = _iso(item[name])
        for name in ("incumbent", "verdict", "role", "tenant_id"):
            item[name] = item[name] or None
        versions.append(item)
    as_of = max((v["as_of"] for v in versions), default=None)
    window = versions[0]["window_s"] if versions else None
    for v in versions:
        del v["window_s"]
    return {"feature": feature, "tenant_id": tenant_id, "as_of": as_of, "window_s": window, "versions": versions}
