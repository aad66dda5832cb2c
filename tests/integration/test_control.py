"""The control plane on a real broker, real chDB and real HTTP: an alert published on
flyball.alerts.v1 becomes a directive that a shim's guard() enforces, is audited with its
evidence, notified to real webhook receivers (with a retry), reverted automatically after the
alert resolves (hysteresis), and the SRE workflow (approve, revert, ack, silence) works."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from flyball.control_plane.notify import WebhookTarget
from flyball.control_plane.policy_file import parse_policies
from flyball.control_plane.runtime import System
from flyball.control_plane.settings import Settings
from flyball.producers import Telemetry
from flyball.producers.transports.kafka import start_producer
from flyball.schemas import ALERTS, Alert, AlertKind, Scope
from flyball.stream_processors.ingest import alert_row
from tests.conftest import free_port
from tests.integration._helpers import eventually

ADMIN = "control-test-admin"
RUN = uuid.uuid4().hex[:8]  # this run's scopes; the receiver fails the first post that names it
POLICIES = parse_policies({"max_active": 10, "policies": [
    {"policy_id": "tool-off", "alert_kind": "tool_failure", "action": "disable_tool", "match": {"tool_name": "*"},
     "ttl_s": 300, "cooldown_s": 60, "hysteresis_s": 1},
    {"policy_id": "feature-block", "alert_kind": "safety_burst", "action": "block", "approval": True,
     "target": ["tenant_id", "feature"], "ttl_s": 300},
]})


class Receiver:
    """A real HTTP webhook receiver on a free loopback port; answers 500 to the first N posts
    that mention this run (the broker may replay older runs' alerts to a new group)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                failing = outer.fail_first > 0 and RUN.encode() in raw
                outer.fail_first -= 1 if failing else 0
                if not failing:
                    outer.bodies.append(body)
                self.send_response(500 if failing else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    slack, pagerduty = Receiver(fail_first=1), Receiver()
    yield slack, pagerduty
    slack.close()
    pagerduty.close()


@pytest.fixture
async def system(bootstrap: str, tmp_path: Path, receivers: tuple[Receiver, Receiver]) -> AsyncIterator[System]:
    run = uuid.uuid4().hex[:8]
    slack, pagerduty = receivers
    settings = Settings(kafka_bootstrap=bootstrap, data_dir=tmp_path, api_port=free_port(), admin_api_key=ADMIN,
                        control_group=f"control-{run}", runbook_base_url="https://runbooks.example/flyball",
                        webhooks=[WebhookTarget(url=slack.url, format="slack", name="slack"),
                                  WebhookTarget(url=pagerduty.url, format="pagerduty", routing_key="rk", name="pd")])
    sys_ = System(settings, worker=False, policies=POLICIES)
    await sys_.start(ready_timeout=60)
    try:
        yield sys_
    finally:
        await sys_.stop()



def make_alert(kind: AlertKind, scope: Scope, status: str = "open") -> Alert:
    now = datetime.now(UTC)
    return Alert(alert_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{kind}|{scope.key()}")), kind=kind, scope=scope,
                 severity="critical", status=status, metric="rate", observed="0.5", baseline="0.01", threshold="0.2",
                 window_s=60, first_seen=now, last_seen=now, summary=f"{kind} on {scope.key()}")


async def test_alert_to_guard_audit_webhooks_and_automatic_revert(system: System, bootstrap: str,
                                                                  receivers: tuple[Receiver, Receiver]) -> None:
    run = uuid.uuid4().hex[:8]
    tool, tenant = f"sql-{RUN}-{run}", f"acme-{run}"
    slack, pagerduty = receivers
    tel = await asyncio.to_thread(Telemetry, "control-test", bootstrap=bootstrap)
    producer = await start_producer(bootstrap)
    api = httpx.AsyncClient(base_url=system.api_url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    try:
        opened = make_alert(AlertKind.TOOL_FAILURE, Scope(tool_name=tool))
        assert system.store is not None
        await system.store.run(system.store.write_alerts, [alert_row(opened, datetime.now(UTC))])  # as the worker does
        await producer.send_and_wait(ALERTS, opened.model_dump_json().encode(), key=opened.key().encode())

        await eventually(lambda: not tel.guard(tenant_id=tenant, tool=tool).allowed)
        assert "disabled" in tel.guard(tenant_id=tenant, tool=tool).reason
        assert tel.guard(tenant_id=tenant, tool="other-tool").allowed

        (directive,) = [d for d in (await api.get("/v1/directives")).json() if d["scope"].get("tool_name") == tool]
        (row,) = (await api.get("/v1/actions", params={"directive_id": directive["directive_id"]})).json()
        assert (row["decision"], row["policy_id"], row["actor"]) == ("applied", "tool-off@v1", "flyball")
        assert row["evidence"]["alert_id"] == opened.alert_id and row["after"]["action"] == "disable_tool"

        # webhooks: Slack got the alert (after one retried 500) and the action; PagerDuty an incident for each
        await eventually(lambda: len(slack.bodies) >= 2 and len(pagerduty.bodies) >= 2)
        assert any(f"tool_name={tool}" in b["text"] and "runbooks.example/flyball/tool_failure.md" in json.dumps(b)
                   for b in slack.bodies)
        assert {(b["event_action"], b["dedup_key"]) for b in pagerduty.bodies} >= {
            ("trigger", f"flyball:alert:{opened.alert_id}"),
            ("trigger", f"flyball:directive:{directive['directive_id']}")}
        log = await eventually(lambda: _deliveries(api, f"flyball:alert:{opened.alert_id}", 3))
        slack_attempts = sorted((r["attempt"], r["ok"]) for r in log if r["target"] == "slack")
        assert slack_attempts == [(1, False), (2, True)]

        # acknowledge, then silence: the resolution is not notified, the revert still is
        assert (await api.post(f"/v1/alerts/{opened.alert_id}/ack", json={"note": "looking"})).status_code == 200
        r = await api.post(f"/v1/alerts/{opened.alert_id}/silence", json={"duration_s": 600})
        assert r.status_code == 200 and r.json()["silenced_until"] and r.json()["acknowledged_by"]
        listed = (await api.get("/v1/alerts", params={"acknowledged": "true"})).json()
        assert [a["alert_id"] for a in listed] == [opened.alert_id]

        resolved = opened.model_copy(update={"status": "resolved", "last_seen": datetime.now(UTC)})
        await producer.send_and_wait(ALERTS, resolved.model_dump_json().encode(), key=resolved.key().encode())
        await eventually(lambda: tel.guard(tenant_id=tenant, tool=tool).allowed)
        reverted = (await api.get("/v1/actions", params={"directive_id": directive["directive_id"],
                                                         "decision": "reverted"})).json()
        assert reverted and reverted[0]["actor"] == "flyball" and "hysteresis" in reverted[0]["reason"]
        await eventually(lambda: any(b.get("event_action") == "resolve" for b in pagerduty.bodies))
        assert not any(b.get("event_action") == "resolve" and b["dedup_key"] == f"flyball:alert:{opened.alert_id}"
                       for b in pagerduty.bodies), "a silenced alert's resolution was notified"
    finally:
        await api.aclose()
        await producer.stop()
        await asyncio.to_thread(tel.close, 10)


def flyball_cli(api_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLYBALL_API_URL": api_url, "FLYBALL_API_KEY": ADMIN}
    return subprocess.run([sys.executable, "-m", "flyball.control_plane.cli", *args], capture_output=True, text=True,
                          timeout=60, env=env)


async def _deliveries(api: httpx.AsyncClient, key: str, want: int) -> list[dict[str, Any]] | None:
    rows = (await api.get("/v1/webhooks/deliveries", params={"dedupe_key": key})).json()
    return rows if len(rows) >= want else None


async def test_approval_required_action_waits_for_an_sre(system: System, bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    tenant = f"acme-{run}"
    tel = await asyncio.to_thread(Telemetry, "control-test", bootstrap=bootstrap)
    producer = await start_producer(bootstrap)
    api = httpx.AsyncClient(base_url=system.api_url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    try:
        burst = make_alert(AlertKind.SAFETY_BURST, Scope(tenant_id=tenant, feature="chat", category="pii"))
        await producer.send_and_wait(ALERTS, burst.model_dump_json().encode(), key=burst.key().encode())

        async def pending() -> list[dict[str, Any]]:
            rows = (await api.get("/v1/directives", params={"state": "pending", "tenant_id": tenant})).json()
            return list(rows)

        (waiting,) = await eventually(pending)
        assert waiting["action"] == "block" and waiting["state"] == "pending"
        assert tel.guard(tenant_id=tenant, feature="chat").allowed  # nothing enforced before approval

        # the SRE uses the CLI, an HTTP client of the API
        listed = await asyncio.to_thread(flyball_cli, system.api_url, "directives", "--state", "pending",
                                         "--tenant", tenant)
        assert listed.returncode == 0 and waiting["directive_id"] in listed.stdout and "block" in listed.stdout
        approved = await asyncio.to_thread(flyball_cli, system.api_url, "approve", waiting["directive_id"])
        assert approved.returncode == 0 and approved.stdout.startswith("approved: block"), approved.stderr
        await eventually(lambda: not tel.guard(tenant_id=tenant, feature="chat").allowed)
        assert tel.guard(tenant_id=tenant, feature="other").allowed

        reverted = await api.post(f"/v1/directives/{waiting['directive_id']}/revert")
        assert reverted.status_code == 200 and reverted.json()["decision"] == "reverted"
        await eventually(lambda: tel.guard(tenant_id=tenant, feature="chat").allowed)
        rows = (await api.get("/v1/actions", params={"directive_id": waiting["directive_id"]})).json()
        assert [r["decision"] for r in reversed(rows)] == ["pending", "approved", "reverted"]
        assert rows[0]["actor"].startswith("key:admin")
        again = await asyncio.to_thread(flyball_cli, system.api_url, "approve", waiting["directive_id"])
        assert again.returncode == 1 and "HTTP 404" in again.stderr

        # policies: admins replace them; a bad file is refused naming the field; the change is versioned
        bad = await api.put("/v1/policies", content=b"policies:\n  - {policy_id: x, alert_kind: cost_spike, action: throttle}")
        assert bad.status_code == 422 and "policies[0]" in bad.json()["detail"] and "rate_per_s" in bad.json()["detail"]
        doc = {"policies": [{"policy_id": "tool-off", "alert_kind": "tool_failure", "action": "disable_tool",
                             "ttl_s": 60}]}
        put = await api.put("/v1/policies", json=doc)
        assert put.status_code == 200 and put.json()["version"] == 2 and put.json()["policies"][0]["version"] == 2
        assert (await api.get("/v1/policies")).json()["policies"][0]["ttl_s"] == 60
        audit = (await api.get("/v1/actions", params={"decision": "policies_updated"})).json()
        assert audit[0]["policy_id"] == "policies@v2" and audit[0]["before"]["version"] == 1
    finally:
        await api.aclose()
        await producer.stop()
        await asyncio.to_thread(tel.close, 10)
