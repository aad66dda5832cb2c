"""`flyball up` crashes (kill -9) and starts again on the same data dir: its embedded broker
comes back empty, yet the directives in force (a block and a pinned throttle) are restored
from ClickHouse and published again, and a shim on the new broker enforces them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from flyball.control_plane.embedded import free_port
from flyball.producers import Telemetry

KEY = "k-up-restore"


def start_up(data_dir: Path, port: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "FLYBALL_API_PORT": str(port), "FLYBALL_ADMIN_API_KEY": KEY, "FLYBALL_LOG_LEVEL": "warning"}
    env.pop("FLYBALL_KAFKA_BOOTSTRAP", None)
    env.pop("FLYBALL_CLICKHOUSE_URL", None)
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "flyball.control_plane.cli", "up", "--data-dir", str(data_dir)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        text = log.read_text()
        found = re.search(r"Kafka bootstrap: (\S+)", text)
        if found and "Press Ctrl-C" in text:
            return proc, found.group(1)
        time.sleep(0.2)
    raise AssertionError(f"flyball up not ready within 60 s:\n{log.read_text()}")


def test_up_restores_directives_after_a_crash_and_shims_enforce_them(tmp_path: Path) -> None:
    port = free_port()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as api:
        check_restore(api, tmp_path, port)


def check_restore(api: httpx.Client, tmp_path: Path, port: int) -> None:
    proc, first_bootstrap = start_up(tmp_path / "d", port, tmp_path / "up1.log")
    try:
        made = {}
        for tenant, body in (("blocked-co", {"action": "block"}),
                             ("throttled-co", {"action": "throttle", "rate_per_s": 0.001, "burst": 1})):
            r = api.post("/v1/directives", json={"scope": {"tenant_id": tenant}, "ttl_s": 3600, **body})
            assert r.status_code == 201, r.text
            made[tenant] = r.json()["directive"]["directive_id"]
        r = api.post(f"/v1/directives/{made['throttled-co']}/pin")
        assert r.status_code == 200, r.text
        r = api.post("/v1/directives", json={"scope": {"tenant_id": "reverted-co"}, "action": "block", "ttl_s": 3600})
        assert api.post(f"/v1/directives/{r.json()['directive']['directive_id']}/revert").status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: no orderly stop
        proc.wait(30)
    proc, bootstrap = start_up(tmp_path / "d", port, tmp_path / "up2.log")
    shim = Telemetry("restore-test", bootstrap=bootstrap, follow_directives=True)
    try:
        listed = {d["directive_id"]: d for d in api.get("/v1/directives").json()}
        assert set(listed) == set(made.values()), (listed, made)
        assert listed[made["throttled-co"]]["pinned"] is True
        deadline = time.monotonic() + 30
        while shim.guard(tenant_id="blocked-co") or shim.guard(tenant_id="throttled-co"):
            assert time.monotonic() < deadline, f"the shim on the new broker {bootstrap} does not enforce them"
            time.sleep(0.1)
        assert shim.guard(tenant_id="reverted-co"), "a reverted directive came back"
        for directive_id in made.values():  # restored, not applied a second time
            applied = api.get("/v1/actions", params={"directive_id": directive_id, "decision": "applied"}).json()
            assert len(applied) == 1, applied
    finally:
        shim.close(5)
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert first_bootstrap  # both runs had an embedded broker
