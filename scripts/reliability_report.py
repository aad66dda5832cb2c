#!/usr/bin/env python3
"""Write the figures of the last chaos run into docs/RELIABILITY.md.

    reliability_report.py RESULTS.jsonl DOC.md --section chaos|soak --broker "Apache Kafka 4.1.1"

RESULTS is what the chaos suite appended (one JSON object per scenario, chaos/harness.py
``save``). The table replaces whatever lies between the two marker lines of DOC; the rest of
the document (the threat model) is left as written. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BEGIN = "<!-- {}-results:begin (scripts/reliability_report.py writes this part) -->"
END = "<!-- {}-results:end -->"


def table(results: list[dict[str, Any]], broker: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Last run: {when} on {broker}; {platform.machine()}, {_cores()} cores (shared with other work: "
        "times are upper bounds, not benchmarks).",
        "",
        "| scenario | events | faults injected | lost | duplicated | recovery (s) | spend stored = expected (USD) "
        "| alerts lost | directives lost / applied twice | result |",
        "|---|---:|---|---:|---:|---|---|---:|---|---|",
    ]
    for r in results:
        spend = r["spend_stored"] if r["spend_stored"] == r["spend_expected"] else \
            f"{r['spend_stored']} != {r['spend_expected']}"
        recovery = ", ".join(f"{x:g}" for x in r["recovery_s"]) or f"drain {r['drain_s']:g}"
        directives = f"{r['directives_lost']} / {r['directives_applied_twice']} of {r['directives']}" \
            if r["directives"] else "n/a (no control plane)"
        result = "pass" if not r["problems"] else "FAIL: " + "; ".join(r["problems"])
        lines.append(f"| {r['scenario']} | {r['events']:,} | {'; '.join(r['faults'])} | {r['lost']} | "
                     f"{r['duplicated']} | {recovery} | {spend} | {r['alerts_lost']} of {r['alerts_expected']} | "
                     f"{directives} | {result} |")
    extras = [(r["scenario"], r["extra"]) for r in results if r.get("extra")]
    if extras:
        lines.append("")
        for name, extra in extras:
            shown = ", ".join(f"{k} {v}" for k, v in extra.items())
            lines.append(f"- {name}: {shown}")
    return "\n".join(lines)


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("doc", type=Path)
    ap.add_argument("--broker", default="Apache Kafka")
    ap.add_argument("--section", default="chaos", choices=["chaos", "soak"])
    a = ap.parse_args(argv)
    if not a.results.exists():
        print(f"reliability_report: {a.results} does not exist (no chaos run): {a.doc} left as it is",
              file=sys.stderr)
        return 1
    results = [json.loads(line) for line in a.results.read_text().splitlines() if line.strip()]
    doc = a.doc.read_text()
    begin, end = BEGIN.format(a.section), END.format(a.section)
    if begin not in doc or end not in doc:
        print(f"reliability_report: {a.doc} lacks the marker lines", file=sys.stderr)
        return 1
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    a.doc.write_text(f"{head}{begin}\n{table(results, a.broker)}\n{end}{tail}")
    print(f"reliability_report: {len(results)} scenarios -> {a.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
