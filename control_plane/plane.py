"""Assembling the control plane: persisted keys and alert marks, the policy registry, the
webhook notifier and the control loop, from settings. Wiring only."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from flyball.schemas import KeySet
from flyball.stream_processors.kafka import KafkaClients
from flyball.stream_processors.ports import ControlStore

from .auth import KeyRing, RateLimiter

from .directives import ControlLoop
from .notify import WebhookNotifier
from .policy import Policies
from .policy_file import SHIPPED_POLICIES_TEXT
from .settings import Settings
from .slo import SHIPPED_SLOS_TEXT, SLOs
from .slo_live import AlertPublisher, SLOMonitor, SLORegistry
from .state import AlertMarks, ControlState, PolicyRegistry

log = structlog.get_logger(__name__)


@dataclass
class ControlPlane:
    loop: ControlLoop
    state: ControlState
    keys: KeyRing
    marks: AlertMarks
    registry: PolicyRegistry
    limiter: RateLimiter
    read_limiter: RateLimiter
    notifier: WebhookNotifier | None = None
    slos: SLORegistry | None = None  # the SLOs in force (versioned, audited)
    slo_monitor: SLOMonitor | None = None  # slo_burn alerts from the slo_minute rollup
    slo_publisher: AlertPublisher | None = None
    _slo_task: asyncio.Task[None] | None = None

    def policies(self) -> Policies:
        return self.registry.current

    async def set_policies(self, new: Policies, actor: str, text: str) -> Policies:
        return await self.registry.put(new, actor=actor, text=text, now=datetime.now(UTC))

    async def start(self) -> None:
        if self.notifier is not None:
            await self.notifier.start()
        await self.loop.start()
        if self.slo_monitor is not None:
            self._slo_task = asyncio.create_task(self.slo_monitor.run(), name="slo-monitor")

    async def stop(self) -> None:
        if self._slo_task is not None:
            self._slo_task.cancel()
            await asyncio.gather(self._slo_task, return_exceptions=True)
        if self.slo_publisher is not None:
            await self.slo_publisher.stop()
        await self.loop.stop()
        if self.notifier is not None:
            await self.notifier.stop()


async def build_control_plane(settings: Settings, *, bootstrap: str, store: ControlStore,
                              policies: Policies | None = None, signing: KeySet | None = None) -> ControlPlane:
    """``policies`` given: they are in force (tests, demo); otherwise the policies file (or the
    shipped defaults), or the latest stored version if the file has not changed since."""
    state = ControlState(store)
    now = datetime.now(UTC)
    keys = KeyRing()
    for record in await state.load_keys():
        keys.load(record)
    marks = AlertMarks()
    for mark in await state.load_marks():
        marks.add(mark)
    loop: ControlLoop | None = None

    def on_change(p: Policies) -> None:
        if loop is not None:
            loop.policies = p

    registry = PolicyRegistry(state, policies or Policies(policies=()), on_change)
    if policies is None:
        path: Path | None = settings.policies_file
        text = await asyncio.to_thread(path.read_text) if path else SHIPPED_POLICIES_TEXT
        await registry.bootstrap(text, source=str(path) if path else "flyball built-in policies", now=now)
    notifier = None
    if settings.webhooks:
        notifier = WebhookNotifier(
            settings.webhooks, runbook_base=settings.runbook_base_url,
            delivery_log=lambda rows: store.run(state.write_deliveries, rows),
            silenced=lambda alert: marks.silenced(alert.key(), now=datetime.now(UTC)) is not None)

    async def traffic() -> Mapping[str, float]:
        rows = await store.run(store.query, "SELECT tenant_id, count() FROM events "
                                            "WHERE ts > now() - INTERVAL 15 MINUTE GROUP BY tenant_id", {})
        return {tenant: float(n) for tenant, n in rows}

    slos = SLORegistry(state, SLOs(slos=()))
    slo_path: Path | None = settings.slos_file
    slo_text = await asyncio.to_thread(slo_path.read_text) if slo_path else SHIPPED_SLOS_TEXT
    await slos.bootstrap(slo_text, source=str(slo_path) if slo_path else "flyball built-in SLOs", now=now)
    publisher = AlertPublisher(store, bootstrap)
    monitor = SLOMonitor(store, slos=lambda: slos.current, publish=publisher, interval_s=settings.slo_eval_interval_s)

    async def instances() -> Mapping[str, int]:
        rows = await store.run(store.query, "SELECT tenant_id, uniqExact(shim_instance) FROM events "
                                            "WHERE ts > now() - INTERVAL 5 MINUTE AND shim_instance != '' "
                                            "GROUP BY tenant_id", {})
        return {tenant: int(n) for tenant, n in rows}

    loop = ControlLoop(bootstrap=bootstrap, audit=store, clients=KafkaClients(bootstrap),
                       policies=registry.current, group_id=settings.control_group,
                       session_timeout_ms=settings.session_timeout_ms, notifier=notifier, traffic=traffic,
                       signing=signing if signing is not None else settings.keyset(), instances=instances,
                       instances_every_s=settings.shim_instances_every_s)
    log.info("control_plane_built", policies_version=registry.current.version, keys=len(keys.records()),
             webhooks=len(settings.webhooks))
    return ControlPlane(loop=loop, state=state, keys=keys, marks=marks, registry=registry,
                        limiter=RateLimiter(per_minute=settings.write_rate_per_min, burst=settings.write_burst),
                        read_limiter=RateLimiter(per_minute=settings.read_rate_per_min, burst=settings.read_burst),
                        notifier=notifier, slos=slos, slo_monitor=monitor, slo_publisher=publisher)

