"""Release safety end to end on a real broker, real chDB and real HTTP, through the public
contract only: a canary prompt version regresses -> version_regression alert -> the shipped
policy pins the incumbent -> guard() hands the old version back -> the product's traffic (and
the shim's record of it) moves to the old version -> the alert resolves; GET /v1/versions shows
both versions side by side with the verdict."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from flyball.control_plane.policy_file import DEFAULT_POLICIES
from flyball.control_plane.runtime import System
from flyball.control_plane.settings import Settings
from flyball.producers import Telemetry
from flyball.stream_processors.releases import ReleaseParams
from tests.conftest import free_port
from tests.integration._helpers import eventually

ADMIN = "test-admin-key"
RESOLVE_S = 8.0  # event time without candidate traffic before the regression resolves


@pytest.fixture
async def system(bootstrap: str, tmp_path: Path) -> AsyncIterator[System]:
    run = uuid.uuid4().hex[:8]
    settings = Settings(kafka_bootstrap=bootstrap, data_dir=tmp_path, api_port=free_port(), admin_api_key=ADMIN,
                        worker_group=f"worker-{run}", control_group=f"control-{run}")
    sys_ = System(settings, policies=DEFAULT_POLICIES, releases=ReleaseParams(resolve_s=RESOLVE_S))
    await sys_.start(ready_timeout=60)
    try:
        yield sys_
    finally:
        await sys_.stop()


def _call(tel: Telemetry, tenant: str, feature: str, version: str | None, *, failed: bool,
          ts: datetime | None = None) -> None:
    fields: dict[str, Any] = {"ts": ts} if ts is not None else {}
    if version is not None:
        fields["prompt_version"] = version
    tel.emit_llm_call(tenant_id=tenant, feature=feature, provider="openai", model="gpt-4o-mini", input_tokens=500,
                      output_tokens=100, latency_ms=400, status="error" if failed else "ok",
                      error_type="server_error" if failed else "", **fields)


async def test_a_regressing_canary_is_pinned_back_and_its_alert_resolves(system: System, bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    tenant, feature = f"acme-{run}", f"support-{run}"
    tel = await asyncio.to_thread(Telemetry, "release-e2e", bootstrap=bootstrap)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    v1_calls = 0
    try:
        # the incumbent's history: 120 calls over the last 20 minutes, 1 failure in 60
        now = datetime.now(UTC)
        for i in range(120):
            _call(tel, tenant, feature, "v1", failed=i % 60 == 0, ts=now - timedelta(seconds=1200 - 10 * i))
            v1_calls += 1
        assert await asyncio.to_thread(tel.flush, 30)

        # the canary: half the requests get v2 unless guard() pins a version; v2 fails one call in two
        i = 0
        deadline = time.monotonic() + 90
        while True:
            d = tel.guard(tenant_id=tenant, feature=feature, model="gpt-4o-mini")
            if d.prompt_version is not None:
                break
            assert time.monotonic() < deadline, "no pin_version reached the shim"
            version = "v2" if i % 2 == 0 else "v1"
            _call(tel, tenant, feature, version, failed=version == "v2" and i % 4 == 0)
            v1_calls += version == "v1"
            i += 1
            await asyncio.sleep(0.05)
        assert await asyncio.to_thread(tel.flush, 30)
        assert (d.allowed, d.prompt_version, d.model, d.config_version) == (True, "v1", "gpt-4o-mini", None)

        # after the pin: the product code names no version; the shim records the pinned one
        until = time.monotonic() + RESOLVE_S + 6
        while time.monotonic() < until:
            d = tel.guard(tenant_id=tenant, feature=feature, model="gpt-4o-mini")
            assert d.prompt_version == "v1"
            with tel.track_llm_call(tenant_id=tenant, provider="openai", model=d.model or "gpt-4o-mini",
                                    feature=feature) as call:
                call.set(input_tokens=500, output_tokens=100)
            v1_calls += 1
            await asyncio.sleep(0.1)
        assert await asyncio.to_thread(tel.flush, 30)

        async with httpx.AsyncClient(base_url=system.api_url, headers=headers, timeout=10) as api:
            async def resolved() -> dict[str, Any] | None:
                alerts = (await api.get("/v1/alerts", params={"kind": "version_regression"})).json()
                mine = [a for a in alerts if a["scope"].get("feature") == feature]
                return mine[0] if mine and all(a["status"] == "resolved" for a in mine) else None

            alert = await eventually(resolved, timeout=60)
            assert alert["scope"] == {"feature": feature, "version_field": "prompt_version", "old_version": "v1",
                                      "new_version": "v2"}
            assert alert["severity"] == "critical"

            directives = (await api.get("/v1/directives")).json()
            pins = [x for x in directives if x["scope"].get("feature") == feature]
            assert [(x["action"], x["state"], x["pin_field"], x["pin_value"], x["policy_id"]) for x in pins] == [
                ("pin_version", "active", "prompt_version", "v1", "release-critical-rollback@v1")]

            async def both_versions() -> dict[str, Any] | None:
                body = (await api.get("/v1/versions", params={"feature": feature})).json()
                rows = {(r["dimension"], r["version"]): r for r in body["versions"]}
                v1 = rows.get(("prompt_version", "v1"))
                return body if v1 is not None and v1["calls"] == v1_calls else None

            body = await eventually(both_versions, timeout=60)
            rows = {(r["dimension"], r["version"]): r for r in body["versions"]}
            v1, v2 = rows[("prompt_version", "v1")], rows[("prompt_version", "v2")]
            assert (v1["role"], v2["role"], v2["incumbent"], v2["verdict"]) == ("incumbent", "candidate", "v1",
                                                                                "rollback")
            assert abs(v1["share"] + v2["share"] - 1.0) < 1e-6 and v2["calls"] == (i + 1) // 2
            failure = next(m for m in v2["metrics"] if m["metric"] == "failure_rate")
            assert failure["regression"] is True and failure["new"] > failure["old"]
            assert rows[("model", "gpt-4o-mini")]["share"] == 1.0

            bad = await api.get("/v1/versions", params={"feature": feature, "dimension": "colour"})
            assert bad.status_code == 422 and [e["field"] for e in bad.json()["errors"]] == ["dimension"]
            assert "dimension" in bad.json()["detail"]

            half = await api.post("/v1/directives", json={"action": "pin_version", "scope": {"feature": feature},
                                                          "pin_field": "model"})
            assert half.status_code == 422 and half.json()["field"] == "pin_value"

            key = (await api.post("/v1/keys", json={"role": "sre", "tenant_id": tenant})).json()["key"]
            bound = await api.get("/v1/versions", params={"feature": feature}, headers={"Authorization": f"Bearer {key}"})
            # feature-wide comparisons mix tenants: a tenant-bound key does not see them
            assert bound.status_code == 200 and bound.json()["versions"] == []
            other = await api.get("/v1/versions", params={"feature": feature, "tenant_id": "globex"},
                                  headers={"Authorization": f"Bearer {key}"})
            assert other.status_code == 403

        env = {**os.environ, "FLYBALL_API_URL": system.api_url, "FLYBALL_API_KEY": ADMIN}
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "flyball.control_plane.cli", "versions", "--feature", feature],
            capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        v2_line = next(line for line in lines if " v2 " in line)
        assert "candidate" in v2_line and "rollback" in v2_line and "failure_rate" in v2_line
        assert any(" v1 " in line and "incumbent" in line for line in lines)
    finally:
        await asyncio.to_thread(tel.close, 10)
