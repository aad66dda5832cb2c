"""The control loop: alerts in, directives out, every decision audited.

A reconcile loop in the kopf style: the decision is ``policy.decide`` (pure); this module only
reads alerts from Kafka, keeps the directives in force, publishes them on the compacted
directive topic, and appends one audit row per decision. On start it rebuilds the directives
in force from the compacted topic itself, so a restarted control plane forgets nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from flyball.producers.transports.kafka import start_producer
from flyball.schemas import ALERTS, DIRECTIVES, Alert, Directive, DirectiveState

from .policy import DEFAULT_POLICIES, Action, Decision, History, Policies, decide, expire, pin, revert

log = structlog.get_logger(__name__)


class AuditSink(Protocol):
    async def run(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    def write_actions(self, rows: Sequence[Sequence[Any]]) -> None: ...


def audit_row(action: Action, now: datetime) -> tuple[Any, ...]:
    d = action.directive
    return (
        str(uuid.uuid4()), now, str(action.decision), d.directive_id if d else "", action.scope.key(),
        action.scope.tenant_id or "", action.alert.alert_id if action.alert else (d.alert_id or "" if d else ""),
        (f"{action.policy.policy_id}@v{action.policy.version}" if action.policy else (d.policy_id or "" if d else "")),
        action.actor, action.reason,
        action.before.model_dump_json() if action.before else "", d.model_dump_json() if d else "",
        action.alert.model_dump_json() if action.alert else "",
    )


class ControlLoop:
    def __init__(self, *, bootstrap: str, audit: AuditSink, policies: Policies = DEFAULT_POLICIES,
                 group_id: str = "flyball-control-plane", session_timeout_ms: int = 6_000,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.bootstrap = bootstrap
        self.audit = audit
        self.policies = policies
        self.group_id = group_id
        self.session_timeout_ms = session_timeout_ms
        self.clock = clock
        self.directives: dict[str, Directive] = {}  # scope key -> latest state
        self.last_fired: dict[str, datetime] = {}
        self.ready = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()

    def active(self) -> list[Directive]:
        return [d for d in self.directives.values() if d.state == DirectiveState.ACTIVE]

    async def start(self) -> None:
        self._producer = await start_producer(self.bootstrap)
        await self._load_directives()
        self._consumer = AIOKafkaConsumer(
            ALERTS, bootstrap_servers=self.bootstrap, group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=max(self.session_timeout_ms // 6, 200), rebalance_timeout_ms=self.session_timeout_ms,
        )
        await self._consumer.start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def _load_directives(self) -> None:
        """Read the compacted topic from its start until it goes quiet (end offsets are not
        trusted: Tansu reports them too low)."""
        consumer = AIOKafkaConsumer(DIRECTIVES, bootstrap_servers=self.bootstrap, group_id=None,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            quiet = 0
            while quiet < 3:
                batch = await consumer.getmany(timeout_ms=200)
                if not batch:
                    quiet += 1
                    continue
                quiet = 0
                for recs in batch.values():
                    for rec in recs:
                        if rec.value is None:
                            continue
                        try:
                            directive = Directive.model_validate_json(rec.value)
                        except ValueError:
                            continue
                        self.directives[directive.key()] = directive
        finally:
            await consumer.stop()
        log.info("directives_loaded", active=len(self.active()))

    async def run(self) -> None:
        assert self._consumer is not None
        while not self._stopping.is_set():
            try:
                batch = await self._consumer.getmany(timeout_ms=200)
            except KafkaError as exc:
                log.warning("alert_consume_failed", error=str(exc))
                await asyncio.sleep(0.5)
                continue
            if self._consumer.assignment():
                self.ready.set()
            for recs in batch.values():
                for rec in recs:
                    try:
                        alert = Alert.model_validate_json(rec.value)
                    except ValueError as exc:
                        log.warning("alert_invalid", error=str(exc)[:200])
                        continue
                    await self.on_alert(alert)
            await self.tick()
            if batch:
                try:
                    await self._consumer.commit()
                except KafkaError as exc:
                    log.warning("commit_failed", error=str(exc))

    async def on_alert(self, alert: Alert) -> list[Action]:
        async with self._lock:
            now = self.clock()
            actions = decide(alert, self.active(), self.policies, now=now, history=History(self.last_fired))
            await self._apply(actions, now)
            return actions

    async def tick(self) -> list[Action]:
        async with self._lock:
            now = self.clock()
            actions = expire(self.active(), now=now)
            if actions:
                await self._apply(actions, now)
            return actions

    async def revert(self, directive_id: str, *, actor: str) -> Action | None:
        async with self._lock:
            found = self._find(directive_id)
            if found is None:
                return None
            now = self.clock()
            action = revert(found, actor=actor, now=now)
            await self._apply([action], now)
            return action

    async def pin(self, directive_id: str, *, actor: str) -> Action | None:
        async with self._lock:
            found = self._find(directive_id)
            if found is None:
                return None
            action = pin(found, actor=actor)
            await self._apply([action], self.clock())
            return action

    def _find(self, directive_id: str) -> Directive | None:
        return next((d for d in self.active() if d.directive_id == directive_id), None)

    async def _apply(self, actions: Sequence[Action], now: datetime) -> None:
        assert self._producer is not None
        rows = [audit_row(a, now) for a in actions]
        if rows:
            await self.audit.run(self.audit.write_actions, rows)
        for action in actions:
            d = action.directive
            log.info(f"directive_{action.decision}", scope=action.scope.key(), reason=action.reason,
                     directive_id=d.directive_id if d else None)
            if d is None or action.decision in (Decision.DRY_RUN, Decision.SKIPPED, Decision.NOTED):
                continue
            self.directives[d.key()] = d
            if action.decision == Decision.APPLIED:
                self.last_fired[d.key()] = now
            await self._producer.send_and_wait(DIRECTIVES, key=d.key().encode(), value=d.model_dump_json().encode())
