"""Detectors: pure functions of (state, windowed sample, event time) -> alert or nothing.

No I/O and no clock: time is the events' own (event time), so ``flyball replay`` and the live
worker raise the same alerts for the same events. One module per family of statistics:
``spike`` (median/MAD rate spikes of cost and tokens), ``rates`` (binomial failure-rate tests,
Poisson count bursts, p95 latency exceedance tests), ``runaway`` (per-request loops); ``suite``
runs them all over one batch.
"""

from .base import (
    ALERT_NAMESPACE,
    BASE_WINDOW_S,
    AlertBook,
    Evidence,
    WindowSample,
    alert_id_for,
    window_start,
)
from .rates import (
    BinomialParams,
    BinomialRateDetector,
    LatencyDetector,
    LatencyParams,
    PoissonBurstDetector,
    PoissonParams,
)
from .runaway import RunawayDetector, RunawayParams
from .spike import (
    COST_PARAMS,
    MAD_SCALE,
    TOKEN_PARAMS,
    CostSpikeDetector,
    RateSpikeDetector,
    Series,
    SpikeParams,
)
from .suite import BatchWindows, Detectors

__all__ = [
    "ALERT_NAMESPACE", "BASE_WINDOW_S", "COST_PARAMS", "MAD_SCALE", "TOKEN_PARAMS", "AlertBook", "BatchWindows",
    "BinomialParams", "BinomialRateDetector", "CostSpikeDetector", "Detectors", "Evidence", "LatencyDetector",
    "LatencyParams", "PoissonBurstDetector", "PoissonParams", "RateSpikeDetector", "RunawayDetector",
    "RunawayParams", "Series", "SpikeParams", "WindowSample", "alert_id_for", "window_start",
]
