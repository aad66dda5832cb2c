"""Shared by the pipeline and detector benchmarks: the worker with its detectors switched off."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from flyball.stream_processors import pipeline as pipeline_mod
from flyball.stream_processors.detectors import Detectors


class NoDetectors(Detectors):
    """The worker's own detectors with their two entry points emptied: the pipeline still
    calls them, so what a run without them leaves out is exactly the detectors' work."""

    def observe(self, b: Any) -> list[Any]:
        return []

    def advance(self, watermark: datetime) -> list[Any]:
        return []


class NoWindows:
    __slots__ = ()

    def add(self, event: Any, cost: Any) -> None:
        return None


@contextlib.contextmanager
def without_detectors() -> Iterator[NoDetectors]:
    """Yield detectors to pass to ``Pipeline(detectors=...)``; meanwhile the pipeline module's
    per-batch ``BatchWindows`` is a no-op (bench-only swap, undone on exit)."""
    real = pipeline_mod.BatchWindows
    pipeline_mod.BatchWindows = NoWindows  # type: ignore[misc,assignment]
    try:
        yield NoDetectors()
    finally:
        pipeline_mod.BatchWindows = real  # type: ignore[misc]
