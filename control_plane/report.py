"""The monthly reliability report: the KPIs (overall and per feature), the incidents with their
timelines (alert -> action -> resolution) and the top spend movers against the previous month;
rendered as Markdown and as a self-contained HTML page. Data assembly over a ``query`` callable
(``build``), rendering pure (``markdown``, ``html_page``)."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from flyball.stream_processors.pricing import PriceBook

from .kpis import Query, Span, kpis, llm_source, money
from .slo import SLOs

MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
TOP_MOVERS = 10


def month_bounds(month: str) -> tuple[datetime, datetime, datetime]:
    """(previous month start, month start, next month start) for ``YYYY-MM``; ValueError names it."""
    m = MONTH.match(month)
    if m is None:
        raise ValueError(f"month: expected YYYY-MM, got {month[:20]!r}")
    y, mo = int(m.group(1)), int(m.group(2))
    start = datetime(y, mo, 1, tzinfo=UTC)
    end = datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=UTC)
    prev = datetime(y - (mo == 1), (mo - 2) % 12 + 1, 1, tzinfo=UTC)
    return prev, start, end


def movers_sql(prev: datetime, start: datetime, end: datetime, tenant_id: str | None) -> tuple[str, dict[str, Any]]:
    """Spend per (tenant, feature) in this month and the previous one (from ``kpi_day``)."""
    source, params = llm_source(Span(prev, end, None, tenant_id))
    params["split"] = start
    return (f"SELECT tenant_id, feature, toString(sumIf(cost_usd, day >= toDate({{split:DateTime('UTC')}}))), "
            f"toString(sumIf(cost_usd, day < toDate({{split:DateTime('UTC')}}))) FROM {source} "
            "GROUP BY tenant_id, feature", params)


def timeline_sql(alert_ids: Sequence[str]) -> tuple[str, dict[str, Any]]:
    return ("SELECT alert_id, at, decision, actor, reason, directive_id FROM actions "
            "WHERE alert_id IN {ids:Array(String)} ORDER BY at, action_id", {"ids": list(alert_ids)})


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return (value.replace(tzinfo=UTC) if value.tzinfo is None else value).isoformat()
    return str(value)


def build(query: Query, month: str, *, slos: SLOs, book: PriceBook, tenant_id: str | None = None) -> dict[str, Any]:
    prev, start, end = month_bounds(month)
    per_feature = kpis(query, Span(start, end, "feature", tenant_id), slos=slos, book=book, with_total=True)
    listed = per_feature.pop("_incidents")
    steps: dict[str, list[dict[str, Any]]] = {}
    if listed:
        for alert_id, at, decision, actor, reason, directive_id in query(*timeline_sql([a["alert_id"] for a in listed])):
            steps.setdefault(alert_id, []).append({"at": _iso(at), "what": f"action: {decision}", "actor": actor,
                                                   "detail": reason, "directive_id": directive_id})
    incidents = []
    for a in listed:
        timeline = [{"at": _iso(a["first_seen"]), "what": "incident start (evidence window)", "actor": "", "detail": ""},
                    {"at": _iso(a["_opened"]), "what": "alert opened", "actor": "flyball",
                     "detail": a.get("summary", "")}]
        timeline += steps.get(a["alert_id"], [])
        if a["_resolved"] is not None:
            timeline.append({"at": _iso(a["_resolved"]), "what": "alert resolved", "actor": "flyball", "detail": ""})
        timeline.sort(key=lambda s: s["at"])
        incidents.append({"alert_id": a["alert_id"], "kind": a["kind"], "severity": a["severity"],
                          "scope": a.get("scope", {}), "status": a.get("status"), "timeline": timeline})
    movers = []
    for tenant, feature, now_cost, prev_cost in query(*movers_sql(prev, start, end, tenant_id)):
        cur, before = Decimal(now_cost), Decimal(prev_cost)
        movers.append({"tenant_id": tenant, "feature": feature, "spend_usd": cur, "previous_usd": before,
                       "change_usd": cur - before})
    movers.sort(key=lambda m: (-abs(m["change_usd"]), m["tenant_id"], m["feature"]))
    return {
        "month": month, "from": start.isoformat(), "to": end.isoformat(), "tenant_id": tenant_id,
        "overall": per_feature["total"] if per_feature["groups"] else None, "features": per_feature["groups"],
        "incidents": incidents,
        "movers": [{**m, "spend_usd": money(m["spend_usd"]), "previous_usd": money(m["previous_usd"]),
                    "change_usd": money(m["change_usd"])} for m in movers[:TOP_MOVERS]],
    }


# ------------------------------------------------------------------ rendering
def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.3f}%"


def _num(x: Any) -> str:
    return "n/a" if x is None else str(x)


def _secs(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x / 60:.1f} min" if x >= 120 else f"{x:.0f} s"


def _sections(r: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) tables, shared by both renderers."""
    out: list[tuple[str, list[str], list[list[str]]]] = []
    o = r["overall"] or {}
    if o:
        out.append(("Headline figures", ["KPI", "value"], [
            ["LLM calls", _num(o["calls"])], ["error rate", _pct(o["error_rate"])],
            ["p95 latency (successful calls)", f"{_num(o['p95_latency_ms'])} ms"],
            ["p95 TTFT (successful streamed calls)", f"{_num(o['p95_ttft_ms'])} ms"],
            ["spend", f"${o['cost_usd']}"], ["forecast at month start", f"${_num(o['forecast_usd'])}"],
            ["spend variance vs forecast", f"${_num(o['spend_variance_usd'])} ({_pct(o['spend_variance_ratio'])})"],
            ["successful outcomes", str(o["successful_outcomes"])],
            ["cost per successful outcome", f"${_num(o['cost_per_successful_outcome_usd'])}"],
            ["cache hit rate (input tokens)", _pct(o["cache"]["hit_rate"])],
            ["saved by prompt caching (list price)", f"${o['cache']['saved_usd']}"],
        ]))
        out.append(("Errors by class", ["class", "calls", "rate"],
                    [[c, str(v["calls"]), _pct(v["rate"])] for c, v in o["errors"].items()]))
        out.append(("Safety violations per 1,000 calls", ["category", "triggers", "per 1,000 calls"],
                    [[c, str(v["triggers"]), _num(v["per_1000_calls"])] for c, v in o["safety"].items()]))
        out.append(("Incident response by alert kind", ["kind", "alerts", "MTTD", "time to mitigation", "MTTR"],
                    [[k, str(v["alerts"]), _secs(v["mttd_s"]), _secs(v["time_to_mitigation_s"]), _secs(v["mttr_s"])]
                     for k, v in o["incidents"].items()]))
    slo_rows = [[s["slo_id"], s["feature"], s["tenant_id"] or "all", f"{s['target'] * 100:g}%", _pct(s["attainment"]),
                 "yes" if s["met"] else "NO", _pct(s["error_budget_remaining"])]
                for f in r["features"] for s in f["slo"]]
    out.append(("SLO attainment", ["SLO", "feature", "tenant", "target", "attained", "met", "error budget left"],
                slo_rows))
    out.append(("Per feature", ["feature", "calls", "error rate", "p95 ms", "spend", "cost / success", "cache hit"],
                [[f["key"], str(f["calls"]), _pct(f["error_rate"]), _num(f["p95_latency_ms"]), f"${f['cost_usd']}",
                  f"${_num(f['cost_per_successful_outcome_usd'])}", _pct(f["cache"]["hit_rate"])]
                 for f in r["features"]]))
    out.append(("Top spend movers vs previous month", ["tenant", "feature", "this month", "previous", "change"],
                [[m["tenant_id"], m["feature"], f"${m['spend_usd']}", f"${m['previous_usd']}", f"${m['change_usd']}"]
                 for m in r["movers"]]))
    return out


