"""Bringing the processes up: `flyball up` (everything in one process), `worker`, `api`.

chDB allows one process per data directory, so under `up` the worker, the control loop and
the API share one process and one ClickHouse store; with a ClickHouse server they can be
split into `flyball worker` and `flyball api`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
import time
from datetime import timedelta
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import uvicorn

from flyball.schemas import KeySet
from flyball.stream_processors.ingest import IngestService, tune_gc_for_batches
from flyball.stream_processors.detectors import Detectors, SensitivityTable
from flyball.stream_processors.kafka import KafkaClients
from flyball.stream_processors.memory import MemoryHygiene, TrimSchedule, glibc_trim
from flyball.stream_processors.pipeline import Pipeline
from flyball.stream_processors.releases import ReleaseComparator, ReleaseParams
from flyball.stream_processors.budgets import BudgetTracker
from flyball.stream_processors.catalog import load_catalog, skipped_note
from flyball.stream_processors.pricing import PriceBook
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore
from flyball.stream_processors.topics import ensure_topics

from .app import Deps, create_app
from .auth import Principal, Role
from .errors import InvalidInput, PermanentError, TemporaryError

if TYPE_CHECKING:
    from .auth import KeyRing
from .directives import ControlLoop
from .embedded import EmbeddedBroker, free_port, start_tansu
from .plane import ControlPlane, build_control_plane
from .policy import Policies
from .policy_file import DEFAULT_POLICIES
from .finance import Finance
from .metrics import serve_metrics
from .otlp import OtlpOptions
from .receiver import OtlpReceiver
from .migrations import ALL_MIGRATIONS
from .settings import Settings
from .ui.queries import rollup_loop as console_rollup_loop
from .supervisor import Supervisor

log = structlog.get_logger(__name__)


def configure_logging(level: str = "info", *, stream: Any = sys.stderr) -> None:
    """structlog JSON lines, configured once per entry point."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=stream, format="%(message)s")
    # aiokafka logs Tansu's refusal of idempotence at ERROR on every producer; we log it once ourselves
    logging.getLogger("aiokafka.producer.sender").setLevel(logging.CRITICAL)
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )


def load_prices(path: Path | None, skipped: list[str] | None = None) -> PriceBook:
    """The catalog at ``path`` (either format) or the built-in one. LiteLLM rows that cannot be
    read are left out: into ``skipped`` if given, else logged (``price_rows_skipped``)."""
    if path is not None:
        report: list[str] = [] if skipped is None else skipped
        book = load_catalog(path.read_bytes(), source=str(path), skipped=report)
        if report and skipped is None:
            log.warning("price_rows_skipped", file=str(path), count=len(report), note=skipped_note(report))
        return book
    text = resources.files("flyball.stream_processors").joinpath("data/prices.json").read_bytes()
    return load_catalog(text, source="flyball built-in catalog")


