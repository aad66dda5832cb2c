"""Schemathesis against the API's own /openapi.json, over real HTTP, as every role.

`flyball up` runs as a user runs it (embedded broker, chDB, worker, control plane, API); the
admin mints a key per role. For each role in turn (least privileged first, admin last, since
admin operations change what the others see) every operation gets a bounded number of
generated requests. No answer may be a 5xx, nor a timeout; every answer whose status the
document declares must match the declared schema.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from flyball.control_plane.embedded import free_port
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

ADMIN = "k-fuzz-admin"
EXAMPLES = int(os.environ.get("FLYBALL_FUZZ_EXAMPLES", "6"))  # per operation and role
ROLES: list[tuple[str, dict[str, Any]]] = [
    ("service (tenant-bound)", {"role": "service", "tenant_id": "acme"}),
    ("service", {"role": "service"}),
    ("finance", {"role": "finance"}),
    ("sre", {"role": "sre"}),
    ("admin", {}),
]


@pytest.fixture
def api(tmp_path: Path) -> Any:
    port = free_port()
    env = {**os.environ, "FLYBALL_API_PORT": str(port), "FLYBALL_ADMIN_API_KEY": ADMIN, "FLYBALL_LOG_LEVEL": "error"}
    env.pop("FLYBALL_KAFKA_BOOTSTRAP", None)
    env.pop("FLYBALL_CLICKHOUSE_URL", None)
    log = tmp_path / "up.log"
    cmd = [sys.executable, "-m", "flyball.control_plane.cli", "up", "--data-dir", str(tmp_path / "d")]
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "Press Ctrl-C" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def mint(base: str, body: dict[str, Any]) -> str:
    if not body:
        return ADMIN
    r = httpx.post(f"{base}/v1/keys", json={**body, "name": "fuzz"}, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def test_no_5xx_and_declared_answers_match_their_schema_for_every_role(api: tuple[str, Path]) -> None:
    base, _ = api
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20, [op.label for op in operations]
    session = requests.Session()
    server_errors: list[str] = []
    nonconforming: list[str] = []
    calls = 0
    def prober(op: Any, role: str, headers: dict[str, str]) -> Any:
        @settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate], database=None,
                  derandomize=True, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def probe(case: Any) -> None:
            nonlocal calls
            calls += 1
            where = f"{role}: {case.method} {case.formatted_path} {case.query or ''}"
            try:
                response = case.call(base_url=base, session=session, headers=headers, timeout=15)
            except requests.Timeout:
                server_errors.append(f"{where} -> no answer within 15 s")
                return
            if response.status_code >= 500:
                server_errors.append(f"{where} body={str(case.body)[:200]} -> {response.status_code} "
                                     f"{response.text[:200]}")
                return
            try:
                case.validate_response(response, checks=[response_schema_conformance])
            except FailureGroup as exc:
                nonconforming.append(f"{where} -> {response.status_code}: {str(exc)[:300]}")

        return probe

    for role, body in ROLES:
        headers = {"Authorization": f"Bearer {mint(base, body)}"}
        for op in operations:
            prober(op, role, headers)()
    report = "\n".join([*server_errors, *nonconforming][:60])
    print(f"{calls} generated requests over {len(operations)} operations x {len(ROLES)} roles; "
          f"{len(server_errors)} 5xx/timeouts, {len(nonconforming)} answers off their declared schema\n{report}")
    assert not server_errors, f"{len(server_errors)} server errors:\n" + "\n".join(server_errors[:40])
    assert not nonconforming, (f"{len(nonconforming)} answers off their declared schema:\n"
                               + "\n".join(nonconforming[:40]))
