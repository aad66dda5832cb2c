"""`flyball spend | reprice | reconcile`: finance commands that talk to the HTTP API (httpx;
``FLYBALL_API_URL`` + ``FLYBALL_API_KEY``), so they work against `flyball up` (whose chDB
directory only that process may open) and against a production API alike."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import httpx

from .reconcile import ReconcileError, ours_from_spend_rows, parse_provider_csv, reconcile
from .settings import Settings


class ApiError(RuntimeError):
    pass


def _client(settings: Settings) -> httpx.Client:
    if settings.api_key is None:
        raise ApiError("FLYBALL_API_KEY is not set (a finance or admin key)")
    return httpx.Client(base_url=settings.api_url.rstrip("/"), timeout=120,
                        headers={"Authorization": f"Bearer {settings.api_key.get_secret_value()}"})


def _check(resp: httpx.Response) -> httpx.Response:
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        raise ApiError(f"{resp.request.method} {resp.request.url.path}: HTTP {resp.status_code}: {detail}")
    return resp


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, out: TextIO, right: Sequence[str] = ()) -> None:
    """A plain aligned terminal table (numbers right-aligned)."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if c in right else v.ljust(w)
                         for v, w, c in zip(values, widths, columns, strict=True)).rstrip()

    out.write(line(columns) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write(line(row) + "\n")


def _spend_params(args: argparse.Namespace) -> list[tuple[str, str | int | float | bool | None]]:
    params: list[tuple[str, str | int | float | bool | None]] = [
        (name, getattr(args, name)) for name in ("tenant_id", "feature", "provider", "model", "prompt_version")
        if getattr(args, name, None)]
    if args.from_:
        params.append(("from", args.from_))
    if args.to:
        params.append(("to", args.to))
    if args.group_by:
        params.append(("group_by", args.group_by))
    return params


def cmd_spend(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    with _client(settings) as client:
        if args.csv:
            resp = _check(client.get("/v1/spend", params=_spend_params(args), headers={"Accept": "text/csv"}))
            out.write(resp.text)
            return 0
        body = _check(client.get("/v1/spend", params=_spend_params(args))).json()
    groups = body["group_by"]
    columns = [*groups, "events", "cost_usd", "unpriced_events"]
    rows = [*body["rows"], {**dict.fromkeys(groups, ""), **({groups[0]: "TOTAL"} if groups else {}),
                            "events": body["events"], "cost_usd": body["total_usd"], "unpriced_events": ""}]
    table(rows, columns, out=out, right=("events", "cost_usd", "unpriced_events"))
    return 0


def cmd_reprice(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    body: dict[str, Any] = {"from": args.from_, "to": args.to, "dry_run": args.dry_run}
    for name in ("provider", "model", "tenant_id"):
        if getattr(args, name, None):
            body[name] = getattr(args, name)
    with _client(settings) as client:
        result = _check(client.post("/v1/reprice", json=body)).json()
    verb = "would change" if result["dry_run"] else "changed"
    out.write(f"reprice {result['reprice_id']}: examined {result['examined']} events, {verb} {result['changed']}; "
              f"total ${result['old_total_usd']} -> ${result['new_total_usd']} (delta ${result['delta_usd']})\n")
    for version, n in sorted(result["versions"].items()):
        out.write(f"  {n:>8} events now priced with {version}\n")
    return 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    provider = parse_provider_csv(Path(args.file).read_text(encoding="utf-8-sig"))
    days = sorted({d for d, _ in provider})
    params: list[tuple[str, str | int | float | bool | None]] = [("group_by", "day,model")]
    if days:
        params += [("from", f"{args.from_ or days[0]}T00:00:00Z"), ("to", args.to or f"{days[-1]}T23:59:59.999Z")]
    if args.tenant_id:
        params.append(("tenant_id", args.tenant_id))
    if args.provider:
        params.append(("provider", args.provider))
    with _client(settings) as client:
        body = _check(client.get("/v1/spend", params=params)).json()
    lines = reconcile(provider, ours_from_spend_rows(body["rows"]))
    tolerance = Decimal(args.tolerance)
    shown = [ln for ln in lines if args.all or abs(ln.diff_usd) > tolerance]
    rows = [{"day": ln.day, "model": ln.model, "provider_usd": _t(ln.provider_usd), "ours_usd": _t(ln.ours_usd),
             "diff_usd": _t(ln.diff_usd)} for ln in shown]
    total_p = sum((ln.provider_usd for ln in lines), Decimal(0))
    total_o = sum((ln.ours_usd for ln in lines), Decimal(0))
    rows.append({"day": "TOTAL", "model": "", "provider_usd": _t(total_p), "ours_usd": _t(total_o),
                 "diff_usd": _t(total_o - total_p)})
    table(rows, ["day", "model", "provider_usd", "ours_usd", "diff_usd"], out=out,
          right=("provider_usd", "ours_usd", "diff_usd"))
    mismatched = sum(1 for ln in lines if abs(ln.diff_usd) > tolerance)
    out.write(f"{len(lines)} day/model lines, {mismatched} differ by more than ${_t(tolerance)}\n")
    return 1 if mismatched else 0


def _t(d: Decimal) -> str:
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def add_commands(sub: Any) -> None:
    """Register `spend`, `reprice` and `reconcile` on the `flyball` argument parser."""
    sp = sub.add_parser("spend", help="spend as a terminal table (or CSV) from the API")
    for name in ("tenant_id", "feature", "provider", "model", "prompt_version"):
        sp.add_argument(f"--{name.replace('_', '-')}", dest=name)
    sp.add_argument("--from", dest="from_", help="start, ISO 8601 with offset")
    sp.add_argument("--to", help="end (exclusive), ISO 8601 with offset")
    sp.add_argument("--group-by", help="comma-separated: tenant_id,feature,provider,model,prompt_version,hour,day,month")
    sp.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    sp.set_defaults(fn=_run(cmd_spend))
    rp = sub.add_parser("reprice", help="recompute stored costs after a price correction (admin key)")
    rp.add_argument("--from", dest="from_", required=True, help="start, ISO 8601 with offset")
    rp.add_argument("--to", required=True, help="end (exclusive), ISO 8601 with offset")
    for name in ("provider", "model", "tenant_id"):
        rp.add_argument(f"--{name.replace('_', '-')}", dest=name)
    rp.add_argument("--dry-run", action="store_true", help="report what would change, write nothing")
    rp.set_defaults(fn=_run(cmd_reprice))
    rc = sub.add_parser("reconcile", help="compare a provider usage CSV (day, model, cost) with our spend")
    rc.add_argument("file", type=Path)
    rc.add_argument("--tenant-id", dest="tenant_id")
    rc.add_argument("--provider", help="only our events of this provider")
    rc.add_argument("--from", dest="from_", help="default: the first day in the file")
    rc.add_argument("--to", help="default: the end of the last day in the file")
    rc.add_argument("--tolerance", default="0.000001", help="USD difference reported as a mismatch (default 0.000001)")
    rc.add_argument("--all", action="store_true", help="show matching lines too")
    rc.set_defaults(fn=_run(cmd_reconcile))


def _run(fn: Any) -> Any:
    def go(args: argparse.Namespace) -> int:
        try:
            return int(fn(args, Settings()))
        except (ApiError, ReconcileError, OSError, httpx.HTTPError) as exc:
            print(f"flyball {args.command}: {exc}", file=sys.stderr)
            return 2
    return go
