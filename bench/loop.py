"""Loop latency: spike start (first spiking event emitted) -> the shim's guard() refuses.

Runs the whole system in-process (worker + control loop + API) on each real broker, backfills
80 minutes of baseline (the detectors' cold start is an hour) for a fresh tenant, emits a spike, and polls guard() every 5 ms.
Prints each run and the median per broker. Starts its own brokers with
scripts/testbrokers.py unless FLYBALL_TEST_TANSU_BOOTSTRAP / FLYBALL_TEST_KAFKA_BOOTSTRAP are set.

    python bench/loop.py [--runs 5] [--brokers tansu,kafka]
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
from flyball.schemas import ActionKind, AlertKind  # noqa: E402



async def measure(bootstrap: str, runs: int, data_dir: Path) -> list[float]:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(kafka_bootstrap=bootstrap, data_dir=data_dir, api_port=free_port(), admin_api_key="bench",
                        worker_group=f"bench-worker-{tag}", control_group=f"bench-control-{tag}")
    policies = Policies(policies=(Policy(policy_id="throttle", alert_kind=AlertKind.COST_SPIKE,
                                         action=ActionKind.THROTTLE, ttl_s=300, rate_per_s=0.0, burst=0),))
    system = System(settings, policies=policies)
    await system.start(ready_timeout=60)
    tel = await asyncio.to_thread(Telemetry, "bench", bootstrap=bootstrap)
    out = []
    try:
        await asyncio.sleep(2)  # let the shim's directive follower settle
        for _ in range(runs):
            tenant = f"loop-{uuid.uuid4().hex[:8]}"
            now = datetime.now(UTC)
            for back in range(4800, 0, -3):
                tel.emit_llm_call(tenant_id=tenant, provider="openai", model="gpt-4o-mini", input_tokens=1000,
                                  output_tokens=200, ts=now - timedelta(seconds=back))
            await asyncio.to_thread(tel.flush, 30)
            await asyncio.sleep(1.0)
            start = time.perf_counter()
            for _ in range(20):
                tel.emit_llm_call(tenant_id=tenant, provider="openai", model="gpt-4o", input_tokens=40_000,
                                  output_tokens=3_000)
            while tel.guard(tenant_id=tenant).allowed:
                if time.perf_counter() - start > 60:
                    raise RuntimeError("loop did not close within 60 s")
                await asyncio.sleep(0.005)
            out.append(time.perf_counter() - start)
            print(f"  run {len(out)}: {out[-1]*1000:.0f} ms", flush=True)
    finally:
        await asyncio.to_thread(tel.close, 5)
        await system.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--brokers", default="tansu,kafka")
    args = parser.parse_args()
    configure_logging("error")
    results = {}
    for broker, bootstrap, work in each_broker(args.brokers):
        runs = asyncio.run(measure(bootstrap, args.runs, work))
        results[broker] = {"runs_ms": [round(r * 1000, 1) for r in runs],
                           "median_ms": round(statistics.median(runs) * 1000, 1),
                           "max_ms": round(max(runs) * 1000, 1)}
    print("\nspike start -> guard refuses (median of runs):")
    for broker, r in results.items():
        print(f"  {broker:<6} median {r['median_ms']:>7.1f} ms   max {r['max_ms']:>7.1f} ms   runs {r['runs_ms']}")
    (ROOT / "bench/out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench/out/loop.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
