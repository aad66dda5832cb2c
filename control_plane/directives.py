"""The control loop: alerts in, directives out, every decision audited.

A reconcile loop in the kopf style: the decision is ``policy.decide_actions`` (pure); this module only
reads alerts from Kafka, keeps the directives in force (and those waiting for approval),
publishes them on the compacted directive topic, appends one audit row per decision, and hands
alert transitions and automatic actions to the notifier. On start it rebuilds the directives in
force from the compacted topic itself (and, for scopes the topic lacks, from the audit log,
publishing them again: an embedded broker forgets its topics), and the pending ones and the
cooldown clocks from the audit log, so a restarted control plane forgets nothing that matters.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from flyball.schemas import (
    ALERTS,
    DIRECTIVES,
    MAX_TTL_S,
    ActionKind,
    Alert,
    Directive,
    DirectiveState,
    KeySet,
    SignatureError,
    sign,
    signer,
    verify,
)
from flyball.stream_processors.errors import PermanentError, TemporaryError, with_retry
from flyball.stream_processors.kafka import KafkaClients, classify
from flyball.stream_processors.ports import AuditLog, KafkaClientFactory

from .policy import (
    AUTOMATION,
    Action,
    History,
    Outcome,
    PUBLISHED,
    Policies,
    approve,
    create,
    decide_actions,
    expire,
    extend,
    observe,
    pin,
    reject,
    revert,
)

from .policy_file import DEFAULT_POLICIES

log = structlog.get_logger(__name__)

# automatic decisions worth a notification (extensions and skips are not)
NOTIFIED = frozenset({Outcome.APPLIED, Outcome.DRY_RUN, Outcome.PENDING, Outcome.REVERTED, Outcome.EXPIRED})


class Notifier(Protocol):
    def alert(self, alert: Alert, transition: str) -> None: ...

    def action(self, action: Action) -> None: ...


def audit_row(action: Action, now: datetime) -> tuple[Any, ...]:
    d = action.directive
    return (
        str(uuid.uuid4()), now, str(action.decision), d.directive_id if d else "", action.scope.key(),
        action.scope.tenant_id or "", action.alert.alert_id if action.alert else (d.alert_id or "" if d else ""),
        (action.policy.ref if action.policy else (d.policy_id or "" if d else "")),
        action.actor, action.reason,
        action.before.model_dump_json() if action.before else "", d.model_dump_json() if d else "",
        action.alert.model_dump_json() if action.alert else "",
    )


def restorable(published: Sequence[tuple[str, Directive]], *, known: set[str], now: datetime) -> list[Directive]:
    """Replay the audited decisions that were published, oldest first, as ``_apply`` put them
    on the compacted topic (an expiry or revert of another directive leaves a scope's current
    one alone); return those still in force (active; pinned or unexpired) on scopes not in
    ``known``."""
    topic: dict[str, Directive] = {}
    for decision, d in published:
        if decision in (Outcome.EXPIRED, Outcome.REVERTED) and d.key() in topic \
                and topic[d.key()].directive_id != d.directive_id:
            continue
        topic[d.key()] = d
    return [d for key, d in topic.items() if key not in known and d.state == DirectiveState.ACTIVE
            and (d.pinned or d.expires_at > now)]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class ControlLoop:
    def __init__(self, *, bootstrap: str, audit: AuditLog, policies: Policies = DEFAULT_POLICIES,
                 group_id: str = "flyball-control-plane", session_timeout_ms: int = 6_000,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), notifier: Notifier | None = None,
                 traffic: Callable[[], Awaitable[Mapping[str, float]]] | None = None,
                 traffic_every_s: float = 30.0, max_alert_age_s: float = 900.0,
                 clients: KafkaClientFactory | None = None, attempts: int = 6,
                 signing: KeySet | None = None,
                 instances: Callable[[], Awaitable[Mapping[str, int]]] | None = None,
                 instances_every_s: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.clients: KafkaClientFactory = clients or KafkaClients(bootstrap)
        self.attempts = attempts  # for a publish or an audit write (temporary errors; about 6 s in all)
        self.retry_base_s = 0.2
        # signs the directives published, verifies the alerts read (and directives reloaded)
        self.signing = signing or KeySet()
        # live shim instances per tenant: a throttle is shared among them (Directive.replicas)
        self._instances = instances
        self._instances_every_s = instances_every_s
        self._instances_at = float("-inf")
        self.instances: dict[str, int] = {}
        self.audit = audit
        self.policies = policies
        self.group_id = group_id
        self.session_timeout_ms = session_timeout_ms
        self.clock = clock
        self.notifier = notifier
        self.max_alert_age_s = max_alert_age_s  # older alerts (a replayed topic) are not notified
        self.directives: dict[str, Directive] = {}  # scope key -> latest published state
        self.pending: dict[str, Directive] = {}  # directive id -> waiting for approval
        self.last_fired: dict[str, datetime] = {}
        self.history = History()
        self.alert_status: dict[str, str] = {}  # alert id -> last status seen (for notifications)
        self.ready = asyncio.Event()
        self._traffic = traffic
        self._traffic_every_s = traffic_every_s
        self._traffic_at = 0.0
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        self._unaudited: list[tuple[Any, ...]] = []  # audit rows of published directives not yet written
        self._polled_at = float("-inf")
        self.stall_after_s = 60.0

    def working(self) -> bool:
        """Following the alerts: ready, and polled the broker successfully lately."""
        return self.ready.is_set() and time.monotonic() - self._polled_at < self.stall_after_s

    def active(self) -> list[Directive]:
        return [d for d in self.directives.values() if d.state == DirectiveState.ACTIVE]

    def live(self) -> list[Directive]:
        """Active and pending directives: what decisions must take into account."""
        return [*self.active(), *self.pending.values()]

    async def start(self) -> None:
        self._producer = await self.clients.producer()
        resign = await self._load_directives()
        await self._load_audit()
        await self._restore_from_audit()
        await self._resign(resign)
        # A new control-plane group starts at the end of the alert topic, not its beginning: old
        # alerts would only be ignored (older than every TTL) after a replay that delays the first
        # real decision; incidents still open are re-published as their evidence grows. A group
        # that has committed resumes where it stopped, so a restart misses nothing.
        self._consumer = self.clients.consumer(
            ALERTS, group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="latest", session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=max(self.session_timeout_ms // 6, 200), rebalance_timeout_ms=self.session_timeout_ms,
        )
        await self._consumer.start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def _load_directives(self) -> set[str]:
        """Read the compacted topic from its start until it goes quiet (end offsets are not
        trusted: Tansu reports them too low). Returns the scope keys whose latest message is
        signed with another key than the current one (see :meth:`_resign`)."""
        other_key: set[str] = set()
        consumer = self.clients.consumer(DIRECTIVES, group_id=None, auto_offset_reset="earliest",
                                         enable_auto_commit=False)
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
                            directive = Directive.model_validate_json(self._verified(rec.value, DIRECTIVES))
                        except ValueError as exc:  # SignatureError included: a forged state is not ours
                            log.warning("directive_ignored", error=str(exc)[:200])
                            continue
                        self.directives[directive.key()] = directive
                        if self.signing.enabled and signer(rec.value) != self.signing.current:
                            other_key.add(directive.key())
                        else:
                            other_key.discard(directive.key())
        finally:
            await consumer.stop()
        log.info("directives_loaded", active=len(self.active()))
        return other_key

    async def _resign(self, scopes: set[str]) -> None:
        """Key rotation: the directives in force that were signed with another key than the
        current one are published again, signed with the current key (same content, a newer
        version), so that shims can drop the old key without waiting for the directives' TTL."""
        stale = [d for d in self.active() if d.key() in scopes]
        await self._republish(stale)
        if stale:
            log.info("directives_resigned", count=len(stale), key_id=self.signing.current)

    async def _load_audit(self) -> None:
        """Pending directives and recent cooldown clocks from the audit log (when it can be read)."""
        query = getattr(self.audit, "query", None)
        if query is None:
            return
        try:
            rows = await self.audit.run(query, (
                "SELECT argMax(after, (at, action_id)) FROM actions WHERE directive_id != '' "
                "GROUP BY directive_id HAVING argMax(decision, (at, action_id)) = 'pending'"), {})
            for (after,) in rows:
                d = Directive.model_validate_json(after)
                self.pending[d.directive_id] = d
            rows = await self.audit.run(query, (
                "SELECT scope_key, max(at) FROM actions WHERE decision = 'applied' AND actor = {actor:String} "
                "AND at > now() - INTERVAL 1 DAY GROUP BY scope_key"), {"actor": AUTOMATION})
            self.last_fired.update({key: _utc(at) for key, at in rows})
        except (PermanentError, TemporaryError, ValueError) as exc:  # a cold start without history is still a start
            log.warning("audit_load_failed", error=str(exc)[:300])
        log.info("audit_loaded", pending=len(self.pending), cooldowns=len(self.last_fired))

    async def _restore_from_audit(self) -> None:
        """Directives the audit log says are in force but the directive topic lacks (the embedded
        broker of `flyball up` keeps topics in memory): back in force and published again, so
        that shims see them. The topic, when it has a scope, stays the authority for it."""
        query = getattr(self.audit, "query", None)
        if query is None:
            return
        try:
            rows = await self.audit.run(query, (
                "SELECT decision, after FROM actions WHERE directive_id != '' AND after != '' "
                "AND decision IN {published:Array(String)} ORDER BY at, action_id"),
                {"published": sorted(PUBLISHED)})
            published = [(decision, Directive.model_validate_json(after)) for decision, after in rows]
        except Exception as exc:  # noqa: BLE001 - a cold start without history is still a start
            log.warning("directive_restore_failed", error=str(exc)[:300])
            return
        restored = restorable(published, known=set(self.directives), now=self.clock())
        await self._republish(restored)
        if restored:
            log.info("directives_restored", count=len(restored), directive_ids=[d.directive_id for d in restored])

    async def _republish(self, directives: Sequence[Directive]) -> None:
        """Publish directives again as they are: a newer version than any the shims saw, signed
        like every directive."""
        assert self._producer is not None
        stamp = int(self.clock().timestamp() * 1_000_000)
        for d in directives:
            d = d.model_copy(update={"version": max(d.version + 1, stamp)})
            self.directives[d.key()] = d
            await self._producer.send_and_wait(DIRECTIVES, key=d.key().encode(),
                                               value=sign(d.model_dump_json().encode(), topic=DIRECTIVES,
                                                          keys=self.signing))

    async def run(self) -> None:
        assert self._consumer is not None
        while not self._stopping.is_set():
            try:
                batch = await self._consumer.getmany(timeout_ms=200)
            except KafkaError as exc:
                log.warning("alert_consume_failed", error=str(exc))
                await asyncio.sleep(0.5)
                continue
            self._polled_at = time.monotonic()
            if self._consumer.assignment() and not self.ready.is_set():
                # record the starting position at once, so that a restart resumes from here even
                # if no alert arrived meanwhile (a new group starts at the end of the topic)
                try:
                    await asyncio.wait_for(self._consumer.commit(), 10)
                except (KafkaError, TimeoutError) as exc:
                    log.warning("commit_failed", error=str(exc) or type(exc).__name__)
                self.ready.set()
            done: dict[TopicPartition, int] = {}  # partition -> next offset to commit
            for tp, recs in batch.items():
                for rec in recs:
                    if not await self._handle(rec.value):
                        # its directive was not published: do not commit it, read it again
                        self._consumer.seek(tp, rec.offset)
                        await asyncio.sleep(self.retry_base_s)
                        break
                    done[tp] = rec.offset + 1
            try:
                await self._refresh_traffic()
                await self._refresh_instances()
                await self.tick()
            except (PermanentError, TemporaryError) as exc:  # an expiry not published: tried again next tick
                log.warning("tick_failed", error=str(exc)[:300])
            if done:
                try:
                    await self._consumer.commit(done)
                except KafkaError as exc:
                    log.warning("commit_failed", error=str(exc))

    async def _handle(self, value: bytes | None) -> bool:
        """Decide on one alert record; False when it must be read again (a directive it
        decided on could not be published, for now)."""
        try:
            alert = Alert.model_validate_json(self._verified(value or b"", ALERTS))
        except ValueError as exc:  # SignatureError included: forged alerts do not act
            log.warning("alert_refused" if isinstance(exc, SignatureError) else "alert_invalid",
                        error=str(exc)[:200])
            return True
        try:
            await self.on_alert(alert)
        except TemporaryError as exc:
            log.warning("alert_retried", alert_id=alert.alert_id, error=str(exc)[:300])
            return False
        except PermanentError as exc:  # audited as failed; retrying cannot help
            log.error("alert_not_enforced", alert_id=alert.alert_id, error=str(exc)[:300])
        except Exception:  # a bug in one decision must not stop the loop; logged with its trace
            log.exception("alert_handling_failed", alert_id=alert.alert_id)
        return True

    async def _refresh_traffic(self) -> None:
        if self._traffic is None or time.monotonic() - self._traffic_at < self._traffic_every_s:
            return
        self._traffic_at = time.monotonic()
        try:
            self.history = replace(self.history, traffic=dict(await self._traffic()))
        except (PermanentError, TemporaryError) as exc:  # blast-radius share unknown until the next refresh
            log.warning("traffic_refresh_failed", error=str(exc)[:300])

    async def _refresh_instances(self) -> None:
        """Re-count live shim instances per tenant; re-publish each active throttle whose share
        changed, so that together the instances admit the throttle's rate."""
        if self._instances is None or time.monotonic() - self._instances_at < self._instances_every_s:
            return
        self._instances_at = time.monotonic()
        try:
            self.instances = dict(await self._instances())
        except Exception as exc:  # noqa: BLE001 - shares stay as they are until the next count
            log.warning("instances_refresh_failed", error=str(exc)[:300])
            return
        async with self._lock:
            reshared = [Action(Outcome.EXTENDED, d.scope, f"shared among {self._replicas(d)} shim instances",
                               before=d, actor=d.actor, directive=d)
                        for d in self.active() if d.action == ActionKind.THROTTLE and self._replicas(d) != d.replicas]
            if reshared:
                await self._apply(reshared, self.clock())

    def _replicas(self, d: Directive) -> int:
        if d.action != ActionKind.THROTTLE or d.scope.tenant_id is None:
            return 1
        return max(1, min(self.instances.get(d.scope.tenant_id, 1), 10_000))

    def _history(self) -> History:
        return replace(self.history, last_fired=dict(self.last_fired))

    async def on_alert(self, alert: Alert) -> list[Action]:
        async with self._lock:
            now = self.clock()
            previous = self.alert_status.get(alert.alert_id)
            self.alert_status[alert.alert_id] = alert.status
            fresh = now - alert.last_seen <= timedelta(seconds=self.max_alert_age_s)
            if self.notifier is not None and previous != alert.status and fresh:
                self.notifier.alert(alert, alert.status)
            self.history = observe(self.history, alert)
            actions = decide_actions(alert, self.live(), self.policies, now=now, history=self._history())
            return await self._apply(actions, now)

    async def tick(self) -> list[Action]:
        async with self._lock:
            now = self.clock()
            actions = expire(self.live(), now=now, history=self.history, policies=self.policies)
            return await self._apply(actions, now) if actions else actions

    # ------------------------------------------------------------------ manual overrides
    def find(self, directive_id: str) -> Directive | None:
        return self.pending.get(directive_id) or next(
            (d for d in self.active() if d.directive_id == directive_id), None)

    async def _manual(self, directive_id: str, make: Callable[[Directive, datetime], Action | None]) -> Action | None:
        async with self._lock:
            found = self.find(directive_id)
            if found is None:
                return None
            now = self.clock()
            action = make(found, now)
            if action is None:
                return None
            (published,) = await self._apply([action], now)
            return published

    async def revert(self, directive_id: str, *, actor: str) -> Action | None:
        return await self._manual(directive_id, lambda d, now: revert(d, actor=actor, now=now)
                                  if d.state == DirectiveState.ACTIVE else reject(d, actor=actor, now=now))

    async def pin(self, directive_id: str, *, actor: str) -> Action | None:
        return await self._manual(directive_id, lambda d, now: pin(d, actor=actor)
                                  if d.state == DirectiveState.ACTIVE else None)

    async def extend(self, directive_id: str, *, actor: str, seconds: int) -> Action | None:
        return await self._manual(directive_id, lambda d, now: extend(
            d, actor=actor, until=min(max(d.expires_at, now) + timedelta(seconds=seconds),
                                      now + timedelta(seconds=MAX_TTL_S))))

    async def approve(self, directive_id: str, *, actor: str) -> Action | None:
        return await self._manual(directive_id, lambda d, now: approve(d, actor=actor, now=now)
                                  if d.state == DirectiveState.PENDING else None)

    async def reject(self, directive_id: str, *, actor: str) -> Action | None:
        return await self._manual(directive_id, lambda d, now: reject(d, actor=actor, now=now)
                                  if d.state == DirectiveState.PENDING else None)

    async def create(self, directive: Directive) -> Action:
        async with self._lock:
            replaces = next((d for d in self.active() if d.key() == directive.key()), None)
            (action,) = await self._apply([create(directive, replaces=replaces)], self.clock())
            return action

    async def record(self, actions: Sequence[Action]) -> None:
        """Audit decisions that publish nothing (e.g. a policy change)."""
        await self._apply(actions, self.clock())

    def _verified(self, message: bytes, topic: str) -> bytes:
        return verify(message, topic=topic, keys=self.signing) if self.signing.enabled else message

    def _stamped(self, actions: Sequence[Action], now: datetime) -> list[Action]:
        """Each directive about to be published gets the next version of its scope and, if it
        is a throttle, the number of shim instances sharing it."""
        out = []
        latest: dict[str, int] = {}
        for action in actions:
            d = action.directive
            if d is not None and d.state != DirectiveState.PENDING and action.decision in PUBLISHED:
                key = d.key()
                previous = latest.get(key, self.directives[key].version if key in self.directives else 0)
                version = max(previous + 1, int(now.timestamp() * 1_000_000))
                latest[key] = version
                action = replace(action, directive=d.model_copy(update={"version": version,
                                                                        "replicas": self._replicas(d)}))
            out.append(action)
        return out

    # ------------------------------------------------------------------ the one way out
    async def _apply(self, actions: Sequence[Action], now: datetime) -> list[Action]:
        """Publish each action's directive (versioned per scope, shared among shim instances,
        signed), then take it as in force and audit it; returns the actions as published. A
        directive that cannot be published is audited ``failed`` (the error in the reason) and
        the error is raised: the alert that caused it is not committed, the state is unchanged."""
        actions = self._stamped(actions, now)
        rows: list[tuple[Any, ...]] = []
        try:
            for action in actions:
                try:
                    await self._publish(action)
                except (PermanentError, TemporaryError) as exc:
                    failed = replace(action, decision=Outcome.FAILED,
                                     reason=f"{action.decision} not published: {exc}"[:1000])
                    rows.append(audit_row(failed, now))
                    log.error("directive_failed", scope=action.scope.key(), decision=str(action.decision),
                              error=str(exc)[:300])
                    raise
                self._take(action, now)
                rows.append(audit_row(action, now))
        finally:
            await self._write_audit(rows)
        return actions

    def _publishes(self, action: Action) -> bool:
        d = action.directive
        if d is None or d.state == DirectiveState.PENDING or action.decision not in PUBLISHED:
            return False
        # a pending one lapsing must not clear another directive on its scope
        return not (action.decision in (Outcome.EXPIRED, Outcome.REVERTED) and d.key() in self.directives
                    and self.directives[d.key()].directive_id != d.directive_id)

    async def _publish(self, action: Action) -> None:
        if not self._publishes(action):
            return
        d = action.directive
        assert d is not None and self._producer is not None
        producer = self._producer
        value = sign(d.model_dump_json().encode(), topic=DIRECTIVES, keys=self.signing)

        async def send() -> None:
            try:
                await producer.send_and_wait(DIRECTIVES, key=d.key().encode(), value=value)
            except KafkaError as exc:
                raise (classify(exc) or exc) from exc
        await with_retry(send, what="directive publish", attempts=self.attempts, base_delay=self.retry_base_s)

    def _take(self, action: Action, now: datetime) -> None:
        """The action is published (or publishes nothing): the loop's state follows it."""
        d = action.directive
        log.info(f"directive_{action.decision}", scope=action.scope.key(), reason=action.reason,
                 directive_id=d.directive_id if d else None, actor=action.actor)
        if self.notifier is not None and action.actor == AUTOMATION and action.decision in NOTIFIED:
            self.notifier.action(action)
        if d is None:
            return
        if d.state == DirectiveState.PENDING:
            self.pending[d.directive_id] = d
            return
        self.pending.pop(d.directive_id, None)
        if not self._publishes(action):
            return
        self.directives[d.key()] = d
        if action.decision == Outcome.APPLIED and action.actor == AUTOMATION:
            self.last_fired[d.key()] = now

    async def _write_audit(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Write these rows and any left from before; rows that cannot be written now stay
        queued (in order) and go with the next write: what was published is audited late,
        never dropped while the process lives."""
        self._unaudited.extend(rows)
        if not self._unaudited:
            return
        batch = list(self._unaudited)
        try:
            await with_retry(lambda: self.audit.run(self.audit.write_actions, batch), what="audit write",
                             attempts=self.attempts, base_delay=self.retry_base_s)
        except (PermanentError, TemporaryError) as exc:
            log.error("audit_write_failed", rows=len(batch), error=str(exc)[:300])
            return
        del self._unaudited[:len(batch)]
