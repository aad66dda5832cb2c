"""Unit tests for the scenario generator (``flyball.stream_processors.simulate``)."""

from __future__ import annotations

from collections import Counter

import pytest

from flyball.schemas import parse_event
from flyball.stream_processors.simulate import KINDS, simulate


def test_same_seed_same_traffic_and_labels() -> None:
    a, b = simulate("tool_failure", 7), simulate("tool_failure", 7)
    assert list(a.lines()) == list(b.lines()) and a.labels() == b.labels()
    assert list(simulate("tool_failure", 8).lines()) != list(a.lines())


def test_incidents_scenario_labels_one_incident_of_every_kind_after_warm_up() -> None:
    sim = simulate("incidents", 1)
    labels = sim.labels()
    assert sorted(i["kind"] for i in labels["incidents"]) == sorted(KINDS)
    for inc in sim.incidents:
        assert sim.start + 3600 <= inc.start < inc.end <= sim.end


def test_clean_scenario_has_every_event_type_and_no_incidents() -> None:
    sim = simulate("clean", 0, hours=2)
    labels = sim.labels()
    assert labels["incidents"] == [] and labels["tenant_days"] == pytest.approx(len(labels["tenants"]) / 12)
    types = Counter(body["event_type"] for _, body in sim.events)
    assert set(types) == {"llm_call", "tool_call", "retrieval", "safety_trigger"}
    times = [t for t, _ in sim.events]
    assert times == sorted(times)


def test_every_simulated_event_is_valid() -> None:
    sim = simulate("runaway_loop", 2)
    lines = list(sim.lines())
    assert len(lines) == len(sim.events) > 0
    for line, (_, body) in zip(lines, sim.events, strict=True):
        assert parse_event(line).event_type == body["event_type"]  # parse_event raises on an invalid event


def test_unknown_scenario_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="scenario: unknown 'outage'.*clean"):
        simulate("outage", 0)
