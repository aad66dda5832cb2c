"""Unit tests for the shim's on-disk spill log (``flyball.producers.buffer``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collections.abc import Iterator

from flyball.producers import buffer
from flyball.producers.buffer import SpillLocked, decode, encode

_OPEN: list[buffer.SpillLog] = []


class SpillLog(buffer.SpillLog):
    """The log under test, closed after each test: a leaked lock file is an error in this suite."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _OPEN.append(self)


def open_lane(directory: Path, **options: object) -> buffer.SpillLog:
    log = buffer.open_lane(directory, **options)
    _OPEN.append(log)
    return log


@pytest.fixture(autouse=True)
def _close_logs() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()

E = "flyball.events.v1"


def batch(start: int, n: int = 3, topic: str = E) -> list[tuple[str, bytes | None, bytes]]:
    return [(topic, f"t{i % 2}".encode(), f'{{"n":{i}}}'.encode()) for i in range(start, start + n)]


def drain(log: SpillLog) -> list[list[tuple[str, bytes | None, bytes]]]:
    out = []
    while (frame := log.peek()) is not None:
        out.append(frame)
        log.ack()
    return out


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from([E, "flyball.events.dlq.v1"]), st.none() | st.binary(max_size=20),
                          st.binary(max_size=200)), max_size=20))
def test_a_frame_decodes_to_the_records_encoded(records: list[tuple[str, bytes | None, bytes]]) -> None:
    assert decode(encode(records)[8:]) == records


def test_batches_come_back_oldest_first_and_the_log_empties(tmp_path: Path) -> None:
    log = SpillLog(tmp_path)
    for i in range(3):
        assert log.append(batch(i * 3))
    assert (log.pending_frames, log.pending_records) == (3, 9)
    assert drain(log) == [batch(0), batch(3), batch(6)]
    assert log.empty and log.size_bytes == 0
    assert not list(tmp_path.glob("*.seg"))


def test_a_new_log_on_the_same_directory_replays_what_was_not_acknowledged(tmp_path: Path) -> None:
    log = SpillLog(tmp_path)
    for i in range(4):
        log.append(batch(i * 3))
    log.peek()
    log.ack()
    log.close()
    reopened = SpillLog(tmp_path)
    assert reopened.pending_records == 9
    assert drain(reopened) == [batch(3), batch(6), batch(9)]


def test_appends_after_a_restart_go_behind_the_old_batches(tmp_path: Path) -> None:
    log = SpillLog(tmp_path)
    log.append(batch(0))
    log.close()
    reopened = SpillLog(tmp_path)
    reopened.append(batch(3))
    assert drain(reopened) == [batch(0), batch(3)]


def test_segments_roll_and_replay_across_them_in_order(tmp_path: Path) -> None:
    log = SpillLog(tmp_path, segment_bytes=200)
    for i in range(10):
        log.append(batch(i * 3))
    assert len(list(tmp_path.glob("*.seg"))) > 2
    log.close()
    reopened = SpillLog(tmp_path, segment_bytes=200)
    assert drain(reopened) == [batch(i * 3) for i in range(10)]
    assert not list(tmp_path.glob("*.seg"))


def test_an_append_beyond_the_cap_is_refused_and_the_log_keeps_its_contents(tmp_path: Path) -> None:
    frame_size = len(encode(batch(0)))
    log = SpillLog(tmp_path, max_bytes=2 * frame_size)
    assert log.append(batch(0)) and log.append(batch(3))
    assert not log.append(batch(6))
    assert drain(log) == [batch(0), batch(3)]
    assert log.append(batch(9))  # room again once replayed


def test_a_torn_tail_is_cut_off_and_the_frames_before_it_survive(tmp_path: Path) -> None:
    log = SpillLog(tmp_path)
    log.append(batch(0))
    log.append(batch(3))
    log.close()
    [segment] = tmp_path.glob("*.seg")
    data = segment.read_bytes()
    segment.write_bytes(data[:-5])  # a crash in the middle of the second append
    reopened = SpillLog(tmp_path)
    assert reopened.torn_frames == 1
    assert drain(reopened) == [batch(0)]


def test_a_corrupted_frame_is_not_replayed(tmp_path: Path) -> None:
    log = SpillLog(tmp_path)
    log.append(batch(0))
    log.close()
    [segment] = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert SpillLog(tmp_path).peek() is None


def test_a_second_process_cannot_open_a_held_directory_but_gets_its_own_lane(tmp_path: Path) -> None:
    first = open_lane(tmp_path)
    with pytest.raises(SpillLocked):
        SpillLog(first.directory)
    second = open_lane(tmp_path)
    assert second.directory != first.directory
    first.append(batch(0))
    first.close()
    third = open_lane(tmp_path)  # the released lane, with what its holder left
    assert third.directory == first.directory and third.pending_records == 3


def test_peek_joins_whole_frames_up_to_max_records_and_ack_moves_past_all_of_them(tmp_path: Path) -> None:
    log = SpillLog(tmp_path)
    for i in range(5):
        log.append(batch(i * 3))
    assert log.peek(7) == batch(0) + batch(3)  # a third frame would make 9
    log.ack()
    assert log.pending_frames == 3
    assert log.peek(100) == batch(6) + batch(9) + batch(12)
    log.ack()
    assert log.empty
    assert log.peek(1) is None


def test_peek_returns_one_frame_even_if_it_is_larger_than_max_records(tmp_path: Path) -> None:
    log = SpillLog(tmp_path)
    log.append(batch(0, n=10))
    assert log.peek(2) == batch(0, n=10)
