"""`flyball worker` and `flyball api` as separate systems on one ClickHouse: a price change
made through the API reaches the worker (which re-reads prices from ClickHouse), and the
worker's spend is served by the API."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx

from flyball.control_plane.runtime import System
from flyball.control_plane.settings import Settings
from flyball.producers import Telemetry
from tests.conftest import free_port

ADMIN = "split-admin"


async def test_a_separate_worker_prices_with_a_change_made_through_the_api(bootstrap: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    common = {"kafka_bootstrap": bootstrap, "data_dir": tmp_path, "admin_api_key": ADMIN, "finance_reload_s": 0.5,
              "worker_group": f"split-worker-{run}", "control_group": f"split-control-{run}"}
    api = System(Settings(api_port=free_port(), **common), worker=False, api=True)
    worker = System(Settings(**common), worker=True, api=False)
    await api.start(ready_timeout=60)
    await worker.start(ready_timeout=60)
    tel = await asyncio.to_thread(Telemetry, "split", bootstrap=bootstrap)
    model, tenant = f"house-model-{run}", f"split-{run}"
    try:
        async with httpx.AsyncClient(base_url=api.api_url, headers={"Authorization": f"Bearer {ADMIN}"},
                                     timeout=10) as client:
            r = await client.post("/v1/prices", json={"provider": "acme-ai", "model": model, "input": "0.000001",
                                                      "output": "0.000002", "effective_from": "2020-01-01T00:00:00+00:00"})
            assert r.status_code == 201, r.text
            deadline = time.monotonic() + 20
            while worker.book.lookup("acme-ai", model, datetime.now(UTC)) is None:
                assert time.monotonic() < deadline, "the worker never saw the new price"
                await asyncio.sleep(0.2)
            tel.emit_llm_call(tenant_id=tenant, provider="acme-ai", model=model, input_tokens=1000, output_tokens=500)
            assert await asyncio.to_thread(tel.flush, 20)
            expected = 1000 * Decimal("0.000001") + 500 * Decimal("0.000002")
            deadline = time.monotonic() + 30
            while True:
                body = (await client.get("/v1/spend", params={"tenant_id": tenant})).json()
                if body["events"] == 1:
                    break
                assert time.monotonic() < deadline, body
                await asyncio.sleep(0.3)
            assert Decimal(body["total_usd"]) == expected and body["rows"][0]["unpriced_events"] == 0
    finally:
        await asyncio.to_thread(tel.close, 5)
        await worker.stop()
        await api.stop()
