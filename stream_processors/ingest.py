"""The ingest loop: Kafka batch -> Pipeline (pure) -> ClickHouse, DLQ, alerts -> commit.

Offsets are committed only after the ClickHouse insert succeeded, so a crash replays the
batch; the event_id dedupe (in memory, then ReplacingMergeTree) makes the replay harmless.

Why not a faust ``stream.take()`` agent: faust-streaming's per-event stream machinery costs
about 64 us of CPU per event on this machine (13k ev/s just counting), an order of magnitude
below what Kafka + chDB sustain. The hot path therefore consumes in batches with aiokafka's
``getmany`` and does all per-event work in one pure function. The service runs as a task
under the process's supervisor (``control_plane/supervisor.py``): if :meth:`run` ends with an
error the process exits non-zero and the uncommitted batch is replayed by its successor.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import structlog
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from flyball.schemas import ALERTS, DLQ, EVENTS, Alert, KeySet, sign

from .budgets import BudgetSeeds, SeedRequest
from .errors import PermanentError, TemporaryError, with_retry
from .kafka import KafkaClients
from .memory import MemoryHygiene
from .pipeline import BatchResult, DeadLetter, Pipeline
from .ports import KafkaClientFactory, WorkerStore
from .releases import VersionRow

log = structlog.get_logger(__name__)
# refusals about one record (its size), not about the broker: the record is sent again smaller
_RECORD_REFUSED = (MessageSizeTooLargeError, RecordTooLargeError)


def tune_gc_for_batches() -> None:
    """What a worker process does once at start, before its first batch.

    The ingest path allocates many short-lived objects per event; the default gen-0 threshold
    (700) makes the collector run ~3 times per 1,000 events, each pass walking the batch's
    rows (measured: bench/pipeline.py --profile). Objects alive now are moved out of the
    collector's view and young collections run less often; cycles are still collected.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


@dataclass(slots=True)
class IngestStats:
    batches: int = 0
    events: int = 0
    rows: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    alerts: int = 0
    lag: int = 0  # records behind the high watermark on the partitions of the last batch
    inserts: int = 0  # ClickHouse event inserts, and their cumulative duration (retries included)
    insert_seconds: float = 0.0


ALERT_COLUMNS = ("alert_id", "kind", "scope_key", "scope", "severity", "status", "first_seen", "last_seen", "body",
                 "recorded_at")


def alert_row(alert: Alert, now: datetime) -> tuple[object, ...]:
    return (alert.alert_id, str(alert.kind), alert.scope.key(), alert.scope.model_dump_json(exclude_none=True),
            alert.severity, alert.status, alert.first_seen, alert.last_seen, alert.model_dump_json(), now)


VERSION_COLUMNS = ("feature", "tenant_id", "dimension", "version", "calls", "share", "role", "incumbent", "verdict",
                   "started", "decided_at", "calls_new", "calls_old", "metrics", "window_s", "as_of", "recorded_at")


def version_row(row: VersionRow, now: datetime) -> tuple[object, ...]:
    """A ``release_versions`` row: the version's traffic and, for a candidate, its comparison."""
    comp = row.comparison or {}

    def at(text: str | None) -> datetime | None:
        return datetime.fromisoformat(text) if text else None

    return (row.feature, row.tenant_id, row.dimension, row.version, row.calls, row.share, row.role,
            comp.get("old_version", ""), comp.get("verdict", ""), at(comp.get("started")), at(comp.get("decided_at")),
            comp.get("calls_new", 0), comp.get("calls_old", 0), orjson.dumps(comp.get("metrics", [])).decode(),
            int(row.window_s), datetime.fromtimestamp(row.as_of, UTC), now)


