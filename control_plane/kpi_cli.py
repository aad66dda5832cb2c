"""`flyball kpis | report | slos`: the KPI commands, through the HTTP API (``FLYBALL_API_URL`` +
``FLYBALL_API_KEY``, a finance or SRE key), like the finance and SRE commands."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx
import yaml

from .finance_cli import ApiError, _check, _client, table
from .report import html_page, markdown, month_bounds
from .settings import Settings


def _period(args: argparse.Namespace) -> tuple[str, str]:
    if args.month:
        _, start, end = month_bounds(args.month)
        return start.isoformat(), end.isoformat()
    now = datetime.now(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    return (args.from_ or start.isoformat()), (args.to or now.isoformat())


def _pct(x: Any) -> str:
    return "" if x is None else f"{x * 100:.3f}%"


def cmd_kpis(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    start, end = _period(args)
    params = {"from": start, "to": end}
    if args.group_by:
        params["group_by"] = args.group_by
    if args.tenant_id:
        params["tenant_id"] = args.tenant_id
    with _client(settings) as client:
        if args.csv:
            out.write(_check(client.get("/v1/kpis", params=params, headers={"Accept": "text/csv"})).text)
            return 0
        body = _check(client.get("/v1/kpis", params=params)).json()
    out.write(f"KPIs {body['from']} .. {body['to']}\n\n")
    rows = [{"group": g["key"], "calls": g["calls"], "error_rate": _pct(g["error_rate"]),
             "p95_ms": g["p95_latency_ms"] or "", "p95_ttft_ms": g["p95_ttft_ms"] or "", "spend_usd": g["cost_usd"],
             "per_success_usd": g["cost_per_successful_outcome_usd"] or "",
             "vs_forecast_usd": g["spend_variance_usd"] or "", "cache_hit": _pct(g["cache"]["hit_rate"]),
             "cache_saved_usd": g["cache"]["saved_usd"]} for g in body["groups"]]
    table(rows, list(rows[0]) if rows else ["group"], out=out,
          right=("calls", "error_rate", "p95_ms", "p95_ttft_ms", "spend_usd", "per_success_usd", "vs_forecast_usd",
                 "cache_hit", "cache_saved_usd"))
    slo = [{"group": g["key"], "slo": s["slo_id"], "feature": s["feature"], "tenant": s["tenant_id"] or "all",
            "target": f"{s['target'] * 100:g}%", "attained": _pct(s["attainment"]), "met": "yes" if s["met"] else "NO",
            "budget_left": _pct(s["error_budget_remaining"])} for g in body["groups"] for s in g["slo"]]
    if slo:
        out.write("\nSLOs\n")
        table(slo, list(slo[0]), out=out, right=("target", "attained", "budget_left"))
    inc = [{"group": g["key"], "kind": k, "alerts": v["alerts"], "mttd_s": v["mttd_s"] or "",
            "mitigation_s": v["time_to_mitigation_s"] or "", "mttr_s": v["mttr_s"] or ""}
           for g in body["groups"] for k, v in g["incidents"].items()]
    if inc:
        out.write("\nIncidents\n")
        table(inc, list(inc[0]), out=out, right=("alerts", "mttd_s", "mitigation_s", "mttr_s"))
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    month_bounds(args.month)  # a bad month is refused before any request
    params = {"month": args.month}
    if args.tenant_id:
        params["tenant_id"] = args.tenant_id
    with _client(settings) as client:
        body = _check(client.get("/v1/kpis/report", params=params)).json()
    args.out.mkdir(parents=True, exist_ok=True)
    md, page = args.out / f"report-{args.month}.md", args.out / f"report-{args.month}.html"
    md.write_text(markdown(body), encoding="utf-8")
    page.write_text(html_page(body), encoding="utf-8")
    out.write(f"{md}\n{page}\n")
    return 0


def cmd_slos(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    with _client(settings) as client:
        if args.file:
            text = args.file.read_text()
            body = _check(client.put("/v1/slos", content=text.encode())).json()
        else:
            body = _check(client.get("/v1/slos")).json()
    out.write(yaml.safe_dump(body, sort_keys=False))
    return 0


def add_commands(sub: Any) -> None:
    """Register `kpis`, `report` and `slos` on the `flyball` argument parser."""
    kp = sub.add_parser("kpis", help="SLO attainment, MTTD/MTTR, cost per outcome, cache, safety, latency (API)")
    kp.add_argument("--from", dest="from_", help="start, ISO 8601 with offset (default: this month's start)")
    kp.add_argument("--to", help="end (exclusive), ISO 8601 with offset (default: now)")
    kp.add_argument("--month", help="YYYY-MM instead of --from/--to")
    kp.add_argument("--group-by", choices=["feature", "tenant_id"])
    kp.add_argument("--tenant-id", dest="tenant_id")
    kp.add_argument("--csv", action="store_true", help="print CSV (long form: group, kpi, dimension, value)")
    kp.set_defaults(fn=_run(cmd_kpis))
    rp = sub.add_parser("report", help="the monthly reliability report as Markdown and HTML")
    rp.add_argument("--month", required=True, help="YYYY-MM")
    rp.add_argument("--out", type=Path, default=Path("."), help="directory for report-YYYY-MM.md and .html")
    rp.add_argument("--tenant-id", dest="tenant_id")
    rp.set_defaults(fn=_run(cmd_report))
    sp = sub.add_parser("slos", help="show the SLOs in force, or replace them from a YAML/JSON file (admin)")
    sp.add_argument("--file", type=Path, help="replace the SLOs with this file")
    sp.set_defaults(fn=_run(cmd_slos))


def _run(fn: Any) -> Any:
    def go(args: argparse.Namespace) -> int:
        try:
            return int(fn(args, Settings()))
        except (ApiError, ValueError, OSError, httpx.HTTPError) as exc:
            print(f"flyball {args.command}: {exc}", file=sys.stderr)
            return 2
    return go
