"""``flyball replay``'s bound on future timestamps (``control_plane.replay.screen_future``): a
forged far-future time is refused, a real jump in the traffic is not."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
from flyball.control_plane.replay import _event_time, _screened

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def line(ts: datetime | str, **extra: object) -> bytes:
    return orjson.dumps({"schema_version": 1, "event_type": "llm_call", "event_id": str(uuid.uuid4()),
                         "ts": ts if isinstance(ts, str) else ts.isoformat(), "tenant_id": "acme", "provider": "openai",
                         "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1, **extra})


def screen(batches: list[list[bytes]]) -> tuple[list[bytes], list[tuple[bytes, str]]]:
    kept, refused = [], []
    for read, k, dead in _screened(batches):
        assert len(k) + len(dead) == len(read)
        kept += k
        refused += [(d.raw, d.reason) for d in dead]
    return kept, refused


def test_a_forged_far_future_time_is_refused_naming_it_and_the_rest_is_kept() -> None:
    normal = [line(T0 + timedelta(seconds=i)) for i in range(300)]
    forged = line("2199-01-01T00:00:00Z")
    kept, refused = screen([normal[:100] + [forged] + normal[100:200], normal[200:]])
    assert kept == normal
    assert refused == [(forged, "ts: 2199-01-01T00:00:00+00:00 is more than a day after the events around it in "
                                "the file (replay's bound on future timestamps)")]


def test_a_real_jump_in_the_traffic_is_kept_even_at_the_end_of_a_batch() -> None:
    before = [line(T0 + timedelta(seconds=i)) for i in range(200)]
    after = [line(T0 + timedelta(days=30, seconds=i)) for i in range(200)]
    kept, refused = screen([before + after[:3], after[3:]])  # a month later, three events before the batch ends
    assert refused == [] and kept == before + after


def test_a_sparse_file_and_a_day_ahead_are_kept() -> None:
    weekly = [line(T0 + timedelta(weeks=i)) for i in range(12)]
    assert screen([weekly]) == (weekly, [])
    day = [line(T0 + timedelta(seconds=i)) for i in range(100)] + [line(T0 + timedelta(hours=23))]
    assert screen([day]) == (day, [])


def test_only_the_events_own_time_counts_not_an_attribute_named_ts() -> None:
    normal = [line(T0 + timedelta(seconds=i)) for i in range(100)]
    odd = orjson.dumps({"attributes": {"ts": "2199-01-01T00:00:00Z"}, **orjson.loads(line(T0))})
    forged = orjson.dumps({"attributes": {"ts": T0.isoformat()}, **orjson.loads(line("2199-01-01T00:00:00Z"))})
    assert odd.index(b'"ts"') < odd.index(b'"event_type"') and forged.index(b'"ts"') < forged.index(b'"event_type"')
    kept, refused = screen([normal + [odd, forged]])
    assert kept == normal + [odd] and [raw for raw, _ in refused] == [forged]
    assert _event_time(b'{"ts": "not a time"}') is None