class IngestService:
    def __init__(self, *, bootstrap: str, store: WorkerStore, pipeline: Pipeline,
                 group_id: str = "flyball-worker", max_batch: int = 20_000, poll_ms: int = 200,
                 linger_ms: int = 250, min_batch: int = 5_000,
                 session_timeout_ms: int = 6_000, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 checkpoint_interval_s: float | None = 30.0, worker_id: str = "",
                 clients: KafkaClientFactory | None = None, write_attempts: int = 8,
                 seeds: BudgetSeeds | None = None, signing: KeySet | None = None,
                 memory: MemoryHygiene | None = None) -> None:
        self.bootstrap = bootstrap
        self.clients: KafkaClientFactory = clients or KafkaClients(bootstrap)
        self.seeds = seeds  # answers the budget tracker's seed requests (see budgets.py)
        self.signing = signing or KeySet()  # signs the alerts published (the control plane verifies)
        self.store = store
        # hands the allocators' free pages back once a minute, between batches (memory.py)
        self.memory = memory
        # temporary ClickHouse failures are retried this many times (about 23 s); then the
        # task ends, the process exits non-zero, and the uncommitted batch is replayed
        self.write_attempts = write_attempts
        self.retry_base_s = 0.2
        self.pipeline = pipeline
        self.group_id = group_id
        self.max_batch = max_batch
        self.poll_ms = poll_ms
        # a batch is gathered for up to linger_ms after its first record, until min_batch records:
        # every ClickHouse insert makes a part (and merges), so inserting whatever one fetch brings
        # (about 40 events at 1,000 events/s) cost a core in chDB; see docs/RELIABILITY.md, "The soak"
        self.linger_ms = linger_ms
        self.min_batch = min_batch
        self._revoked = False  # a rebalance took partitions while a batch was being gathered
        self.session_timeout_ms = session_timeout_ms
        self.clock = clock
        self.stats = IngestStats()
        self.ready = asyncio.Event()
        self.running = False
        self._finished = asyncio.Event()
        self.commit_timeout_s = 30.0
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        # detector state: restored at start, saved after a commit at most every checkpoint_interval_s
        self.checkpoint_interval_s = checkpoint_interval_s
        # one checkpoint row per replica: replicas of one group must not restore each other's state
        self.checkpoint_key = f"{group_id}/{worker_id}" if worker_id else group_id
        self._checkpointed_at = float("-inf")
        self._uncommitted = False
        self._owned: set[int] = set()  # the events partitions this replica was last assigned
        self.idle_lag_s = 30.0  # with no events, detectors' event time follows the clock this far behind
        self.stall_after_s = 60.0  # not working when the last successful poll is older than this
        self._polled_at = float("-inf")
        self._ticked_at = float("-inf")
        self.versions_interval_s = 5.0  # release comparisons are written at most this often
        self._versions_at = float("-inf")

    async def start(self) -> None:
        await self._restore_detectors()
        self._producer = await self.clients.producer(linger_ms=5, compression_type="zstd")
        self._consumer = self.clients.consumer(
            group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=max(self.session_timeout_ms // 6, 200), max_poll_records=self.max_batch,
            fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024,
            rebalance_timeout_ms=self.session_timeout_ms, retry_backoff_ms=100,
        )
        await self._consumer.start()
        self._consumer.subscribe([EVENTS], listener=_Handoff(self))

    async def stop(self, timeout: float = 30.0) -> None:
        """Let the loop finish its batch (insert, commit, checkpoint), then close the clients:
        a consumer closed under an in-flight commit leaves aiokafka retrying it forever."""
        self._stopping.set()
        if self.running:
            try:
                await asyncio.wait_for(self._finished.wait(), timeout)
            except TimeoutError:
                log.warning("worker_stop_timeout", seconds=timeout)
        if self._consumer is not None:
            await self._consumer.stop()
        if not self._uncommitted:
            await self._checkpoint(force=True)
        if self._producer is not None:
            await self._producer.stop()

    def working(self) -> bool:
        """Running, assigned partitions once, and polled the broker successfully lately."""
        return self.running and self.ready.is_set() and time.monotonic() - self._polled_at < self.stall_after_s

    async def run(self) -> None:
        assert self._consumer is not None and self._producer is not None
        consumer = self._consumer
        self.running = True
        self._finished.clear()
        try:
            await self._loop(consumer)
        finally:
            self.running = False
            self._finished.set()

    async def _loop(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stopping.is_set():
            try:
                batch = await consumer.getmany(timeout_ms=self.poll_ms, max_records=self.max_batch)
            except KafkaError as exc:
                log.warning("consume_failed", error=str(exc))
                await asyncio.sleep(0.5)
                continue
            self._polled_at = time.monotonic()
            if consumer.assignment():
                self.ready.set()
            if not batch:
                await self._idle_tick()
                await self._tidy()
                continue
            await self._gather(consumer, batch)
            raws = [rec.value for recs in batch.values() for rec in recs]
            offsets = {tp: recs[-1].offset + 1 for tp, recs in batch.items()}
            self.stats.lag = sum(max(0, (consumer.highwater(tp) or 0) - offset) for tp, offset in offsets.items())
            self._uncommitted = True
            await self.handle(raws)
            if await self._commit(offsets):
                self._uncommitted = False
                await self._checkpoint()
            await self._tidy()

    async def _tidy(self) -> None:
        if self.memory is not None:
            await self.memory.tick(time.monotonic())

    async def _gather(self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Add to ``batch`` what arrives within ``linger_ms`` of its first record, until it holds
        ``min_batch`` records (at most ``max_batch``). A failed fetch ends the wait: what was
        gathered is processed as usual, and so it is at once when a rebalance revokes partitions
        (their new owner replays what this batch cannot commit; dedupe absorbs it)."""
        want = min(self.min_batch, self.max_batch)
        count = sum(map(len, batch.values()))
        deadline = time.monotonic() + self.linger_ms / 1000
        self._revoked = False
        while count < want and not self._stopping.is_set() and not self._revoked:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                return
            try:
                more = await consumer.getmany(timeout_ms=min(left_ms, self.poll_ms), max_records=self.max_batch - count)
            except KafkaError as exc:
                log.warning("consume_failed", error=str(exc))
                return
            self._polled_at = time.monotonic()
            for tp, recs in more.items():
                batch.setdefault(tp, []).extend(recs)
                count += len(recs)

    async def handle(self, raws: list[bytes]) -> BatchResult:
        now = self.clock()
        result = self.pipeline.process(raws, now=now, budgets=False)
        wanted = self.pipeline.seeds_wanted(result, now=now)
        seeds = await self._seeds(wanted) if wanted else None
        self.pipeline.account(result, now=now, seeds=seeds)
        if result.rows:
            rows = result.rows
            started = time.perf_counter()
            try:
                await self._write("events insert", self.store.write_events, rows)
            except PermanentError as exc:
                # ClickHouse will never take this batch: keep its records in the DLQ with the
                # reason rather than wedge the partition (the rest of the batch's work stands)
                log.error("events_insert_refused", rows=len(rows), error=str(exc)[:300])
                refused = _undead(raws, result.dead)
                result.dead.extend(DeadLetter(raw=raw, reason=f"events insert: {exc}"[:2000]) for raw in refused)
                result.rows = []
            self.stats.inserts += 1
            self.stats.insert_seconds += time.perf_counter() - started
        if result.dead:
            await self._dead_letter(result, now)
        if result.alerts:
            await self._publish_alerts(result.alerts, now)
        await self._write_versions(now)
        s = self.stats
        s.batches += 1
        s.events += len(raws)
        s.rows += len(result.rows)
        s.dead_lettered += len(result.dead)
        s.duplicates += result.duplicates
        s.alerts += len(result.alerts)
        return result

    async def _dead_letter(self, result: BatchResult, now: datetime) -> None:
        """Each record is bounded (``DeadLetter.record``); one the broker still refuses for
        itself (a topic with a smaller ``max.message.bytes``) is sent again without the
        original and logged with its hash, so one bad input never stops ingest."""
        assert self._producer is not None
        for dead in result.dead:
            body = dead.record(now)
            headers = [("reason", dead.reason[:512].encode())]
            try:
                await self._producer.send(DLQ, value=body, headers=headers)
            except _RECORD_REFUSED as exc:
                log.warning("dead_letter_refused", error=type(exc).__name__, original_len=len(dead.raw),
                            record_len=len(body))
                await self._producer.send(DLQ, value=dead.record(now, keep=0), headers=headers)
            log.info("event_dead_lettered", reason=dead.reason[:512])
        await self._producer.flush()

    async def _publish_alerts(self, alerts: list[Alert], now: datetime) -> None:
        assert self._producer is not None
        rows = [alert_row(a, now) for a in alerts]
        try:
            await self._write("alerts insert", self.store.write_alerts, rows)
        except PermanentError as exc:  # the alerts still go to the topic (the control plane acts on them)
            log.error("alert_log_write_failed", alerts=len(rows), error=str(exc)[:300])
        for alert in alerts:
            await self._producer.send(ALERTS, key=alert.key().encode(),
                                      value=sign(alert.model_dump_json().encode(), topic=ALERTS, keys=self.signing))
            log.info("alert_raised" if alert.status == "open" else "alert_resolved",
                     alert_id=alert.alert_id, kind=str(alert.kind), scope=alert.scope.key(), severity=alert.severity)
        await self._producer.flush()

    async def _seeds(self, wanted: list[SeedRequest]) -> dict[tuple[str, datetime], Decimal]:
        """Stored spend for the budgets the batch needs (before it is accounted), fetched on
        the store's thread; temporary errors retried like a write."""
        if self.seeds is None:
            raise LookupError("budget seeds wanted but no BudgetSeeds port was given")
        seeds = self.seeds
        return await with_retry(lambda: seeds.totals(wanted), what="budget seeds", attempts=self.write_attempts,
                                base_delay=self.retry_base_s)

    async def _write(self, what: str, write: Callable[[list[tuple[object, ...]]], None],
                     rows: list[tuple[object, ...]]) -> None:
        await with_retry(lambda: self.store.run(write, rows), what=what, attempts=self.write_attempts,
                         base_delay=self.retry_base_s, event="clickhouse_write_failed")

    async def _commit(self, offsets: dict[TopicPartition, int]) -> bool:
        assert self._consumer is not None
        try:
            await asyncio.wait_for(self._consumer.commit(offsets), self.commit_timeout_s)
        except (KafkaError, TimeoutError) as exc:  # a rebalance took the partition: the new owner replays, dedupe absorbs it
            log.warning("commit_failed", error=str(exc) or type(exc).__name__)
            return False
        return True

    async def _idle_tick(self) -> None:
        """With no events, event time still passes: resolve the alerts of scopes that went quiet.

        At most every 5 s, the detectors (not the pipeline's watermark) are advanced to
        ``now - idle_lag_s`` when that is past the newest event seen (by at most an hour, so a
        backfill of old events is left alone); events arriving later with older timestamps are
        judged as usual.
        """
        await self._write_versions(self.clock())
        mono = time.monotonic()
        if mono - self._ticked_at < 5.0 or self.pipeline.watermark is None:
            return
        self._ticked_at = mono
        now = self.clock()
        target = now - timedelta(seconds=self.idle_lag_s)
        if not timedelta(0) < target - self.pipeline.watermark <= timedelta(hours=1):
            return  # not idle, or a backfill far behind the clock: event time is the events' own
        alerts = self.pipeline.detectors.advance(target) + self.pipeline.releases.advance(target)
        if alerts:
            await self._publish_alerts(alerts, now)
            self.stats.alerts += len(alerts)

    async def _write_versions(self, now: datetime) -> None:
        """The release comparison's view of the groups that took traffic (``GET /v1/versions``),
        at most every ``versions_interval_s``; a failed write costs a refresh, never the batch."""
        mono = time.monotonic()
        if mono - self._versions_at < self.versions_interval_s or self.pipeline.watermark is None:
            return
        self._versions_at = mono
        for capped in self.pipeline.detectors.take_capped():  # each bound once
            log.warning("detector_scopes_capped", **capped, hint="a field of high cardinality? new scopes are not judged")
        releases = self.pipeline.releases
        for capped in releases.take_capped():  # each bound once (per group, or the number of groups)
            log.warning("release_versions_capped", **capped)
        rows = [version_row(r, now) for r in releases.versions(self.pipeline.watermark)]
        if not rows:
            return
        try:
            await self._write("release versions insert",
                              lambda batch: self.store.insert("release_versions", batch, VERSION_COLUMNS), rows)
        except (PermanentError, TemporaryError) as exc:
            log.warning("release_versions_write_failed", rows=len(rows), error=str(exc)[:300])

    # ---------------------------------------------------------------- detector state
    # The detectors' baselines (a detector needs minutes of history before it may alert) are
    # checkpointed to ClickHouse, one row per consumer group and worker id, after a successful
    # commit, so that the saved state matches the committed offsets; a restarted worker restores
    # it and alerts on a spike right away. Saving is throttled (checkpoint_interval_s): the events
    # between the last checkpoint and a crash are missing from the baselines, never counted twice.
    # Replicas of one group need distinct worker ids (FLYBALL_WORKER_ID), else each restores
    # whichever replica saved last. A rebalance hands per-tenant baselines on (below).
    async def _checkpoint(self, *, force: bool = False) -> None:
        if self.checkpoint_interval_s is None:
            return
        mono = time.monotonic()
        if not force and mono - self._checkpointed_at < self.checkpoint_interval_s:
            return
        self._checkpointed_at = mono
        try:
            blob = orjson.dumps(self.pipeline.detectors.snapshot()).decode()
            row = [self.checkpoint_key, self.clock(), self.pipeline.watermark, blob]
            await self.store.run(self.store.insert, "detector_state", [row],
                                 ["group_id", "saved_at", "watermark", "state"])
        except (PermanentError, TemporaryError, TypeError) as exc:  # costs baselines on restart, never the worker
            log.warning("detector_checkpoint_failed", error=str(exc)[:300])

    # Rebalance hand-off: a replica losing partitions saves its state first (revoke comes before it
    # rejoins, so before the group hands the partitions on); a replica given partitions it did not
    # have adopts, from the other replicas' latest checkpoints (the last hour's), the per-tenant
    # baselines of the tenants those partitions carry (events are keyed by tenant_id; the default
    # partitioner: murmur2). Per provider, tool and index the statistics stay each replica's own.
    async def _partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._revoked = self._revoked or bool(revoked)
        if revoked and not self._uncommitted:
            await self._checkpoint(force=True)

    async def _partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        owned = {tp.partition for tp in assigned if tp.topic == EVENTS}
        new, self._owned = owned - self._owned, owned
        if new and self.checkpoint_interval_s is not None:
            await self._adopt(new)

    async def _adopt(self, partitions: set[int]) -> None:
        assert self._consumer is not None
        try:
            count = len(self._consumer.partitions_for_topic(EVENTS) or ())
            if not count:
                return
            rows = await self.store.run(
                self.store.query,
                "SELECT group_id, argMax(state, saved_at), max(saved_at) AS latest FROM detector_state "
                "WHERE (group_id = {g:String} OR startsWith(group_id, {prefix:String})) AND group_id != {me:String} "
                "GROUP BY group_id HAVING toUnixTimestamp64Milli(latest) >= {since:Int64} ORDER BY latest DESC",
                {"g": self.group_id, "prefix": f"{self.group_id}/", "me": self.checkpoint_key,
                 "since": int((self.clock() - timedelta(hours=1)).timestamp() * 1000)})

            def owns(tenant: str) -> bool:
                return partition_of(tenant, count) in partitions
            taken = sum(self.pipeline.detectors.adopt(orjson.loads(state), owns) for _, state, _ in rows)
            log.info("detector_state_adopted", partitions=sorted(partitions), series=taken,
                     replicas=[r[0] for r in rows])
        except (PermanentError, TemporaryError, ValueError, KeyError, TypeError) as exc:
            # unreadable or unreachable state: the moved tenants start cold, the worker runs on
            log.warning("detector_state_not_adopted", error=str(exc)[:300])

    async def _restore_detectors(self) -> None:
        if self.checkpoint_interval_s is None:
            return
        try:
            rows = await self.store.run(self.store.query,
                                        "SELECT argMax(state, saved_at), argMax(watermark, saved_at), count() "
                                        "FROM detector_state WHERE group_id = {g:String}", {"g": self.checkpoint_key})
            if not rows or not rows[0][2]:
                return
            state, watermark, _ = rows[0]
            self.pipeline.detectors.restore(orjson.loads(state))
            if watermark is not None:
                self.pipeline.watermark = watermark if watermark.tzinfo else watermark.replace(tzinfo=UTC)
            log.info("detector_state_restored", key=self.checkpoint_key, watermark=str(self.pipeline.watermark))
        except (PermanentError, TemporaryError, ValueError, KeyError, TypeError) as exc:
            # unreadable or unreachable state: start with fresh baselines
            log.warning("detector_state_not_restored", error=str(exc)[:300])


class _Handoff(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's rebalance callbacks, handed to the service (see ``_partitions_assigned``)."""

    def __init__(self, service: IngestService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.service._partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.service._partitions_assigned(assigned)


def partition_of(tenant: str, partitions: int) -> int:
    """The events partition of a tenant's events: what the shim's producer picks for the key
    ``tenant_id`` (aiokafka's default partitioner, the Java client's too)."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(tenant.encode(), every, every))


def _undead(raws: list[bytes], dead: list[DeadLetter]) -> list[bytes]:
    """The records of a batch that are not already dead letters (each once)."""
    gone = {d.raw for d in dead}
    return [bytes(r) for r in raws if r is not None and bytes(r) not in gone]

