"""Prometheus gauges over a process's counters (``flyball_<name>``), for the API's ``/metrics``
and for a worker-only process's own endpoint (``FLYBALL_METRICS_PORT``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Gauge, start_http_server


def registry_of(stats: Mapping[str, Callable[[], float]]) -> CollectorRegistry:
    registry = CollectorRegistry()
    for name, fn in stats.items():
        Gauge(f"flyball_{name}", f"flyball {name.replace('_', ' ')}", registry=registry).set_function(fn)
    return registry


def serve_metrics(stats: Mapping[str, Callable[[], float]], *, host: str, port: int) -> None:
    """``GET /metrics`` on ``host:port`` in a daemon thread (no key: bind it to a private address)."""
    start_http_server(port, addr=host, registry=registry_of(stats))
