"""The faust-streaming worker app: wiring only.

faust owns the worker's lifecycle (start, stop, crash handling, signals under ``flyball
worker``). The hot path is the batched :class:`IngestService`, run as a faust task, because
faust's per-event stream machinery is the measured bottleneck (see ``ingest.py``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import faust
import structlog

from .ingest import IngestService

log = structlog.get_logger(__name__)


def create_app(*, bootstrap: str, ingest: IngestService, app_id: str = "flyball-worker",
               session_timeout_s: float = 6.0, datadir: str | Path | None = None) -> faust.App:
    """``datadir``: faust's own directory (it keeps no tables here, but creates one); by default
    faust puts ``<app id>-data`` in the current directory."""
    extra = {} if datadir is None else {"datadir": str(datadir)}
    app = faust.App(
        f"{app_id}-host",  # faust's own group; short session timeout so a stale member is dropped fast
        broker=f"kafka://{bootstrap}",
        web_enabled=False,
        autodiscover=False,
        store="memory://",
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=max(session_timeout_s / 6, 0.5),
        producer_acks=-1,
        **extra,
    )

    @app.task
    async def run_ingest() -> None:
        await ingest.start()
        log.info("worker_started", group=ingest.group_id)
        try:
            await ingest.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker_crashed")
            raise

    return app
