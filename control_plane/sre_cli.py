"""`flyball alerts|directives|actions|revert|pin|extend|approve|reject|ack|silence|policies|versions`:
the SRE workflow from a terminal, as an HTTP client of the API (``FLYBALL_API_URL`` and
``FLYBALL_API_KEY``; "only the clients talk to the API")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from .finance_cli import ApiError, _check


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLYBALL_", extra="ignore", frozen=True)

    api_url: str = "http://127.0.0.1:8000"
    api_key: SecretStr | None = None


def _request(method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
             content: bytes | None = None) -> Any:
    s = ClientSettings()
    if s.api_key is None:
        raise ApiError("FLYBALL_API_KEY is not set (an sre or admin key)")
    headers = {"Authorization": f"Bearer {s.api_key.get_secret_value()}"}
    try:
        r = httpx.request(method, s.api_url.rstrip("/") + path, params={k: v for k, v in (params or {}).items()
                                                                         if v is not None},
                          json=json, content=content, headers=headers, timeout=15)
    except httpx.HTTPError as exc:
        raise ApiError(f"cannot reach {s.api_url}: {exc}") from exc
    return _check(r).json()


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def cmd_alerts(args: argparse.Namespace) -> int:
    rows = _request("GET", "/v1/alerts", params={"status": args.status, "kind": args.kind,
                                                 "tenant_id": args.tenant, "limit": args.limit})
    print(_table(rows, ["alert_id", "kind", "severity", "status", "scope", "last_seen", "acknowledged_by",
                        "silenced_until"]))
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    """A feature's live versions side by side: share, verdict, and each metric as new vs incumbent."""
    out = _request("GET", "/v1/versions", params={"feature": args.feature, "tenant_id": args.tenant,
                                                  "dimension": args.dimension})
    if args.json:
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return 0
    rows = out["versions"]
    for r in rows:
        r["share"] = f"{r['share']:.1%}"
        r["regressed"] = ",".join(m["metric"] for m in r["metrics"] if m.get("regression")) or None
        r["vs"] = r["incumbent"]
    where = (args.feature or "all features") + (f" (tenant {out['tenant_id']})" if out.get("tenant_id") else "")
    print(f"{where}: {len(rows)} live version(s) as of {out['as_of'] or '-'} (window {out['window_s'] or '-'} s)")
    print(_table(rows, ["feature", "dimension", "version", "role", "calls", "share", "vs", "verdict", "calls_new",
                        "calls_old", "regressed"]))
    for r in rows:
        if r["metrics"]:
            print(f"\n{r['feature']} {r['dimension']} {r['version']} vs {r['incumbent']}:")
            print(_table([{**m, "interval": f"[{m['interval'][0]}, {m['interval'][1]}]"} for m in r["metrics"]],
                         ["metric", "new", "old", "effect", "min_effect", "interval", "p_value", "regression"]))
    return 0


def cmd_directives(args: argparse.Namespace) -> int:
    rows = _request("GET", "/v1/directives", params={"state": args.state, "tenant_id": args.tenant})
    for r in rows:
        r["limit"] = (f"{r['rate_per_s']}/s burst {r['burst']}" if r.get("rate_per_s") is not None
                      else (f"-> {r['to_model']}" if r.get("to_model")
                            else (f"{r['pin_field']}={r['pin_value']}" if r.get("pin_field") else "")))
    print(_table(rows, ["directive_id", "action", "state", "scope", "limit", "expires_at", "actor", "pinned",
                        "policy_id"]))
    return 0


def cmd_actions(args: argparse.Namespace) -> int:
    rows = _request("GET", "/v1/actions", params={"directive_id": args.directive, "alert_id": args.alert,
                                                  "tenant_id": args.tenant, "limit": args.limit})
    print(_table(rows, ["at", "decision", "directive_id", "scope_key", "policy_id", "actor", "reason"]))
    return 0


