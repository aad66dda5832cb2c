"""The control loop's failure paths, with fakes at its ports (producer, consumer, audit log):
a directive is published before it is audited as applied; one that cannot be published is
audited as failed, is not in force, and its alert is not committed but read again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError
from flyball.control_plane.directives import ControlLoop
from flyball.control_plane.policy import Policies, Policy
from flyball.schemas import ALERTS, DIRECTIVES, ActionKind, Alert, AlertKind, Directive, Scope
from flyball.stream_processors.errors import PermanentError, TemporaryError

from tests.fakes import FakeAuditLog, FakeClients, FakeConsumer, FakeProducer

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POLICIES = Policies(policies=(Policy(policy_id="cost-spike-throttle-tenant", alert_kind=AlertKind.COST_SPIKE,
                                     action=ActionKind.THROTTLE, ttl_s=120, cooldown_s=60, rate_per_s=0.5,
                                     burst=1),))


def _alert(tenant: str = "acme") -> Alert:
    return Alert(alert_id=f"a-{tenant}", kind=AlertKind.COST_SPIKE, scope=Scope(tenant_id=tenant),
                 severity="warning", metric="cost_usd_per_window", observed="10", baseline="1", threshold="4",
                 window_s=10, first_seen=NOW, last_seen=NOW, summary="spend spike")


async def _loop(producer: FakeProducer, audit: FakeAuditLog, consumer: FakeConsumer | None = None) -> ControlLoop:
    loop = ControlLoop(bootstrap="unused:9", audit=audit, policies=POLICIES, clock=lambda: NOW,  # type: ignore[arg-type]
                       clients=FakeClients(producer, consumer), attempts=2)  # type: ignore[arg-type]  # fakes at the ports
    loop.retry_base_s = 0.001
    loop._producer = producer  # type: ignore[assignment]  # what start() takes from the clients
    loop._consumer = consumer  # type: ignore[assignment]
    return loop


@asynccontextmanager
async def running(loop: ControlLoop) -> AsyncIterator[asyncio.Task[None]]:
    """The loop's consume task, stopped (and awaited) when the block ends."""
    task = asyncio.create_task(loop.run())
    try:
        yield task
    finally:
        await loop.stop()
        await asyncio.wait_for(task, 5)


async def until(check: Callable[[], bool], tries: int = 200) -> None:
    """Wait (at most ``tries`` x 10 ms) for ``check``; the assertions after it say what was missing."""
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.01)


async def test_a_directive_is_published_then_audited_as_applied() -> None:
    producer, audit = FakeProducer(), FakeAuditLog()
    loop = await _loop(producer, audit)
    await loop.on_alert(_alert())
    published = [Directive.model_validate_json(s.value or b"") for s in producer.on(DIRECTIVES)]
    assert [d.scope.tenant_id for d in published] == ["acme"]
    assert audit.decisions() == ["applied"] and audit.rows[0][3] == published[0].directive_id
    assert [d.directive_id for d in loop.active()] == [published[0].directive_id]


async def test_a_directive_that_cannot_be_published_is_audited_failed_and_not_in_force() -> None:
    producer = FakeProducer(fail_with=[TemporaryError("broker down")] * 2)
    audit = FakeAuditLog()
    loop = await _loop(producer, audit)
    with pytest.raises(TemporaryError):
        await loop.on_alert(_alert())
    assert producer.on(DIRECTIVES) == []
    assert audit.decisions() == ["failed"] and "broker down" in audit.rows[0][9]
    assert loop.active() == [] and loop.last_fired == {}  # no cooldown started by what did not happen


async def test_the_alert_of_an_unpublished_directive_is_not_committed_and_is_read_again() -> None:
    tp = TopicPartition(ALERTS, 0)
    consumer = FakeConsumer(tp, [_alert("acme").model_dump_json().encode(), _alert("globex").model_dump_json().encode()])
    # the first two sends fail (both attempts for acme's directive), then the broker is back
    producer = FakeProducer(fail_with=[TemporaryError("broker down")] * 2)
    audit = FakeAuditLog()
    loop = await _loop(producer, audit, consumer)
    async with running(loop):
        await until(lambda: len(producer.on(DIRECTIVES)) == 2)
    # nothing was committed before acme's directive was out (the first commit carrying an offset
    # covers both alerts; the empty one is the starting position recorded at assignment)
    first_with_offsets = next(c for c in consumer.commits if c)
    assert first_with_offsets == {tp: 2}
    assert sorted(Directive.model_validate_json(s.value or b"").scope.tenant_id or "" for s in
                  producer.on(DIRECTIVES)) == ["acme", "globex"]
    assert audit.decisions() == ["failed", "applied", "applied"]


async def test_a_permanent_publish_failure_is_audited_and_the_loop_moves_on() -> None:
    tp = TopicPartition(ALERTS, 0)
    consumer = FakeConsumer(tp, [_alert("acme").model_dump_json().encode(), _alert("globex").model_dump_json().encode()])
    producer = FakeProducer(fail_with=[PermanentError("kafka: MessageSizeTooLargeError")])
    audit = FakeAuditLog()
    loop = await _loop(producer, audit, consumer)
    async with running(loop):
        await until(lambda: bool(producer.on(DIRECTIVES)))
        await asyncio.sleep(0.05)
    assert [Directive.model_validate_json(s.value or b"").scope.tenant_id for s in producer.on(DIRECTIVES)] == ["globex"]
    assert audit.decisions() == ["failed", "applied"]
    assert {tp: 2} in consumer.commits


async def test_an_audit_write_that_fails_is_written_later_and_the_directive_stays_in_force() -> None:
    producer = FakeProducer()
    audit = FakeAuditLog(fail_with=[TemporaryError("clickhouse unavailable")] * 2)  # both attempts
    loop = await _loop(producer, audit)
    await loop.on_alert(_alert("acme"))
    assert len(producer.on(DIRECTIVES)) == 1 and len(loop.active()) == 1 and audit.rows == []
    await loop.on_alert(_alert("globex"))  # the next write carries the row left over
    assert audit.decisions() == ["applied", "applied"]
    assert [r[5] for r in audit.rows] == ["acme", "globex"]


async def test_a_failed_commit_does_not_stop_the_loop_and_the_next_commit_covers_it() -> None:
    tp = TopicPartition(ALERTS, 0)
    consumer = FakeConsumer(tp, [_alert("acme").model_dump_json().encode()],
                            fail_commits=[CommitFailedError("rebalanced")])
    producer, audit = FakeProducer(), FakeAuditLog()
    loop = await _loop(producer, audit, consumer)
    async with running(loop) as task:
        await until(lambda: bool(producer.on(DIRECTIVES)))
        consumer.add(_alert("globex").model_dump_json().encode())
        await until(lambda: {tp: 2} in consumer.commits)
    assert not task.cancelled() and task.exception() is None
    assert {tp: 2} in consumer.commits and {tp: 1} not in consumer.commits  # the first commit failed
    assert audit.decisions() == ["applied", "applied"]
