"""The shim is a library: it logs through stdlib ``logging`` (the host decides where logs go),
never to stdout, and a broker outage is one warning when it starts and one when it ends."""

from __future__ import annotations

import logging
import time

import pytest

from flyball.producers import Telemetry
from flyball.producers.transports import MemoryTransport


def wait_for(check: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_an_outage_is_one_warning_with_counts_and_nothing_on_stdout(
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    transport = MemoryTransport()
    transport.down = True
    with caplog.at_level(logging.DEBUG, logger="flyball"):
        with Telemetry("svc", transport=transport, follow_directives=False, batch_size=5) as tel:
            for i in range(40):
                tel.emit_tool_call(tenant_id="acme", tool_name=f"t{i}")
                time.sleep(0.05)  # two seconds of outage, retried many times
            assert wait_for(lambda: tel.stats()["send_failures"] >= 3)
            transport.down = False
            assert tel.flush(15)
    shim_records = [r for r in caplog.records if r.name.startswith("flyball.producers")]
    warnings = [r.getMessage() for r in shim_records if r.levelno >= logging.WARNING]
    assert len([w for w in warnings if "failing" in w]) == 1, warnings
    recovered = [w for w in warnings if "recovered" in w]
    assert len(recovered) == 1 and "failed attempts" in recovered[0]
    assert int(recovered[0].split(": ")[1].split(" failed")[0]) >= 3
    captured = capsys.readouterr()
    assert captured.out == ""


def test_the_shim_logs_through_stdlib_loggers_under_flyball_producers(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flyball"):
        with Telemetry("svc", transport=MemoryTransport(), follow_directives=False) as tel:
            tel.emit_llm_call(tenant_id="acme", provider="openai", model="m", input_tokens=-1, output_tokens=0)
            assert tel.flush(5)
    assert any(r.name == "flyball.producers.client" and "input_tokens" in r.getMessage() for r in caplog.records)