def _scope(scope: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in scope.items()) or "global"


def markdown(r: Mapping[str, Any]) -> str:
    def cell(v: str) -> str:
        return v.replace("|", "\\|").replace("\n", " ")

    lines = [f"# flyball reliability report: {r['month']}", "",
             f"Period {r['from']} to {r['to']}" + (f", tenant {r['tenant_id']}" if r["tenant_id"] else "") +
             ". Every figure is reproducible with the queries in docs/KPIS.md.", ""]
    for title, header, rows in _sections(r):
        lines += [f"## {title}", ""]
        if not rows:
            lines += ["(none)", ""]
            continue
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
        lines.append("")
    lines += ["## Incidents", ""]
    if not r["incidents"]:
        lines += ["(none)", ""]
    for inc in r["incidents"]:
        lines += [f"### {inc['kind']} ({inc['severity']}) on {cell(_scope(inc['scope']))}, alert `{inc['alert_id']}`", ""]
        lines += [f"- {s['at']}: {cell(s['what'])}" + (f" by {cell(s['actor'])}" if s["actor"] else "")
                  + (f": {cell(s['detail'])}" if s["detail"] else "") for s in inc["timeline"]]
        lines.append("")
    return "\n".join(lines)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}"
        "table{border-collapse:collapse;margin:0 0 1.5rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;"
        "text-align:left}th{background:#f3f3f3}ol{margin-bottom:1.5rem}")


def html_page(r: Mapping[str, Any]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>flyball report {e(r['month'])}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>flyball reliability report: {e(r['month'])}</h1>",
             f"<p>Period {e(r['from'])} to {e(r['to'])}" + (f", tenant {e(r['tenant_id'])}" if r["tenant_id"] else "")
             + ". Every figure is reproducible with the queries in docs/KPIS.md.</p>"]
    for title, header, rows in _sections(r):
        parts.append(f"<h2>{e(title)}</h2>")
        if not rows:
            parts.append("<p>(none)</p>")
            continue
        parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts.append("<h2>Incidents</h2>")
    if not r["incidents"]:
        parts.append("<p>(none)</p>")
    for inc in r["incidents"]:
        parts.append(f"<h3>{e(inc['kind'])} ({e(inc['severity'])}) on {e(_scope(inc['scope']))}, "
                     f"alert <code>{e(inc['alert_id'])}</code></h3><ol>")
        parts += [f"<li><time>{e(s['at'])}</time>: {e(s['what'])}" + (f" by {e(s['actor'])}" if s["actor"] else "")
                  + (f": {e(s['detail'])}" if s["detail"] else "") + "</li>" for s in inc["timeline"]]
        parts.append("</ol>")
    parts.append("</body></html>")
    return "\n".join(parts)


def to_json(r: Mapping[str, Any]) -> bytes:
    return orjson.dumps(r)
