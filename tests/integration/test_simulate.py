"""`flyball simulate` then `flyball replay`, as a user runs them: the labelled incident is alerted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("scenario", ["error_rate", "safety_burst"])
def test_simulated_incident_is_found_by_replay(tmp_path: Path, scenario: str) -> None:
    events = tmp_path / "traffic.jsonl"
    cli = [sys.executable, "-m", "flyball.control_plane.cli"]
    done = subprocess.run([*cli, "simulate", "--out", str(events), "--scenario", scenario, "--seed", "3"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    labels = json.loads((tmp_path / "traffic.labels.json").read_text())
    (incident,) = labels["incidents"]
    assert incident["kind"] == scenario
    done = subprocess.run([*cli, "replay", "--events", str(events), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    alerts = [json.loads(line) for line in (tmp_path / "out" / "alerts.jsonl").read_text().splitlines()]
    hits = [a for a in alerts if a["kind"] == scenario
            and all(a["scope"].get(k, v) == v for k, v in incident["scope"].items())]
    assert hits, alerts
    assert incident["start"] <= hits[0]["opened_at"].replace("+00:00", "Z") <= incident["end"]


def test_simulate_refuses_an_unknown_scenario(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "flyball.control_plane.cli", "simulate", "--out",
                           str(tmp_path / "x.jsonl"), "--scenario", "nope"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "scenario: unknown 'nope'" in done.stderr
