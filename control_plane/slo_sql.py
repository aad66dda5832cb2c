"""The SLIs as ClickHouse conditions over ``events``: the same definition as ``SLO.classify``
(which ``flyball replay`` uses), written once more in SQL for the rollup and the KPI report;
``tests/unit/test_slo.py`` checks the two agree on every combination of the fields they read."""

from __future__ import annotations

from typing import Any

from .slo import SLO, SLOKind


def sli_conditions(slo: SLO, *, prefix: str = "") -> tuple[str, str, dict[str, Any]]:
    """(eligible, bad, parameters) for one SLO over ``events`` rows of llm calls. The scope of the
    SLO (feature, tenant) is part of ``eligible``; thresholds are query parameters."""
    params: dict[str, Any] = {}
    scope = []
    if slo.feature != "*":
        scope.append(f"feature = {{{prefix}feature:String}}")
        params[f"{prefix}feature"] = slo.feature
    if slo.tenant_id not in (None, "*"):
        scope.append(f"tenant_id = {{{prefix}tenant:String}}")
        params[f"{prefix}tenant"] = slo.tenant_id
    if slo.kind == SLOKind.AVAILABILITY:
        params[f"{prefix}failures"] = [str(s) for s in slo.failure_statuses]
        eligible, bad = "1", f"status IN {{{prefix}failures:Array(String)}}"
    else:
        streamed = "stream = 1 AND isNotNull(ttft_ms)"
        ttft = f"ifNull(ttft_ms, 0) > {{{prefix}ttft:Float64}}"
        latency = f"latency_ms > {{{prefix}latency:Float64}}"
        if slo.ttft_ms is not None:
            params[f"{prefix}ttft"] = slo.ttft_ms
        if slo.latency_ms is not None:
            params[f"{prefix}latency"] = slo.latency_ms
        if slo.ttft_ms is not None and slo.latency_ms is not None:
            eligible, bad = "status = 'ok'", f"if({streamed}, {ttft}, {latency})"
        elif slo.ttft_ms is not None:
            eligible, bad = f"status = 'ok' AND {streamed}", ttft
        else:
            eligible, bad = "status = 'ok'", latency
    if scope:
        eligible = " AND ".join([*scope, f"({eligible})"])
    return eligible, bad, params
