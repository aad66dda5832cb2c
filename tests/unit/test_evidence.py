"""The evidence bound (bench/evidence.py): what an oracle that knows an incident's scope, start and
end can tell from chance, on scopes built here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from evidence import assess, compound_tail

START, END, BAR = 10_000.0, 10_200.0, 1e-5
SCOPE = {"tenant_id": "t1", "feature": "chat"}


def call(t: float, status: str = "ok", tokens: int = 1000) -> dict[str, Any]:
    return {**SCOPE, "event_type": "llm_call", "_t": t, "status": status, "input_tokens": tokens,
            "output_tokens": 0, "latency_ms": 500.0}


def baseline(failures: int, calls: int = 300) -> list[dict[str, Any]]:
    """``calls`` calls in the 3 hours before START, ``failures`` of them failed."""
    return [call(START - 10_000 + 30 * i, "error" if i < failures else "ok") for i in range(calls)]


def window(failed: set[int]) -> list[dict[str, Any]]:
    """20 calls, 10 s apart from START + 5 s; the i-th failed for i in ``failed``."""
    return [call(START + 5 + 10 * i, "error" if i in failed else "ok") for i in range(20)]


def test_eight_failures_in_twenty_against_one_percent_reach_the_bar_at_the_fourth() -> None:
    # p0 = 3.5/301 = 1.16 %: 3 failures in 6 calls give p = 3.1e-5, 4 in 8 give 1.3e-6 < 1e-5
    ev = assess("error_rate", baseline(3) + window({1, 3, 5, 7, 9, 11, 13, 15}), START, END, 0.0, BAR)
    assert (ev.n, ev.k) == (20, 8)
    assert ev.p is not None and ev.p < 1e-9
    assert ev.delay_s == 5 + 10 * 7  # the fourth failure, at the eighth call


def test_one_failure_in_twenty_never_reaches_the_bar() -> None:
    ev = assess("error_rate", baseline(3) + window({4}), START, END, 0.0, BAR)
    assert (ev.n, ev.k) == (20, 1)
    assert ev.p is not None and ev.p > 0.1
    assert ev.delay_s is None


def test_without_a_baseline_there_is_no_p() -> None:
    ev = assess("error_rate", baseline(0, calls=5) + window({1, 2, 3}), START, END, 0.0, BAR)
    assert ev.p is None and ev.note == "no baseline"


def test_amounts_twelve_times_the_usual_reach_the_bar_and_a_tenth_more_do_not() -> None:
    # a baseline call of 1,000 tokens every 30 s; in the window the same rate, x12 or x1.1 the tokens
    def amounts(x: float) -> list[dict[str, Any]]:
        base = [call(START - 10_000 + 30 * i, tokens=1000) for i in range(300)]
        return base + [call(START + 30 * i + 15, tokens=int(1000 * x)) for i in range(6)]
    strong = assess("token_spike", amounts(12.0), START, END, 0.0, BAR)
    weak = assess("token_spike", amounts(1.1), START, END, 0.0, BAR)
    assert strong.p is not None and strong.p < BAR and strong.delay_s is not None
    assert weak.p is not None and weak.p > 0.01 and weak.delay_s is None


def test_the_compound_tail_is_the_poisson_tail_for_unit_amounts() -> None:
    # phi = 1: P(X >= 5 | Poisson(1)) = 1 - sum_{j<5} e^-1 / j!
    assert abs(float(compound_tail(5.0, 1.0, 1.0)) - 0.0036598468) < 1e-8
    assert float(compound_tail(0.0, 1.0, 1.0)) == 1.0


def test_runaway_loops_are_not_assessed() -> None:
    assert assess("runaway_loop", window(set()), START, END, 0.0, BAR).note == "n/a"
