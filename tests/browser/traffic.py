"""Demo-like traffic for the console's browser tests: three tenants, each request a chain
(retrieval, a tenth of them empty -> a streamed model call by one of 40 users per tenant -> tool
call, sometimes a safety trigger), eighty minutes of backfilled
history, then live traffic from a thread; ``spike(tenant)`` starts a runaway batch job (as in
``flyball demo``) that the shipped cost-spike policy throttles. The product service asks
``guard()`` first and skips refused calls, as a real one should."""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from flyball.producers import Telemetry

TENANTS = ("acme", "globex", "initech")
RATE = 2.0  # requests per second per tenant


class Traffic:
    def __init__(self, bootstrap: str, *, seed: int = 7) -> None:
        self.tel = Telemetry(service="console-test-shop", bootstrap=bootstrap)
        self.rng = random.Random(seed)
        self._stop = threading.Event()
        self._spiking: str | None = None
        self._thread: threading.Thread | None = None
        self.request_ids: list[str] = []

    def request(self, tenant: str, ts: datetime | None = None) -> str:
        rng, rid = self.rng, f"req-{uuid.uuid4().hex[:12]}"
        extra = {"ts": ts} if ts is not None else {}
        common = {"tenant_id": tenant, "feature": "support-bot", "request_id": rid, **extra}
        self.tel.emit_retrieval(index_name="kb-articles", results_count=rng.choice((0, 1, 3, 5, 8, 8, 8, 8, 8, 8)),
                                latency_ms=rng.uniform(20, 80), status="ok" if rng.random() > 0.02 else "error", **common)
        self.tel.emit_llm_call(provider="openai", model="gpt-4o-mini", input_tokens=rng.randint(800, 1600),
                               output_tokens=rng.randint(150, 400), cache_read_tokens=rng.choice((0, 0, 512)),
                               latency_ms=rng.uniform(400, 1200), ttft_ms=rng.uniform(150, 300), stream=True,
                               user_id=f"{tenant}-user-{rng.randint(1, 40)}",
                               status="ok" if rng.random() > 0.02 else "timeout", **common)
        self.tel.emit_tool_call(tool_name="order-lookup", latency_ms=rng.uniform(30, 120),
                                status="ok" if rng.random() > 0.03 else "error", **common)
        if rng.random() < 0.05:
            self.tel.emit_safety_trigger(filter_name="pii-scan", category=rng.choice(("pii", "toxicity")),
                                         action="redacted", **common)
        self.request_ids.append(rid)
        return rid

    def backfill(self, minutes: int = 3) -> None:
        now = datetime.now(UTC)
        for step in range(int(minutes * 60 * RATE), 0, -1):
            for tenant in TENANTS:
                self.request(tenant, ts=now - timedelta(seconds=step / RATE))
        self.tel.flush()

    def spike(self, tenant: str | None) -> None:
        self._spiking = tenant

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="console-traffic", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            for tenant in TENANTS:
                if self.tel.guard(tenant_id=tenant, feature="support-bot").allowed:
                    self.request(tenant)
            spiker = self._spiking
            if spiker is not None:
                for _ in range(5):
                    if self.tel.guard(tenant_id=spiker, feature="batch-summarize", model="gpt-4o").allowed:
                        self.tel.emit_llm_call(tenant_id=spiker, feature="batch-summarize", provider="openai",
                                               model="gpt-4o", input_tokens=self.rng.randint(30_000, 50_000),
                                               output_tokens=self.rng.randint(2_000, 4_000), latency_ms=9_000)
            next_at += 1 / RATE
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.tel.flush()

    def close(self) -> None:
        self.stop()
        self.tel.close(timeout=5)
