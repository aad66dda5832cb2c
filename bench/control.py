"""Control-plane latency: an alert published on flyball.alerts.v1 -> the directive it causes is
visible in a shim's guard() (target: p95 <= 2 s on Tansu and on Apache Kafka).

Runs the control plane + API in-process (no worker: the alerts are published directly, as the
detectors would), and one shim. For each of N alerts (a fresh tenant each) it publishes a
cost_spike alert and polls guard() every 2 ms until it refuses. Baseline, in the same run: a
directive published straight on flyball.directives.v1 -> visible in guard(), i.e. the shim's
own follow latency without the control plane in between. Prints p50/p95/max and the ratio.
Starts its own brokers with scripts/testbrokers.py unless FLYBALL_TEST_*_BOOTSTRAP are set.

    python bench/control.py [--alerts 20] [--brokers tansu,kafka]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._brokers import each_broker  # noqa: E402
from flyball.control_plane.embedded import free_port  # noqa: E402
from flyball.control_plane.policy import Policies, Policy  # noqa: E402
from flyball.control_plane.runtime import System, configure_logging  # noqa: E402
from flyball.control_plane.settings import Settings  # noqa: E402
from flyball.producers import Telemetry  # noqa: E402
from flyball.producers.transports.kafka import start_producer  # noqa: E402
from flyball.schemas import ALERTS, DIRECTIVES, ActionKind, Alert, AlertKind, Directive, Scope  # noqa: E402



def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _until_refused(tel: Telemetry, tenant: str, start: float) -> float:
    while tel.guard(tenant_id=tenant).allowed:
        if time.perf_counter() - start > 30:
            raise RuntimeError("no directive within 30 s")
        await asyncio.sleep(0.002)
    return time.perf_counter() - start


async def measure(bootstrap: str, n: int, data_dir: Path) -> tuple[list[float], list[float]]:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(kafka_bootstrap=bootstrap, data_dir=data_dir, api_port=free_port(), admin_api_key="bench",
                        control_group=f"bench-control-{tag}")
    policies = Policies(policies=(Policy(policy_id="throttle", alert_kind=AlertKind.COST_SPIKE,
                                         action=ActionKind.THROTTLE, ttl_s=300, rate_per_s=0.0, burst=0),),
                        max_active=10_000)
    system = System(settings, worker=False, policies=policies)
    await system.start(ready_timeout=60)
    tel = await asyncio.to_thread(Telemetry, "bench", bootstrap=bootstrap)
    producer = await start_producer(bootstrap)
    loop, base = [], []
    try:
        await asyncio.sleep(2)  # let the shim's directive follower settle
        for i in range(n):
            # the control plane: alert -> decide -> audit -> publish -> shim
            tenant = f"ctl-{tag}-{i}"
            now = datetime.now(UTC)
            alert = Alert(alert_id=str(uuid.uuid4()), kind=AlertKind.COST_SPIKE, scope=Scope(tenant_id=tenant),
                          severity="critical", metric="cost_usd_per_window", observed="9", baseline="1",
                          threshold="3", window_s=10, first_seen=now, last_seen=now)
            start = time.perf_counter()
            await producer.send_and_wait(ALERTS, alert.model_dump_json().encode(), key=alert.key().encode())
            loop.append(await _until_refused(tel, tenant, start))
            # baseline: the same directive straight onto the directive topic
            tenant = f"raw-{tag}-{i}"
            d = Directive(directive_id=str(uuid.uuid4()), action=ActionKind.THROTTLE, scope=Scope(tenant_id=tenant),
                          rate_per_s=0.0, burst=0, created_at=now, expires_at=now + timedelta(seconds=300))
            start = time.perf_counter()
            await producer.send_and_wait(DIRECTIVES, d.model_dump_json().encode(), key=d.key().encode())
            base.append(await _until_refused(tel, tenant, start))
            print(f"  alert {i + 1:>3}: {loop[-1] * 1000:7.1f} ms   (directive straight to the shim "
                  f"{base[-1] * 1000:6.1f} ms)", flush=True)
            await asyncio.sleep(0.2)
    finally:
        await producer.stop()
        await asyncio.to_thread(tel.close, 5)
        await system.stop()
    return loop, base


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=20)
    parser.add_argument("--brokers", default="tansu,kafka")
    args = parser.parse_args()
    configure_logging("error")
    results = {}
    for broker, bootstrap, work in each_broker(args.brokers):
        loop, base = asyncio.run(measure(bootstrap, args.alerts, work))
        results[broker] = {
            "alerts": len(loop),
            "p50_ms": round(statistics.median(loop) * 1000, 1), "p95_ms": round(pct(loop, 0.95) * 1000, 1),
            "max_ms": round(max(loop) * 1000, 1),
            "baseline_p50_ms": round(statistics.median(base) * 1000, 1),
            "baseline_p95_ms": round(pct(base, 0.95) * 1000, 1),
        }
    print("\nalert published -> directive visible in guard() (target p95 <= 2000 ms):")
    for broker, r in results.items():
        ratio = r["p50_ms"] / r["baseline_p50_ms"] if r["baseline_p50_ms"] else float("nan")
        verdict = "OK" if r["p95_ms"] <= 2000 else "MISSED"
        print(f"  {broker:<6} p50 {r['p50_ms']:>7.1f} ms  p95 {r['p95_ms']:>7.1f} ms  max {r['max_ms']:>7.1f} ms  "
              f"[{verdict}]   baseline (directive topic -> guard) p50 {r['baseline_p50_ms']:.1f} ms "
              f"p95 {r['baseline_p95_ms']:.1f} ms   ratio p50 {ratio:.2f}x   over {r['alerts']} alerts")
    (ROOT / "bench/out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench/out/control.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
