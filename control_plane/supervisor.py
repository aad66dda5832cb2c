"""Supervision of a server process's long-lived tasks (ingest, control loop, rollups, API, ...).

A task that ends while the process is not stopping (it raised, or returned) is a dead part:
the supervisor logs ``task_died`` with the error and sets :attr:`Supervisor.failed`; the entry
point then stops the process and exits non-zero, so that an orchestrator restarts it (a worker
whose ingest task died must not live on without a consumer). Until the process is gone,
``/healthz`` and ``/readyz`` answer 503 (see :meth:`Supervisor.parts`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Death:
    task: str
    error: str


@dataclass
class Supervisor:
    failed: asyncio.Event = field(default_factory=asyncio.Event)
    deaths: list[Death] = field(default_factory=list)
    _tasks: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    _stopping: bool = False

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as the part called ``name``; its end, before :meth:`stop`, is a death."""
        task = asyncio.create_task(coro, name=name)
        self._tasks[name] = task
        task.add_done_callback(self._ended)
        return task

    def watch(self, name: str, alive: Callable[[], bool], *, every_s: float = 1.0) -> asyncio.Task[Any]:
        """A part that is not a task of this process (a child process): polled, dead when
        ``alive()`` turns false."""
        async def poll() -> None:
            while alive():
                await asyncio.sleep(every_s)
            raise RuntimeError(f"{name} is no longer running")
        return self.spawn(name, poll())

    def _ended(self, task: asyncio.Task[Any]) -> None:
        if self._stopping:
            return
        exc = None if task.cancelled() else task.exception()
        error = "cancelled" if task.cancelled() else "returned" if exc is None else f"{type(exc).__name__}: {exc}"
        log.error("task_died", task=task.get_name(), error=error[:500], exc_info=exc)
        self.deaths.append(Death(task.get_name(), error[:500]))
        self.failed.set()

    def quiesce(self) -> None:
        """The process is stopping: parts that end from now on are not deaths."""
        self._stopping = True

    def alive(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    def parts(self) -> dict[str, bool]:
        """Each supervised part: True while it runs."""
        return {name: not task.done() for name, task in self._tasks.items()}

    async def stop(self) -> None:
        """Cancel what still runs (after :meth:`quiesce` and the parts' own graceful stops)."""
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
