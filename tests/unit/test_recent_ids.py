"""The worker's in-memory dedupe window (``pipeline.RecentIds``): bounded by event time and by
a count, and still catching the duplicates a producer or a replayed batch makes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from flyball.stream_processors.pipeline import Pipeline, RecentIds
from flyball.stream_processors.pricing import load_catalog

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
BOOK = load_catalog(json.dumps({"format": "flyball.prices/1", "prices": [
    {"provider": "openai", "model": "gpt-4o-mini", "effective_from": "2025-01-01T00:00:00+00:00",
     "input": "0.00000015", "output": "0.0000006"},
]}))


def call(n: int, ts: datetime, **overrides: Any) -> bytes:
    return orjson.dumps({"schema_version": 1, "event_type": "llm_call", "event_id": str(uuid.UUID(int=n + 1)),
                         "ts": ts.isoformat(), "tenant_id": f"t{n % 7}", "provider": "openai",
                         "model": "gpt-4o-mini", "input_tokens": 100, "output_tokens": 10} | overrides)


def steady(pipe: Pipeline, seconds: int, rate: int, *, start: int = 0) -> None:
    """``rate`` events per second of event time from T0, in 10-second batches."""
    for s0 in range(0, seconds, 10):
        raws = [call(start + s * rate + k, T0 + timedelta(seconds=s, milliseconds=k))
                for s in range(s0, s0 + 10) for k in range(rate)]
        result = pipe.process(raws, now=T0 + timedelta(seconds=s0 + 10))
        assert result.duplicates == 0 and not result.dead


def test_a_resend_minutes_later_but_inside_the_window_is_a_duplicate() -> None:
    pipe = Pipeline(lambda: BOOK, dedupe_window=timedelta(minutes=5))
    steady(pipe, 240, 5)  # 4 minutes of traffic, event 0 among the first
    again = pipe.process([call(0, T0), call(10**6, T0 + timedelta(seconds=240))], now=T0 + timedelta(seconds=241))
    assert (again.duplicates, len(again.rows)) == (1, 1)


def test_the_ids_kept_follow_the_window_of_event_time_not_the_traffic_seen() -> None:
    pipe = Pipeline(lambda: BOOK, dedupe_window=timedelta(minutes=5))
    steady(pipe, 30 * 60, 10)  # 18,000 events over 30 minutes
    kept = len(pipe._seen)
    # the last 5 minutes and the minute the window's edge falls in, never the 30 minutes
    assert 5 * 60 * 10 <= kept <= 6 * 60 * 10, kept


def test_the_count_bounds_the_window_whatever_the_rate() -> None:
    ids = RecentIds(window=timedelta(hours=1), capacity=1_000)
    for s in range(600):  # 6,000 ids in 10 minutes: six times the capacity
        ts = T0 + timedelta(seconds=s)
        for k in range(10):
            assert ids.add(str(uuid.UUID(int=s * 10 + k + 1)), ts)
        ids.forget(ts)
    assert len(ids) <= 1_000, len(ids)
    # the newest minute is still there
    assert not ids.add(str(uuid.UUID(int=5_991)), T0 + timedelta(seconds=599))


def test_a_duplicate_older_than_the_window_is_still_caught_within_its_batch() -> None:
    pipe = Pipeline(lambda: BOOK, dedupe_window=timedelta(minutes=5))
    steady(pipe, 600, 2)
    old = T0 + timedelta(seconds=30)  # 9.5 minutes behind the watermark
    result = pipe.process([call(10**6, old), call(10**6, old)], now=T0 + timedelta(seconds=600))
    assert (result.duplicates, len(result.rows)) == (1, 1)
    # and the window does not keep it after the batch: memory follows event time only
    assert all(m >= (T0 + timedelta(seconds=600 - 360)).timestamp() // 60 for m in pipe._seen._minutes)


def test_hostile_timestamps_spread_over_years_do_not_grow_the_window() -> None:
    pipe = Pipeline(lambda: BOOK, dedupe_window=timedelta(minutes=5))
    steady(pipe, 60, 5)
    spread = [call(10**6 + k, T0 - timedelta(days=k)) for k in range(1, 2_000)]
    assert len(pipe.process(spread, now=T0 + timedelta(seconds=60)).rows) == 1_999
    assert len(pipe._seen) <= 60 * 5 + 1
