"""``AsyncTelemetry``: the shim's API for asyncio code."""

from __future__ import annotations

import asyncio
from typing import Any

from .enforcement import Decision, DirectiveView
from .sender import Counters
from .telemetry import Telemetry
from .tracker import CallTracker


class AsyncTelemetry:
    """The same API for asyncio code. ``emit_*``, ``guard`` and ``track_*`` are synchronous
    and non-blocking (an append to a deque, a dict lookup); ``flush`` and ``close`` are
    awaitable. Validation, batching, spilling and following run on the shim's own thread, so
    none of that work lands on the application's event loop."""

    def __init__(self, service: str = "", **kwargs: Any) -> None:
        self._sync = Telemetry(service, **kwargs)

    @classmethod
    async def create(cls, service: str = "", **kwargs: Any) -> AsyncTelemetry:
        """Construct without blocking the running loop (the thread start waits briefly)."""
        return await asyncio.to_thread(cls, service, **kwargs)

    @property
    def counters(self) -> Counters:
        return self._sync.counters

    @property
    def view(self) -> DirectiveView:
        return self._sync.view

    def emit_llm_call(self, **fields: Any) -> str:
        return self._sync.emit_llm_call(**fields)

    def emit_tool_call(self, **fields: Any) -> str:
        return self._sync.emit_tool_call(**fields)

    def emit_safety_trigger(self, **fields: Any) -> str:
        return self._sync.emit_safety_trigger(**fields)

    def emit_retrieval(self, **fields: Any) -> str:
        return self._sync.emit_retrieval(**fields)

    def emit_feedback(self, **fields: Any) -> str:
        return self._sync.emit_feedback(**fields)

    def track_llm_call(self, **fields: Any) -> CallTracker:
        return self._sync.track_llm_call(**fields)

    def track_tool_call(self, **fields: Any) -> CallTracker:
        return self._sync.track_tool_call(**fields)

    def track_retrieval(self, **fields: Any) -> CallTracker:
        return self._sync.track_retrieval(**fields)

    def guard(self, **request: Any) -> Decision:
        return self._sync.guard(**request)

    def stats(self) -> dict[str, int]:
        return self._sync.stats()

    async def flush(self, timeout: float = 10.0) -> bool:
        return await asyncio.to_thread(self._sync.flush, timeout)

    async def close(self, timeout: float = 10.0) -> None:
        await asyncio.to_thread(self._sync.close, timeout)

    async def __aenter__(self) -> AsyncTelemetry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

