"""SLO burn alerts live and in replay agree: the control plane's monitor (the ``slo_minute``
rollup in real chDB, evaluated minute by minute) and ``flyball replay`` (event time, no
ClickHouse) raise the same ``slo_burn`` alerts, with the same ids, evidence and resolution, over
the same events, including duplicates and a re-inserted batch."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from flyball.control_plane.replay import replay
from flyball.control_plane.runtime import load_prices
from flyball.control_plane.slo import load_slos
from flyball.control_plane.slo_live import SLOMonitor
from flyball.control_plane.slo_replay import EventTimeSLOs
from flyball.schemas import Alert
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore
from flyball.control_plane.migrations import ALL_MIGRATIONS

T0 = datetime(2026, 11, 3, 8, 0, tzinfo=UTC)
OUTAGE = (T0 + timedelta(minutes=60), T0 + timedelta(minutes=95))
END = T0 + timedelta(minutes=125)
SLOS = load_slos("""
slos:
  - {slo_id: chat-availability, kind: availability, feature: chat, target: 0.99, window_days: 7}
  - {slo_id: chat-latency, kind: latency, feature: chat, tenant_id: "*", target: 0.99, latency_ms: 2000, ttft_ms: 500}
  - {slo_id: search-availability, kind: availability, feature: search, target: 0.995}
""")


def events(seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    out = []
    t = T0
    while t < END:
        for tenant in ("acme", "globex"):
            for feature in ("chat", "search"):
                for _ in range(rnd.randrange(4, 9)):
                    ts = t + timedelta(seconds=rnd.uniform(0, 59.9))
                    outage = feature == "chat" and OUTAGE[0] <= ts < OUTAGE[1]
                    status = "error" if rnd.random() < (0.4 if outage else 0.002) else "ok"
                    slow = tenant == "acme" and outage
                    latency = rnd.uniform(2500, 6000) if slow and rnd.random() < 0.6 else rnd.uniform(100, 1500)
                    e: dict[str, Any] = {
                        "schema_version": 1, "event_type": "llm_call", "event_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                        "ts": ts.isoformat(), "tenant_id": tenant, "feature": feature, "provider": "openai",
                        "model": "gpt-4o-mini", "input_tokens": 100, "output_tokens": 10,
                        "latency_ms": round(latency, 3), "status": status}
                    if rnd.random() < 0.3:
                        e["stream"] = True
                        e["ttft_ms"] = round(min(latency, rnd.uniform(50, 900 if slow else 400)), 3)
                    out.append(e)
        t += timedelta(minutes=1)
    out.sort(key=lambda e: e["ts"])
    return out


def view(a: Alert) -> tuple[Any, ...]:
    return (a.alert_id, a.status, a.severity, a.scope.key(), a.first_seen, a.opened_at, a.last_seen, a.details)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClickHouseStore, list[bytes], Path]]:
    store = ClickHouseStore(f"chdb://{tmp_path_factory.mktemp('ch')}")
    store.migrate(ALL_MIGRATIONS)
    wire = [orjson.dumps(e) for e in events(5)]
    wire += wire[::13]  # duplicates on the wire
    book = load_prices(None)
    rows = Pipeline(lambda: book).process(wire, now=None).rows
    store.call(store.write_events, rows)
    store.call(store.write_events, rows[1000:1500])  # a re-inserted batch
    path = tmp_path_factory.mktemp("replay") / "events.jsonl"
    path.write_bytes(b"\n".join(wire) + b"\n")
    yield store, wire, path
    store.close()


def test_live_monitor_and_replay_raise_the_same_alerts(data: tuple[ClickHouseStore, list[bytes], Path],
                                                       tmp_path: Path) -> None:
    store, wire, path = data

    async def never(_: list[Alert]) -> None:
        raise AssertionError("step() does not publish")

    monitor = SLOMonitor(store, slos=lambda: SLOS, publish=never)
    live: list[Alert] = []
    t = T0
    while t <= END:
        live += monitor.step(t + timedelta(seconds=17))  # a wall clock inside the minute
        t += timedelta(minutes=1)

    rows = Pipeline(lambda: load_prices(None)).process(wire, now=None).rows
    tracker = EventTimeSLOs(SLOS)
    in_time: list[Alert] = []
    tracker.add(rows)
    t = T0
    while t < END:
        t += timedelta(minutes=1)
        in_time += tracker.advance(t)
    assert [view(a) for a in live] == [view(a) for a in in_time]

    opened = [a for a in live if a.status == "open"]
    assert opened, "the outage raised no slo_burn alert"
    first = {a.alert_id: a for a in reversed(live)}
    scopes = {a.scope.key() for a in opened}
    assert scopes == {"feature=chat", "tenant_id=acme|feature=chat"}  # search stayed healthy, globex was fast
    for a in first.values():
        assert OUTAGE[0] <= a.first_seen <= (a.opened_at or a.first_seen) <= OUTAGE[1] + timedelta(minutes=5)
    page = next(a for a in live if a.scope.key() == "feature=chat" and a.severity == "critical")
    assert page.details is not None
    assert page.details["slo_id"] == "chat-availability" and page.details["rule"] in ("fast", "slow")
    assert float(page.details["budget_consumed"]) > 0
    assert float(page.details["budget_remaining"]) == pytest.approx(1 - float(page.details["budget_consumed"]))

    # flyball replay over the recorded events: the same alerts, in their latest version
    out = tmp_path / "out"
    replay(path, out, book=load_prices(None), slos=SLOS)
    replayed = {a["alert_id"]: a for a in map(orjson.loads, (out / "alerts.jsonl").read_bytes().splitlines())
                if a["kind"] == "slo_burn"}
    latest = {a.alert_id: a.model_dump(mode="json") for a in live}
    assert replayed.keys() == latest.keys()
    for alert_id, a in replayed.items():
        want = latest[alert_id]
        assert (a["status"], a["first_seen"], a["opened_at"], a["details"]["rule"]) == \
            (want["status"], want["first_seen"], want["opened_at"], want["details"]["rule"])
    actions = [orjson.loads(x) for x in (out / "actions.jsonl").read_bytes().splitlines()]
    acme = {i for i, a in replayed.items() if a["scope"].get("tenant_id") == "acme" and a["severity"] == "critical"}
    assert acme, "the per-tenant latency objective of acme did not page"
    # through the shipped policies: a throttle of acme's chat proposed for approval, not once per
    # re-published alert: again only after the proposal lapsed unapproved (its 900 s TTL)
    pending = [x for x in actions if x["decision"] == "pending" and x["alert_id"] in acme]
    assert pending and all(x["directive"]["scope"] == {"tenant_id": "acme", "feature": "chat"} for x in pending)
    times = sorted(datetime.fromisoformat(x["directive"]["created_at"]) for x in pending)
    assert all(b - a >= timedelta(seconds=900) for a, b in zip(times, times[1:], strict=False))
