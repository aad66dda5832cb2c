"""`flyball replay`: the live pipeline and policies over recorded events, in event time, with no
Kafka and no ClickHouse. Same cores as the worker and the control loop, so the outputs are what
live would have done."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from flyball.schemas import Directive
from flyball.stream_processors.detectors import Detectors, SensitivityTable
from flyball.stream_processors.pipeline import EVENT_COLUMNS, Pipeline
from flyball.stream_processors.pricing import PriceBook

from .escaping import csv_text
from .policy import Action, History, Policies, decide_actions, expire, observe
from .policy_file import DEFAULT_POLICIES, load_policies
from .slo import DEFAULT_SLOS, SLOs
from .slo_replay import EventTimeSLOs

__all__ = ["ReplaySummary", "load_policies", "replay"]

COL = {name: i for i, name in enumerate(EVENT_COLUMNS)}


@dataclass
class ReplaySummary:
    events: int = 0
    stored: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    alerts: int = 0
    actions: int = 0


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        for i, line in enumerate(f):
            line = line.rstrip(b"\r\n")
            if i == 0 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a UTF-8 byte-order mark (editors on Windows write one): not the event's
            if line.strip():
                yield line


def _batches(items: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def replay(events: Path, out: Path, *, book: PriceBook, policies: Policies = DEFAULT_POLICIES,
           batch_size: int = 5_000, slos: SLOs = DEFAULT_SLOS,
           sensitivity: SensitivityTable | None = None) -> ReplaySummary:
    out.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline(lambda: book, detectors=Detectors(sensitivity=sensitivity or SensitivityTable()))
    objectives = EventTimeSLOs(slos)  # slo_burn alerts, evaluated at each minute of event time
    summary = ReplaySummary()
    spend: dict[tuple[str, str, str, str, str], list[Any]] = {}
    alerts: dict[str, Any] = {}
    active: dict[str, Directive] = {}
    last_fired: dict[str, Any] = {}
    history = History()
    with (out / "dlq.jsonl").open("wb") as dlq, (out / "actions.jsonl").open("wb") as actions_f:
        def record(actions: list[Action]) -> None:
            for a in actions:
                d = a.directive
                if d is not None and str(a.decision) in ("applied", "extended", "expired", "reverted", "pending"):
                    active[d.key()] = d
                    if str(a.decision) == "applied":
                        last_fired[d.key()] = d.created_at
                actions_f.write(orjson.dumps({
                    "decision": str(a.decision), "scope": a.scope.compact(), "reason": a.reason,
                    "policy_id": f"{a.policy.policy_id}@v{a.policy.version}" if a.policy else None,
                    "alert_id": a.alert.alert_id if a.alert else (d.alert_id if d else None),
                    "directive": d.model_dump(mode="json") if d else None,
                }) + b"\n")
                summary.actions += 1

        for batch in _batches(_lines(events), batch_size):
            result = pipeline.process(batch, now=None)
            summary.events += len(batch)
            summary.stored += len(result.rows)
            summary.duplicates += result.duplicates
            for dead in result.dead:
                dlq.write(orjson.dumps({"reason": dead.reason, "original": dead.raw.decode("utf-8", errors="replace")}) + b"\n")
            summary.dead_lettered += len(result.dead)
            for row in result.rows:
                if row[COL["event_type"]] != "llm_call":
                    continue
                key = (row[COL["tenant_id"]], row[COL["feature"]], row[COL["provider"]], row[COL["model"]],
                       row[COL["ts"]].date().isoformat())
                agg = spend.setdefault(key, [0, Decimal(0), 0])
                agg[0] += 1
                cost = row[COL["cost_usd"]]
                if cost is None:
                    agg[2] += 1
                else:
                    agg[1] += cost
            objectives.add(result.rows)
            burn = objectives.advance(pipeline.watermark) if pipeline.watermark is not None else []
            for alert in [*result.alerts, *burn]:
                alerts[alert.alert_id] = alert
                now = alert.last_seen
                history = observe(history, alert)
                record(expire(list(active.values()), now=now, history=history, policies=policies))
                record(decide_actions(alert, [d for d in active.values() if d.state in ("active", "pending")], policies,
                              now=now, history=replace(history, last_fired=last_fired)))
            if pipeline.watermark is not None:
                record(expire([d for d in active.values() if d.state in ("active", "pending")],
                              now=pipeline.watermark, history=history, policies=policies))
    summary.alerts = len(alerts)
    with (out / "alerts.jsonl").open("wb") as f:
        for alert in sorted(alerts.values(), key=lambda a: (a.first_seen, a.alert_id)):
            f.write(orjson.dumps(alert.model_dump(mode="json")) + b"\n")
    with (out / "spend.csv").open("w", newline="") as text:
        w = csv.writer(text)
        w.writerow(["tenant_id", "feature", "provider", "model", "day", "events", "cost_usd", "unpriced_events"])
        for key in sorted(spend):
            events_n, cost, unpriced = spend[key]
            w.writerow([*map(csv_text, key), events_n, format(cost, "f"), unpriced])
    return summary
