"""The evaluation traffic's brief variants (bench/evaltraffic.py): issue #13's incident sizes, and
days that differ only in those sizes, so a strong and a subtle run compare like with like."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from evaltraffic import BRIEF_STRONG, BRIEF_SUBTLE, KINDS, VARIANTS, Day


def small(variant: str) -> Day:
    # two tenants at a few calls an hour: the day's shape, not its volume
    return Day(7, spec=replace(VARIANTS[variant], tenants=2, rate_range=(0.001, 0.002)))


def test_the_brief_variants_carry_its_sizes_and_size_classes() -> None:
    strong, subtle = small("S").labels()["incidents"], small("U").labels()["incidents"]
    assert [i["kind"] for i in strong] == list(KINDS)
    assert {i["kind"]: i["size"] for i in strong} == dict(BRIEF_STRONG)
    assert {i["kind"]: i["size"] for i in subtle} == dict(BRIEF_SUBTLE)
    assert {i["size_class"] for i in strong} == {"strong"}
    assert {i["size_class"] for i in subtle} == {"subtle"}


def test_a_seeds_strong_and_subtle_days_differ_only_in_incident_size() -> None:
    strong, subtle = small("S").labels()["incidents"], small("U").labels()["incidents"]
    # (a runaway request's length is its size: its calls come 3-12 s apart)
    assert [(i["kind"], i["scope"], i["start"], i["kind"] == "runaway_loop" or i["end"]) for i in strong] == \
        [(i["kind"], i["scope"], i["start"], i["kind"] == "runaway_loop" or i["end"]) for i in subtle]
    assert VARIANTS["S"].rate_range == VARIANTS["U"].rate_range == (0.03, 0.25)
