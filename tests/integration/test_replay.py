"""`flyball replay` as a user runs it: recorded events in, DLQ/spend/alerts/actions out."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson

T0 = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)


def _call(tenant: str, model: str, inp: int, out: int, ts: datetime, event_id: str | None = None) -> bytes:
    return orjson.dumps({"schema_version": 1, "event_type": "llm_call", "event_id": event_id or str(uuid.uuid4()), "ts": ts.isoformat(),
                         "tenant_id": tenant, "feature": "chat", "provider": "openai", "model": model,
                         "input_tokens": inp, "output_tokens": out})


def test_replay_writes_dlq_spend_alerts_and_actions(tmp_path: Path) -> None:
    lines, expected = [], {"calm": Decimal(0), "spiky": Decimal(0)}
    for s in range(0, 4800, 5):  # 80 minutes of baseline (the detectors' cold start is an hour)
        for tenant in expected:
            lines.append(_call(tenant, "gpt-4o-mini", 1000, 200, T0 + timedelta(seconds=s)))
            expected[tenant] += 1000 * Decimal("0.00000015") + 200 * Decimal("0.0000006")
    dup = str(uuid.uuid4())
    for i in range(20):  # the spike, with one event sent twice
        line = _call("spiky", "gpt-4o", 40_000, 3_000, T0 + timedelta(seconds=4800 + i), event_id=dup if i < 2 else None)
        lines.append(line)
        if i >= 1:
            expected["spiky"] += 40_000 * Decimal("0.0000025") + 3_000 * Decimal("0.00001")
    lines += [b'{"schema_version": 1, "event_type": "llm_call", "tenant_id": "calm"}', b"not json at all"]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "flyball.control_plane.cli", "replay", "--events", str(events),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 duplicates" in done.stdout and "2 dead-lettered" in done.stdout

    dlq = [json.loads(line) for line in (out / "dlq.jsonl").read_text().splitlines()]
    assert [d["original"] for d in dlq] == ['{"schema_version": 1, "event_type": "llm_call", "tenant_id": "calm"}', "not json at all"]
    assert "event_id" in dlq[0]["reason"] and "JSON" in dlq[1]["reason"]

    spend: dict[str, Decimal] = {}
    with (out / "spend.csv").open() as f:
        for row in csv.DictReader(f):
            spend[row["tenant_id"]] = spend.get(row["tenant_id"], Decimal(0)) + Decimal(row["cost_usd"])
    assert spend == expected

    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    # the 40k-token calls are both a cost and a token spike, for that tenant only
    assert sorted((a["kind"], a["scope"]["tenant_id"]) for a in alerts) == [("cost_spike", "spiky"), ("token_spike", "spiky")]
    cost = next(a for a in alerts if a["kind"] == "cost_spike")
    assert cost["scope"] == {"tenant_id": "spiky"} and cost["first_seen"].startswith("2026-02-01T10:20")

    actions = [json.loads(line) for line in (out / "actions.jsonl").read_text().splitlines()]
    applied = [a for a in actions if a["decision"] == "applied"]
    assert len(applied) == 1 and applied[0]["directive"]["action"] == "throttle"
    assert applied[0]["scope"] == {"tenant_id": "spiky"}


def test_replay_refuses_an_unreadable_price_file_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text("")
    (tmp_path / "prices.json").write_text(
        '{"format": "flyball.prices/1", "prices": [{"provider": "x", "model": "y", "input": "-1", "output": "1"}]}')
    done = subprocess.run([sys.executable, "-m", "flyball.control_plane.cli", "replay", "--events", str(tmp_path / "e.jsonl"),
                           "--out", str(tmp_path / "o"), "--prices", str(tmp_path / "prices.json")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "prices[0].input" in done.stderr


def test_replay_says_which_litellm_price_rows_it_left_out_and_prices_with_the_rest(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_bytes(_call("acme", "gpt-4o", 1000, 100, T0) + b"\n")
    (tmp_path / "prices.json").write_text(json.dumps({
        "gpt-4o": {"litellm_provider": "openai", "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05},
        "gpt-4o-mini": {"litellm_provider": "openai", "input_cost_per_token": 0.15, "output_cost_per_token": 0.6e6},
    }))
    done = subprocess.run([sys.executable, "-m", "flyball.control_plane.cli", "replay", "--events", str(tmp_path / "e.jsonl"),
                           "--out", str(tmp_path / "o"), "--prices", str(tmp_path / "prices.json")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "1 price row could not be read and was left out: gpt-4o-mini.output: 600000.0 USD per token" in done.stderr
    rows = list(csv.DictReader((tmp_path / "o" / "spend.csv").read_text().splitlines()))
    assert [(r["model"], Decimal(r["cost_usd"])) for r in rows] == [("gpt-4o", Decimal("0.0035"))]


def test_replay_reads_a_file_with_a_byte_order_mark_and_crlf_line_ends(tmp_path: Path) -> None:
    lines = [_call("acme", "gpt-4o", 1000, 100, T0 + timedelta(seconds=i)) for i in range(3)]
    (tmp_path / "e.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n")
    done = subprocess.run([sys.executable, "-m", "flyball.control_plane.cli", "replay", "--events", str(tmp_path / "e.jsonl"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "3 stored, 0 duplicates, 0 dead-lettered" in done.stdout


def test_replay_refuses_a_missing_events_file_or_an_out_that_is_a_file_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_bytes(_call("acme", "gpt-4o", 1000, 100, T0) + b"\n")
    (tmp_path / "a-file").write_text("")
    for events, out, said in ((tmp_path / "missing.jsonl", tmp_path / "o", "missing.jsonl: no such file"),
                              (tmp_path, tmp_path / "o", ": is a directory"),
                              (tmp_path / "e.jsonl", tmp_path / "a-file", "a-file: is a file, not a directory")):
        done = subprocess.run([sys.executable, "-m", "flyball.control_plane.cli", "replay", "--events", str(events),
                               "--out", str(out)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "o").exists()


def test_a_forged_far_future_event_is_dead_lettered_and_detection_goes_on_as_without_it(tmp_path: Path) -> None:
    from flyball.control_plane.replay import replay
    from flyball.control_plane.runtime import load_prices

    lines = [_call(t, "gpt-4o-mini", 1000, 200, T0 + timedelta(seconds=s)) for s in range(0, 4800, 5)
             for t in ("calm", "spiky")]
    lines += [_call("spiky", "gpt-4o", 40_000, 3_000, T0 + timedelta(seconds=4800 + i)) for i in range(20)]
    forged = _call("calm", "gpt-4o-mini", 1000, 200, datetime(2199, 1, 1, tzinfo=UTC))
    outs = {}
    for name, body in (("clean", lines), ("forged", lines[:500] + [forged] + lines[500:])):
        (tmp_path / f"{name}.jsonl").write_bytes(b"\n".join(body) + b"\n")
        summary = replay(tmp_path / f"{name}.jsonl", tmp_path / name, book=load_prices(None), batch_size=400)
        outs[name] = [json.loads(x) for x in (tmp_path / name / "alerts.jsonl").read_text().splitlines()]
        assert summary.dead_lettered == (name == "forged")
    assert [(a["alert_id"], a["kind"], a["status"]) for a in outs["forged"]] == \
        [(a["alert_id"], a["kind"], a["status"]) for a in outs["clean"]] != []
    dlq = json.loads((tmp_path / "forged" / "dlq.jsonl").read_text())
    assert dlq["original"] == forged.decode() and dlq["reason"].startswith("ts: 2199-01-01T00:00:00+00:00 is more than a day")
