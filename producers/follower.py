"""The directive follower: keeps the shim's ``DirectiveView`` in step with ``flyball.directives.v1``,
with HTTP ``GET /v1/directives`` polling as the fallback when the view goes stale."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from flyball.schemas import DIRECTIVES, Directive

from .enforcement import DirectiveIntake, DirectiveRefused, DirectiveView
from .logs import Outage, get_logger
from .transports import Transport

log = get_logger("flyball.producers.client")


async def follow_directives(transport: Transport, view: DirectiveView, counters: Any,
                            intake: DirectiveIntake | None = None) -> None:
    """Apply every directive the transport delivers to ``view`` once ``intake`` admits it
    (signature, version, expiry clamp); runs until cancelled."""
    intake = intake or DirectiveIntake()
    outage = Outage(log, "following the directive topic")
    last_prune = 0.0
    while True:
        try:
            async for values in transport.follow(DIRECTIVES):
                now = time.time()
                outage.recovered(now=time.monotonic())
                for value in values:
                    try:
                        directive = intake.admit(value, now=now)
                    except DirectiveRefused as exc:
                        counters.directives_refused += 1
                        log.warning("directive refused: %s", exc.reason)
                        continue
                    view.apply(directive)
                    counters.directives_seen += 1
                synced = getattr(transport, "synced_at", None)
                if synced is not None and (view.updated_at is None or synced > view.updated_at):
                    view.mark_synced(synced)
                if now - last_prune > 10:
                    view.prune(now=now)
                    last_prune = now
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep following; the view keeps its last state
            outage.failed(exc, now=time.monotonic())
            await asyncio.sleep(1.0)


async def poll_directives(base_url: str, api_key: str | None, view: DirectiveView, interval: float) -> None:
    """HTTP fallback: when the followed view is stale, poll ``GET /v1/directives``."""
    try:
        import httpx  # optional: only a shim configured with a directives URL needs it
    except ImportError:
        log.warning("directive polling disabled: httpx is not installed")
        return
    url = base_url.rstrip("/") + "/v1/directives"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    outage = Outage(log, "polling the directives URL")
    async with httpx.AsyncClient(timeout=5.0, headers=headers) as client:
        while True:
            await asyncio.sleep(interval)
            if view.age(time.time()) <= 2 * interval:
                continue  # the follower is fresh
            try:
                response = await client.get(url)
                response.raise_for_status()
                directives = [Directive.model_validate(d) for d in response.json()]
            except Exception as exc:  # noqa: BLE001 - try again next interval
                outage.failed(exc, now=time.monotonic())
                continue
            outage.recovered(now=time.monotonic())
            view.replace_all(directives, now=time.time())