def load_sensitivity(path: Path | None) -> SensitivityTable:
    """The detectors' sensitivity: the file's (``FLYBALL_DETECTION_FILE``) or the defaults."""
    return SensitivityTable.load(path) if path is not None else SensitivityTable()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the System owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class System:
    settings: Settings
    worker: bool = True
    api: bool = True
    broker: EmbeddedBroker | None = None
    bootstrap: str = ""
    api_url: str = ""
    admin_key: str = ""
    store: ClickHouseStore | None = None
    ingest: IngestService | None = None
    control: ControlLoop | None = None
    policies: Policies | None = None  # None: FLYBALL_POLICIES_FILE or the shipped defaults (see plane.py)
    releases: ReleaseParams | None = None  # None: the defaults, per tenant if FLYBALL_RELEASES_PER_TENANT
    plane: ControlPlane | None = None
    book: PriceBook = field(default_factory=PriceBook)
    finance: Finance | None = None
    otlp: OtlpReceiver | None = None
    signing: KeySet = field(default_factory=KeySet)  # what directives and alerts are signed with
    supervisor: Supervisor = field(default_factory=Supervisor)
    _server: _Server | None = None

    async def start(self, *, ready_timeout: float = 30.0) -> None:
        s = self.settings
        t0 = time.monotonic()
        s.data_dir.mkdir(parents=True, exist_ok=True)
        if s.kafka_bootstrap:
            self.bootstrap = s.kafka_bootstrap
        else:
            self.broker = await asyncio.to_thread(start_tansu, log_file=s.data_dir / "tansu.log")
            self.bootstrap = self.broker.bootstrap
        await ensure_topics(self.bootstrap, s.topic_specs())
        self.store = await asyncio.to_thread(ClickHouseStore, s.clickhouse(), s.ddl())
        await asyncio.to_thread(self.store.migrate, ALL_MIGRATIONS)
        base = load_prices(s.prices_file)  # read once: the reload below lays the API's changes over it too
        self.finance = Finance(self.store, get_book=lambda: self.book, set_book=lambda b: setattr(self, "book", b))
        self.book = await asyncio.to_thread(self.finance.restore_prices, base)  # + changes made via the API
        await asyncio.to_thread(self.finance.load_budgets)
        sup = self.supervisor
        if self.broker is not None:
            broker = self.broker
            sup.watch("broker", lambda: broker.process.poll() is None)
        sup.spawn("rollups", self.finance.rollup_loop(s.rollup_interval_s))
        if self.api:  # the console's charts read this rollup; a few seconds behind the events
            sup.spawn("console-rollup", console_rollup_loop(self.store, min(5.0, s.rollup_interval_s)))
        waits: list[asyncio.Event] = []
        # one process holding every signer and verifier (`flyball up`) makes its own key
        self.signing = s.keyset(generate=self.worker and self.api)
        if not self.signing.enabled:
            log.warning("signing_disabled", hint="set FLYBALL_SIGNING_KEYS: without it directives and alerts "
                                                 "are not authenticated and any writer to their topics is obeyed")
        if self.worker:
            tune_gc_for_batches()
            lateness = timedelta(seconds=s.allowed_lateness_s)
            budgets = BudgetTracker(self.finance.budget_list, asks=True, lateness=lateness)
            detectors = Detectors(sensitivity=load_sensitivity(s.detection_file), max_scopes=s.detector_max_scopes,
                                  max_tenant_scopes=s.detector_max_tenant_scopes)
            params = self.releases or ReleaseParams(per_tenant=s.releases_per_tenant)
            releases = ReleaseComparator(params)
            pipeline = Pipeline(lambda: self.book, budgets=budgets, lateness=lateness, detectors=detectors,
                                releases=releases)
            self.ingest = IngestService(bootstrap=self.bootstrap, store=self.store, pipeline=pipeline,
                                        group_id=s.worker_group, session_timeout_ms=s.session_timeout_ms,
                                        linger_ms=s.worker_linger_ms, min_batch=s.worker_min_batch,
                                        checkpoint_interval_s=s.detector_checkpoint_s, worker_id=s.worker_id,
                                        seeds=self.finance, clients=KafkaClients(self.bootstrap),
                                        signing=self.signing, memory=self._memory_hygiene(self.store))
            await self.ingest.start()
            sup.spawn("ingest", self.ingest.run())
            log.info("worker_started", group=self.ingest.group_id)
            waits.append(self.ingest.ready)
            if not self.api and s.metrics_port:
                serve_metrics(self.stats(), host=s.api_host, port=s.metrics_port)
            if not self.api:  # price and budget changes arrive through another process's API
                sup.spawn("finance-reload", self._reload_finance(base, s.finance_reload_s))
        if self.api:
            self.plane = await build_control_plane(s, bootstrap=self.bootstrap, store=self.store,
                                                   policies=self.policies, signing=self.signing)
            self.control = self.plane.loop
            await self.plane.start()
            sup.spawn("control", self.control.run())
            waits.append(self.control.ready)
            self.otlp = OtlpReceiver(self.bootstrap, OtlpOptions(
                tenant_attributes=tuple(s.otlp_tenant_attributes), feature_attributes=tuple(s.otlp_feature_attributes),
                max_body_bytes=s.otlp_max_body_bytes))
            await self.otlp.start()
            keys = self.plane.keys
            self.admin_key = s.admin_api_key.get_secret_value() if s.admin_api_key else "fb_admin_" + secrets.token_urlsafe(24)
            keys.add(self.admin_key, Principal(key_id="admin", role=Role.ADMIN, name="bootstrap admin"))
            app = create_app(self._deps(keys))
            kpi_refresher = app.state.kpi_refresher  # the KPI rollups, kept current off the request path
            if kpi_refresher is not None:
                slo_holder = app.state.slo_registry

                async def current_slos() -> Any:
                    return (await slo_holder.get()).current
                sup.spawn("kpi-rollup", kpi_refresher.loop(current_slos, max(5.0, s.rollup_interval_s)))
            port = s.api_port or free_port()
            # a console tab holds an event stream open: at shutdown it gets 5 s, then is cut
            self._server = _Server(uvicorn.Config(app, host=s.api_host, port=port, log_level="warning",
                                                  access_log=False, lifespan="off", timeout_graceful_shutdown=5))
            serving = sup.spawn("api", self._server.serve())
            self.api_url = f"http://{s.api_host}:{port}"
            while not self._server.started:
                if serving.done():
                    serving.result()  # raises the bind error
                    raise RuntimeError("the API server ended before it started")
                await asyncio.sleep(0.02)
        ready: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*(w.wait() for w in waits)))
        died: asyncio.Future[Any] = asyncio.ensure_future(sup.failed.wait())
        done, _ = await asyncio.wait({ready, died}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        for fut in (ready, died):
            if fut not in done:
                fut.cancel()
        if died in done:
            raise RuntimeError(f"a part of flyball died while starting: {sup.deaths[0].task}: {sup.deaths[0].error}")
        if ready not in done:
            raise RuntimeError(f"flyball did not become ready within {ready_timeout}s")
        log.info("system_ready", bootstrap=self.bootstrap, api=self.api_url, seconds=round(time.monotonic() - t0, 2))

    def _memory_hygiene(self, store: ClickHouseStore) -> MemoryHygiene:
        """The worker's allocators handed their free pages back every worker_trim_interval_s."""
        async def purge() -> None:
            await store.run(store.purge_allocator)
        return MemoryHygiene(TrimSchedule(self.settings.worker_trim_interval_s), trim=glibc_trim(), purge=purge)

    async def _reload_finance(self, base: PriceBook, interval_s: float) -> None:
        """Follow the prices and budgets that the API process records in ClickHouse."""
        assert self.finance is not None
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.book = await asyncio.to_thread(self.finance.restore_prices, base)
                await asyncio.to_thread(self.finance.load_budgets)
            except (TemporaryError, PermanentError, InvalidInput) as exc:  # keep the last good book and budgets
                log.warning("finance_reload_failed", error=str(exc)[:300])

    def stats(self) -> dict[str, Callable[[], float]]:
        """The process's counters, exported as ``flyball_<name>`` gauges."""
        ingest = self.ingest
        stats: dict[str, Callable[[], float]] = {}
        if ingest is not None:
            stats = {
                "events_consumed": lambda: float(ingest.stats.events),
                "events_stored": lambda: float(ingest.stats.rows),
                "events_dead_lettered": lambda: float(ingest.stats.dead_lettered),
                "events_duplicate": lambda: float(ingest.stats.duplicates),
                "alerts_raised": lambda: float(ingest.stats.alerts),
                "consumer_lag": lambda: float(ingest.stats.lag),
                "inserts": lambda: float(ingest.stats.inserts),
                "insert_seconds": lambda: ingest.stats.insert_seconds,
            }
        control = self.control
        if control is not None:
            stats["directives_active"] = lambda: float(len(control.active()))
        otlp = self.otlp
        if otlp is not None:
            stats["otlp_spans_accepted"] = lambda: float(otlp.stats.spans_accepted)
            stats["otlp_spans_rejected"] = lambda: float(otlp.stats.spans_rejected)
            stats["otlp_spans_ignored"] = lambda: float(otlp.stats.spans_ignored)
        return stats

    def _deps(self, keys: KeyRing) -> Deps:
        ingest, control, otlp = self.ingest, self.control, self.otlp
        stats = self.stats()
        plane = self.plane
        extra: dict[str, Any] = {}
        if plane is not None:
            extra = {"state": plane.state, "marks": plane.marks, "limiter": plane.limiter, "read_limiter": plane.read_limiter,
                     "set_policies": plane.set_policies, "slos": plane.slos}
        return Deps(
            store=self.store, control=control, keys=keys, prices=lambda: self.book, finance=self.finance, otlp=otlp,
            **extra,
            policies=plane.policies if plane is not None else (lambda: self.policies or DEFAULT_POLICIES),
            stats=stats,
            ready=lambda: {
                **({"worker_ready": ingest.working()} if ingest is not None else {}),
                **({"control_ready": control.working()} if control is not None else {}),
            },
            parts=self.supervisor.parts,
        )

    async def stop(self) -> None:
        self.supervisor.quiesce()
        if self._server is not None:
            self._server.should_exit = True
        if self.ingest is not None:
            await self.ingest.stop()
        if self.otlp is not None:
            await self.otlp.stop()
        if self.plane is not None:
            await self.plane.stop()
        elif self.control is not None:
            await self.control.stop()
        await self.supervisor.stop()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
