"""The compiled per-event add (``detectors/_windows.c``) against its definition, ``BatchWindows.add``.

The worker aggregates every event through ``BatchWindows.adder()``: the compiled add for a
fast-path ``llm_call`` in UTC, the Python method for everything else. Both must leave exactly
the same sums, first/last times, lists and sample ids, whatever the events: these tests feed
them the same generated events (all statuses, request and trace ids, out-of-order and
non-UTC timestamps, pre-1970 and far-future ones, huge token counts, events of other kinds
and pydantic models among them) and compare every container.
"""

from __future__ import annotations

import gc
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flyball.schemas import LLMCall
from flyball.schemas.events import CallStatus, ToolCall
from flyball.stream_processors.decode import FastLLMCall, FastRetrieval, FastSafetyTrigger, FastToolCall
from flyball.stream_processors.detectors import BatchWindows
from flyball.stream_processors.detectors import suite

BASE = datetime(2026, 3, 2, 12, tzinfo=UTC)
_SLOTS = ("usage", "models", "requests", "r_calls", "r_tokens", "r_first", "r_last", "r_owner", "r_ids", "tools",
          "safety", "retrieval")


def test_the_compiled_add_is_built_and_used() -> None:
    """``make test`` installs the project with its C extension; without it the worker silently
    runs the slower Python add, so its absence is a failure here, not a skip."""
    assert suite._native is not None, "flyball.stream_processors.detectors._windows was not built (setup.py)"
    b = BatchWindows()
    assert type(b.adder()).__name__ == "Adder"


def _state(b: BatchWindows) -> dict[str, Any]:
    return {name: getattr(b, name) for name in _SLOTS}


_offsets = st.sampled_from([0.0, 0.000001, 9.999999, 10.0, 10.5, 19.999999, 20.0, 35.25, -0.000001, -10.0, 61.0])
_timestamps = st.one_of(
    st.builds(lambda s: BASE + timedelta(seconds=s), _offsets),  # UTC: the compiled path
    st.builds(lambda s, h: (BASE + timedelta(seconds=s)).astimezone(timezone(timedelta(hours=h))), _offsets,
              st.sampled_from([-5, 5, 0])),  # another tzinfo object (even at +00:00): the Python path
    st.sampled_from([datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC),
                     datetime(2242, 3, 16, 12, 56, 31, tzinfo=UTC), datetime(2242, 3, 16, 12, 56, 32, tzinfo=UTC),
                     datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC)]),
)
_tokens = st.one_of(st.integers(0, 2_000_000), st.sampled_from([2**62, 2**63 - 1, 2**64, 2**80]))
_status = st.one_of(st.sampled_from(list(CallStatus)), st.sampled_from(["ok", "error", "timeout", "weird"]))
_names = st.sampled_from(["acme", "globex", "initech"])


@st.composite
def _event(draw: st.DrawFn, n: int) -> Any:
    eid = str(uuid.UUID(int=n + 1))
    ts = draw(_timestamps)
    tenant = draw(_names)
    feature = draw(st.sampled_from(["", "chat", "search"]))
    kind = draw(st.sampled_from(["fast"] * 6 + ["model", "tool", "safety", "retrieval", "model_tool"]))
    if kind == "fast":
        # msgspec's constructor does not validate: 2**80 tokens reach the compiled add as given,
        # a plain-str status (which the decoder never makes) must be handed to the Python add
        return FastLLMCall(schema_version=1,
            event_id=eid, ts=ts, tenant_id=tenant, feature=feature, provider="openai",
            model=draw(st.sampled_from(["gpt-4o", "gpt-4o-mini"])), input_tokens=draw(_tokens),
            output_tokens=draw(_tokens), status=draw(_status), latency_ms=draw(st.floats(0, 60_000)),
            ttft_ms=draw(st.one_of(st.none(), st.floats(0, 60_000))),
            request_id=draw(st.sampled_from(["", "", "r1", "r2"])),
            trace_id=draw(st.sampled_from(["", "ab" * 16, "cd" * 16])))
    if kind in ("model", "model_tool") and not datetime(2000, 1, 1, tzinfo=UTC) <= ts < datetime(2200, 1, 1, tzinfo=UTC):
        ts = BASE  # the models refuse implausible times; the fast structs (not validated) keep them
    if kind == "model":
        return LLMCall(schema_version=1, event_id=eid, ts=ts, tenant_id=tenant, feature=feature, provider="openai", model="gpt-4o",
                       input_tokens=draw(st.integers(0, 10_000)), output_tokens=5,
                       status=draw(st.sampled_from(list(CallStatus))), request_id=draw(st.sampled_from(["", "r1"])))
    if kind == "model_tool":
        return ToolCall(schema_version=1, event_id=eid, ts=ts, tenant_id=tenant, tool_name="search", status="error")
    if kind == "tool":
        return FastToolCall(schema_version=1, event_id=eid, ts=ts, tenant_id=tenant, tool_name=draw(st.sampled_from(["a", "b"])),
                            status=draw(st.sampled_from(list(CallStatus))), latency_ms=5.0)
    if kind == "safety":
        return FastSafetyTrigger(schema_version=1, event_id=eid, ts=ts, tenant_id=tenant, feature=feature, category="pii", filter_name="f")
    return FastRetrieval(schema_version=1, event_id=eid, ts=ts, tenant_id=tenant, index_name="docs",
                         status=draw(st.sampled_from(list(CallStatus))), results_count=draw(st.integers(0, 2)))


