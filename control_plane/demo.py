"""`flyball demo`: `up` plus synthetic traffic with an injected cost spike, printing the loop
as it closes: spike -> alert -> directive -> guard refuses -> TTL expiry -> allowed again.

The product service in this demo behaves as a real one should: it asks ``guard()`` before
each call and skips the call when refused.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import SecretStr

from flyball.producers import Telemetry
from flyball.producers.client import ShimSettings
from flyball.schemas import ActionKind, AlertKind

from .policy import Policies, Policy
from .runtime import System
from .settings import Settings

TENANTS = ("acme", "globex", "initech")
SPIKER = "globex"
NORMAL_RATE = 2.0  # calls per second per tenant, in the backfilled history and live
DEMO_POLICIES = Policies(policies=(
    Policy(policy_id="cost-spike-throttle-tenant", alert_kind=AlertKind.COST_SPIKE, action=ActionKind.THROTTLE,
           ttl_s=20, cooldown_s=60, rate_per_s=0.5, burst=1),
))


class Printer:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, what: str, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {what:<9} {text}", flush=True)


def _ok(response: httpx.Response) -> Any:
    response.raise_for_status()
    return response.json()


def _normal_call(tel: Telemetry, tenant: str, rng: random.Random, ts: datetime | None = None) -> None:
    extra: dict[str, Any] = {"ts": ts} if ts is not None else {}
    tel.emit_llm_call(tenant_id=tenant, feature="support-bot", provider="openai", model="gpt-4o-mini",
                      input_tokens=rng.randint(800, 1600), output_tokens=rng.randint(150, 400),
                      latency_ms=rng.uniform(400, 1200), **extra)


async def run_demo(settings: Settings, *, spike_at: float = 6.0, spike_for: float = 12.0,
                   duration: float = 55.0, seed: int = 7) -> int:
    say = Printer()
    rng = random.Random(seed)
    system = System(settings, policies=DEMO_POLICIES)
    say("start", "starting flyball (embedded broker + chDB + worker + control plane + API) ...")
    await system.start()
    say("ready", f"Kafka bootstrap {system.bootstrap}   API {system.api_url}   admin key {system.admin_key}")
    say("console", f"open {system.api_url}/ui and log in with the admin key above to watch the loop close live")
    keys = ",".join(f"{kid}:{secret.decode()}" for kid, secret in system.signing.keys.items())
    tel = Telemetry(service="demo-shop", bootstrap=system.bootstrap,
                    settings=ShimSettings(signing_keys=SecretStr(keys) if keys else None))
    headers = {"Authorization": f"Bearer {system.admin_key}"}
    try:
        # 80 minutes of event-time history, so the detectors have a baseline to compare with (their
        # cold start is an hour of a scope's own history).
        now = datetime.now(UTC)
        for step in range(int(80 * 60 * NORMAL_RATE), 0, -1):  # the pace of the live traffic below
            for tenant in TENANTS:
                _normal_call(tel, tenant, rng, ts=now - timedelta(seconds=step / NORMAL_RATE))
        tel.flush()
        say("traffic", f"backfilled 80 minutes of baseline traffic for {', '.join(TENANTS)}; live traffic now")
        seen_alerts: set[tuple[str, str]] = set()
        seen_directives: dict[str, str] = {}
        refused_shown = allowed_again_shown = False
        spike_started = None
        async with httpx.AsyncClient(base_url=system.api_url, headers=headers, timeout=5) as api:
            start = time.monotonic()
            next_poll = next_normal = 0.0
            while (elapsed := time.monotonic() - start) < duration:
                if elapsed >= next_normal:
                    next_normal += 1 / NORMAL_RATE
                    for tenant in TENANTS:
                        if tel.guard(tenant_id=tenant, feature="support-bot").allowed:
                            _normal_call(tel, tenant, rng)
                spiking = spike_at <= elapsed < spike_at + spike_for
                if spiking and spike_started is None:
                    spike_started = time.monotonic()
                    say("incident", f"{SPIKER} starts a runaway batch job: gpt-4o, ~40k tokens per call, 10 calls/s")
                if spiking:
                    for _ in range(5):
                        d = tel.guard(tenant_id=SPIKER, feature="batch-summarize", model="gpt-4o")
                        if d.allowed:
                            tel.emit_llm_call(tenant_id=SPIKER, feature="batch-summarize", provider="openai",
                                              model="gpt-4o", input_tokens=rng.randint(30_000, 50_000),
                                              output_tokens=rng.randint(2_000, 4_000), latency_ms=9_000)
                        elif not refused_shown:
                            refused_shown = True
                            lat = time.monotonic() - (spike_started or time.monotonic())
                            other = tel.guard(tenant_id="acme")
                            say("guard", f"guard({SPIKER}) -> REFUSED ({d.reason}, retry after {d.retry_after_s:.1f}s); "
                                         f"guard(acme) -> {'allowed' if other.allowed else 'refused'}   "
                                         f"[spike start -> refusal: {lat:.1f}s]")
                if spike_started is not None and not spiking and refused_shown and not allowed_again_shown:
                    d = tel.guard(tenant_id=SPIKER)
                    if d.allowed and not any(v == "active" for v in seen_directives.values()):
                        allowed_again_shown = True
                        say("guard", f"guard({SPIKER}) -> allowed again (directive expired)")
                if elapsed >= next_poll:
                    next_poll = elapsed + 0.5
                    for alert in _ok(await api.get("/v1/alerts")):
                        key = (alert["alert_id"], alert["status"])
                        if key not in seen_alerts:
                            seen_alerts.add(key)
                            unit = "$" if "cost" in alert["metric"] or "usd" in alert["metric"] else ""
                            say("alert", f"{alert['kind']} {alert['status']} {alert['scope']} severity={alert['severity']} "
                                         f"observed {unit}{alert['observed']} vs threshold {unit}{alert['threshold']} "
                                         f"({alert['metric']}, {alert['window_s']}s window)")
                    for act in reversed(_ok(await api.get("/v1/actions"))):
                        did = act["directive_id"]
                        if not did or seen_directives.get(f"{did}:{act['decision']}"):
                            continue
                        seen_directives[f"{did}:{act['decision']}"] = "seen"
                        after = act["after"] or {}
                        if act["decision"] == "applied":
                            seen_directives[did] = "active"
                            say("directive", f"{after.get('action')} {act['scope_key']} rate={after.get('rate_per_s')}/s "
                                             f"until {after.get('expires_at')} (policy {act['policy_id']})")
                        elif act["decision"] in ("expired", "reverted"):
                            seen_directives[did] = act["decision"]
                            say("directive", f"{act['decision']} {act['scope_key']} ({act['reason']})")
                if allowed_again_shown and elapsed > spike_at + spike_for + 3:
                    break
                await asyncio.sleep(0.1)
            tel.flush()
            await asyncio.sleep(1.0)
            spend = _ok(await api.get("/v1/spend", params={"group_by": "tenant_id"}))
            for row in spend["rows"]:
                say("spend", f"{row['tenant_id']:<8} {row['events']:>6} calls  ${row['cost_usd']}")
            say("spend", f"total    {spend['events']:>6} calls  ${spend['total_usd']}")
        closed = refused_shown and allowed_again_shown
        say("done", "the loop closed: alert -> directive -> guard refused -> TTL expiry -> allowed again"
            if closed else "the loop did NOT close within the demo's time")
        return 0 if closed else 1
    finally:
        tel.close(timeout=5)
        await system.stop()
