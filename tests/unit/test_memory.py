"""The worker's memory hygiene: when it trims (the clock is passed in) and that a failing purge
never stops the worker."""

from __future__ import annotations

from flyball.stream_processors.errors import TemporaryError
from flyball.stream_processors.memory import MemoryHygiene, TrimSchedule


def test_the_first_trim_comes_one_interval_after_the_first_look() -> None:
    schedule = TrimSchedule(60.0)
    assert [schedule.due(t) for t in (100.0, 130.0, 159.9, 160.0)] == [False, False, False, True]


def test_trims_are_at_most_one_per_interval_counted_from_the_last_one() -> None:
    schedule = TrimSchedule(60.0)
    schedule.due(0.0)
    looks = [61.0, 62.0, 120.0, 121.0, 300.0, 301.0, 359.0, 360.0]
    assert [t for t in looks if schedule.due(t)] == [61.0, 121.0, 300.0, 360.0]


def test_an_interval_of_zero_never_trims() -> None:
    schedule = TrimSchedule(0.0)
    assert not any(schedule.due(t) for t in (0.0, 1e6, 2e6))


async def test_a_tick_trims_and_purges_only_when_due() -> None:
    calls: list[str] = []

    async def purge() -> None:
        calls.append("purge")
    hygiene = MemoryHygiene(TrimSchedule(60.0), trim=lambda: calls.append("trim") or 1, purge=purge)
    for now in (0.0, 30.0, 60.0, 90.0, 120.0):
        await hygiene.tick(now)
    assert calls == ["trim", "purge", "trim", "purge"]


async def test_a_failing_purge_is_logged_and_the_next_one_still_runs() -> None:
    attempts: list[float] = []

    async def purge() -> None:
        attempts.append(0.0)
        if len(attempts) == 1:
            raise TemporaryError("clickhouse unavailable")
    hygiene = MemoryHygiene(TrimSchedule(10.0), trim=None, purge=purge)
    for now in (0.0, 10.0, 20.0):
        await hygiene.tick(now)  # the first purge raises inside the tick; the tick does not
    assert len(attempts) == 2