@st.composite
def _stream(draw: st.DrawFn) -> list[tuple[Any, Decimal | None]]:
    size = draw(st.integers(1, 60))
    costs = st.one_of(st.none(), st.decimals(min_value=0, max_value=10, places=9), st.just(Decimal("1E-12")))
    return [(draw(_event(i)), draw(costs)) for i in range(size)]


@settings(max_examples=300, deadline=None)
@given(_stream())
def test_the_compiled_add_leaves_what_the_python_add_leaves(events: list[tuple[Any, Decimal | None]]) -> None:
    python, native = BatchWindows(), BatchWindows()
    add = native.adder()
    for event, cost in events:
        python.add(event, cost)
        add(event, cost)
    assert _state(native) == _state(python)
    # and the same types (an int token sum must not become a float or a Decimal, nor a sum a new type)
    assert [type(x) for u in native.usage.values() for x in u] == [type(x) for u in python.usage.values() for x in u]
    assert [type(x) for m in native.models.values() for x in m] == [type(x) for m in python.models.values() for x in m]
    assert [type(x) for x in native.r_tokens] == [type(x) for x in python.r_tokens]


def test_sample_ids_stop_at_max_ids_and_keep_arrival_order() -> None:
    events = [FastLLMCall(schema_version=1, event_id=str(uuid.UUID(int=i + 1)), ts=BASE + timedelta(seconds=i * 0.1), tenant_id="acme",
                          provider="openai", model="gpt-4o", input_tokens=1, output_tokens=1,
                          status=CallStatus.ERROR if i % 2 else CallStatus.OK, request_id="r")
              for i in range(40)]
    b = BatchWindows()
    add = b.adder()
    for e in events:
        add(e, Decimal("0.01"))
    (u,) = b.usage.values()
    assert u[6:] == [e.event_id for e in events[:suite.MAX_IDS]]
    (m,) = b.models.values()
    assert m[:4] == [40, 20, 0, 0] and m[8:] == [e.event_id for e in events if e.status is CallStatus.ERROR][:suite.MAX_IDS]
    assert b.request_ids(0) == [e.event_id for e in events[:suite.MAX_IDS]]
    assert u[0] == Decimal("0.40") and u[1] == 80


def test_the_compiled_add_holds_no_reference_it_should_not() -> None:
    """Reference counts of an event's parts are back where they were once the batch is gone:
    no leak (a missing release) and no premature release (which would crash later)."""
    ts = BASE + timedelta(seconds=3)
    tenant, eid = "acme-" + str(uuid.uuid4()), str(uuid.uuid4())
    cost = Decimal("0.123")
    before = [sys.getrefcount(x) for x in (ts, tenant, eid, cost)]
    for _ in range(3):
        b = BatchWindows()
        add = b.adder()
        for status in (CallStatus.OK, CallStatus.ERROR, CallStatus.OK):
            add(FastLLMCall(schema_version=1, event_id=eid, ts=ts, tenant_id=tenant, provider="openai", model="gpt-4o", input_tokens=3,
                            output_tokens=4, status=status, request_id="r", ttft_ms=5.0), cost)
        del b, add
    gc.collect()
    assert [sys.getrefcount(x) for x in (ts, tenant, eid, cost)] == before


def test_the_compiled_add_takes_two_positional_arguments() -> None:
    add = BatchWindows().adder()
    with pytest.raises(TypeError):
        add(object())  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        add(object(), None, cost=None)  # type: ignore[call-arg]