def _verb(verb: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        body = {"seconds": args.seconds} if verb == "extend" else None
        out = _request("POST", f"/v1/directives/{args.id}/{verb}", json=body)
        d = out["directive"]
        print(f"{out['decision']}: {d['action']} on {_cell(d['scope'])} (state {d['state']}, "
              f"expires {d['expires_at']}{', pinned' if d.get('pinned') else ''})")
        return 0

    return run


def cmd_ack(args: argparse.Namespace) -> int:
    out = _request("POST", f"/v1/alerts/{args.id}/ack", json={"note": args.note})
    print(f"acknowledged {out['alert_id']} by {out['acknowledged_by']}")
    return 0


def cmd_silence(args: argparse.Namespace) -> int:
    out = _request("POST", f"/v1/alerts/{args.id}/silence", json={"duration_s": args.seconds, "note": args.note})
    print(f"silenced {out['kind']} {_cell(out['scope'])} until {out['silenced_until']}")
    return 0


def cmd_policies(args: argparse.Namespace) -> int:
    if args.put is not None:
        out = _request("PUT", "/v1/policies", content=args.put.read_bytes())
    else:
        out = _request("GET", "/v1/policies")
    print(yaml.safe_dump(out, sort_keys=False), end="")
    return 0


def _guarded(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except (ApiError, OSError) as exc:
            print(f"flyball {args.command}: {exc}", file=sys.stderr)
            return 1

    return run


def add_commands(sub: Any) -> None:
    p = sub.add_parser("alerts", help="list alerts (API client: FLYBALL_API_URL, FLYBALL_API_KEY)")
    p.add_argument("--status", choices=["open", "resolved"])
    p.add_argument("--kind")
    p.add_argument("--tenant")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(fn=_guarded(cmd_alerts))
    p = sub.add_parser("directives", help="list directives in force (or pending approval)")
    p.add_argument("--state", choices=["active", "pending", "all"], default="active")
    p.add_argument("--tenant")
    p.set_defaults(fn=_guarded(cmd_directives))
    p = sub.add_parser("actions", help="the audit log of decisions")
    p.add_argument("--directive")
    p.add_argument("--alert")
    p.add_argument("--tenant")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(fn=_guarded(cmd_actions))
    for verb, help_ in (("revert", "end a directive now (a pending one is rejected)"),
                        ("pin", "keep a directive: no expiry, never reverted by automation"),
                        ("extend", "push a directive's expiry"), ("approve", "approve a pending directive"),
                        ("reject", "reject a pending directive")):
        p = sub.add_parser(verb, help=help_)
        p.add_argument("id", metavar="DIRECTIVE_ID")
        if verb == "extend":
            p.add_argument("--seconds", type=int, default=3600)
        p.set_defaults(fn=_guarded(_verb(verb)))
    p = sub.add_parser("ack", help="acknowledge an alert")
    p.add_argument("id", metavar="ALERT_ID")
    p.add_argument("--note", default="")
    p.set_defaults(fn=_guarded(cmd_ack))
    p = sub.add_parser("silence", help="silence an alert's notifications for a while")
    p.add_argument("id", metavar="ALERT_ID")
    p.add_argument("--for", dest="seconds", type=int, default=3600, help="seconds (default 3600)")
    p.add_argument("--note", default="")
    p.set_defaults(fn=_guarded(cmd_silence))
    p = sub.add_parser("versions", help="a feature's live prompt/model/config versions and their release verdicts")
    p.add_argument("--feature", help="one feature (default: every feature with live versions)")
    p.add_argument("--tenant")
    p.add_argument("--dimension", choices=["prompt_version", "model", "config_version"])
    p.add_argument("--json", action="store_true", help="the API's JSON answer")
    p.set_defaults(fn=_guarded(cmd_versions))
    p = sub.add_parser("policies", help="show the policies in force, or replace them (--put FILE, admin)")
    p.add_argument("--put", type=Path, metavar="FILE")
    p.set_defaults(fn=_guarded(cmd_policies))
