"""`flyball replay`: the live pipeline and policies over recorded events, in event time, with no
Kafka and no ClickHouse. Same cores as the worker and the control loop, so the outputs are what
live would have done."""

from __future__ import annotations

import csv
import heapq
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from flyball.schemas import Directive
from flyball.stream_processors.detectors import Detectors, SensitivityTable
from flyball.stream_processors.pipeline import EVENT_COLUMNS, DeadLetter, Pipeline
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


# Replay has no wall clock, so the live rule (an event more than 5 minutes ahead of the worker's
# clock is refused) has no "now" to hold to, and the pipeline's event-time clock is the latest
# timestamp it has seen: one event dated 2199 in a day of 2026 would move it 170 years on,
# closing every open alert and leaving every later event too late for the detectors. So replay
# judges each event against the events around it - its batch and the next one - and refuses one
# more than ``FUTURE_SLACK_S`` after the latest twentieth of them (a handful of forged times cannot
# move that; a real jump in the traffic, a night or a month without events, moves it with them).
FUTURE_SLACK_S = 86_400.0
_TS = re.compile(rb'"ts"\s*:\s*"([^"]{1,64})"')


def _seconds(text: str) -> float | None:
    """An RFC 3339 time with offset as POSIX seconds; None if it is not one (the models say why)."""
    try:
        ts = datetime.fromisoformat(text)
        return ts.timestamp() if ts.tzinfo is not None else None
    except (ValueError, OverflowError):
        return None


def _event_time(raw: bytes) -> float | None:
    """The event's ``ts``, read cheaply: the latest ``"ts"`` in the line, which may be an
    attribute's (:func:`_top_level_ts` checks the few events that are refused)."""
    found = [t for m in _TS.findall(raw) if (t := _seconds(m.decode("ascii", "replace"))) is not None]
    return max(found) if found else None


def _top_level_ts(raw: bytes) -> float | None:
    try:
        value = orjson.loads(raw).get("ts")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return _seconds(value) if isinstance(value, str) else None


def screen_future(batch: list[bytes], times: list[float | None], around: list[float]) -> tuple[list[bytes], list[DeadLetter]]:
    """``batch`` without the events dated more than ``FUTURE_SLACK_S`` after the latest twentieth
    of ``around`` (the event times of the batch and of the next one), and those events as dead
    letters. ``times[i]`` is ``_event_time(batch[i])``. Pure."""
    if not around:
        return batch, []
    bound = heapq.nlargest(max(1, len(around) // 20), around)[-1] + FUTURE_SLACK_S
    kept: list[bytes] = []
    dead: list[DeadLetter] = []
    for raw, t in zip(batch, times, strict=True):
        if t is not None and t > bound and _top_level_ts(raw) == t:
            when = datetime.fromtimestamp(t, UTC).isoformat()
            dead.append(DeadLetter(raw=raw, reason=f"ts: {when} is more than a day after the events around it in "
                                                   "the file (replay's bound on future timestamps)"))
        else:
            kept.append(raw)
    return kept, dead


def _screened(batches: Iterable[list[bytes]]) -> Iterator[tuple[list[bytes], list[bytes], list[DeadLetter]]]:
    """(lines read, lines kept, lines refused by :func:`screen_future`) per batch, one batch ahead."""
    held: tuple[list[bytes], list[float | None]] | None = None
    for batch in batches:
        times = [_event_time(raw) for raw in batch]
        if held is not None:
            around = [t for t in (*held[1], *times) if t is not None]
            yield held[0], *screen_future(held[0], held[1], around)
        held = (batch, times)
    if held is not None:
        yield held[0], *screen_future(held[0], held[1], [t for t in held[1] if t is not None])


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

        for batch, kept, refused in _screened(_batches(_lines(events), batch_size)):
            result = pipeline.process(kept, now=None)
            summary.events += len(batch)
            summary.stored += len(result.rows)
            summary.duplicates += result.duplicates
            for dead in [*refused, *result.dead]:
                dlq.write(orjson.dumps({"reason": dead.reason, "original": dead.raw.decode("utf-8", errors="replace")}) + b"\n")
            summary.dead_lettered += len(refused) + len(result.dead)
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
