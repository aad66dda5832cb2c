"""The shim's client, split by concern; this module keeps the names importable from where
they have always been:

- ``settings.py``  ``ShimSettings`` (``FLYBALL_*`` environment);
- ``ids.py``       ``new_event_id`` (cheap UUIDv4-shaped ids on the caller's thread);
- ``telemetry.py`` ``Telemetry``, the public API (emit, guard, track, flush, close);
- ``sender.py``    the background sender (validate, batch, send, spill, replay) and ``Counters``;
- ``follower.py``  the directive follower and its HTTP polling fallback;
- ``tracker.py``   ``CallTracker`` (``track_*``), with ``streams.py`` for streamed responses;
- ``aio.py``       ``AsyncTelemetry``.
"""

from __future__ import annotations

from .aio import AsyncTelemetry
from .ids import new_event_id
from .sender import Counters
from .settings import ShimSettings
from .telemetry import Telemetry
from .tracker import CallTracker

__all__ = ["AsyncTelemetry", "CallTracker", "Counters", "ShimSettings", "Telemetry", "new_event_id"]
