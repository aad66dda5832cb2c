"""Helpers shared by the integration tests: serve an app over real HTTP, and poll until a condition holds."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from flyball.control_plane.app import Deps, create_app
from flyball.control_plane.auth import KeyRing, RateLimiter, Role
from flyball.control_plane.embedded import free_port
from flyball.control_plane.migrations import ALL_MIGRATIONS
from flyball.control_plane.policy_file import DEFAULT_POLICIES
from flyball.control_plane.runtime import load_prices
from flyball.producers.transports.kafka import start_producer
from flyball.schemas import EVENTS
from flyball.stream_processors.sinks.clickhouse import ClickHouseStore


@contextmanager
def serve_app(app: Any, *, start_timeout: float = 30.0) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in a daemon thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the test API server on port {port} exited before it started")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the test API server on port {port} did not start within {start_timeout}s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def keys_per_role(tenant: str) -> tuple[KeyRing, dict[str, str]]:
    """A key ring with one unbound key per role (named by the role) and one bound to ``tenant``
    (named ``role@tenant``), and their plain texts."""
    keys = KeyRing()
    plain: dict[str, str] = {}
    for role in Role:
        plain[str(role)], _ = keys.create(role)
        plain[f"{role}@{tenant}"], _ = keys.create(role, tenant_id=tenant)
    return keys, plain


@contextmanager
def migrated_store(path: Path) -> Iterator[ClickHouseStore]:
    """A fresh chDB store in ``path`` with every table (the worker's and the control plane's),
    closed when the block ends."""
    store = ClickHouseStore(f"chdb://{path}")
    try:
        store.migrate(ALL_MIGRATIONS)
        yield store
    finally:
        store.close()


@contextmanager
def served_api(path: Path, keys: KeyRing) -> Iterator[tuple[str, Any, ClickHouseStore]]:
    """The API with the keys of ``keys`` over a fresh chDB store in ``path`` (every table, the
    shipped policies and prices, no control loop, no write limit), served over real HTTP:
    yields (base URL, app, store); the store is closed when the block ends."""
    with migrated_store(path) as store:
        book = load_prices(None)
        app = create_app(Deps(store=store, control=None, keys=keys, policies=lambda: DEFAULT_POLICIES,
                              prices=lambda: book, limiter=RateLimiter(per_minute=1e6, burst=10_000)))
        with serve_app(app) as url:
            yield url, app, store


async def produce(bootstrap: str, tenant: str, raws: list[bytes]) -> None:
    """``raws`` to the events topic keyed by ``tenant`` (one partition, in order), flushed."""
    producer = await start_producer(bootstrap)
    try:
        for raw in raws:
            await producer.send(EVENTS, raw, key=tenant.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def eventually(check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1) -> Any:
    """Call ``check`` (plain or async) until it returns something truthy, and return that;
    fail the test with the last value if it never does within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
