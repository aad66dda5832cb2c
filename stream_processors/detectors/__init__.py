"""Detectors: pure functions of (state, windowed sample, event time) -> alert or nothing.

No I/O and no clock: time is the events' own (event time), so ``flyball replay`` and the live
worker raise the same alerts for the same events. One module per family of statistics:
``amounts`` (cost and token rate spikes, compound-Poisson tests), ``rates`` (exact binomial
failure-rate tests, exact Poisson count bursts, p95 latency exceedance tests), ``runaway``
(per-request loops); ``sensitivity`` holds their knobs per kind and tenant, ``incidents`` groups
related alerts into one incident; ``suite`` runs them all over one batch. See docs/DETECTION.md.
"""

from .amounts import AmountParams, AmountSpikeDetector, tail_p
from .base import (
    ALERT_NAMESPACE,
    BASE_WINDOW_S,
    AlertBook,
    Evidence,
    WindowSample,
    alert_id_for,
    window_start,
)
from .incidents import IncidentGrouper
from .rates import (
    BinomialParams,
    BinomialRateDetector,
    LatencyDetector,
    LatencyParams,
    PoissonBurstDetector,
    PoissonParams,
)
from .runaway import RunawayDetector, RunawayParams
from .sensitivity import DEFAULTS, Sensitivity, SensitivityTable
from .suite import BatchWindows, Detectors

__all__ = [
    "ALERT_NAMESPACE", "BASE_WINDOW_S", "DEFAULTS", "AlertBook", "AmountParams", "AmountSpikeDetector",
    "BatchWindows", "BinomialParams", "BinomialRateDetector", "Detectors", "Evidence", "IncidentGrouper",
    "LatencyDetector", "LatencyParams", "PoissonBurstDetector", "PoissonParams", "RunawayDetector",
    "RunawayParams", "Sensitivity", "SensitivityTable", "WindowSample", "alert_id_for", "tail_p", "window_start",
]
