"""Shared fixtures. Integration tests run against real brokers started by `make test`
(scripts/testbrokers.py), whose addresses arrive as FLYBALL_TEST_*_BOOTSTRAP."""

from __future__ import annotations

import gc
import os
from datetime import UTC, datetime

import pytest

from flyball.control_plane.embedded import free_port  # noqa: F401 - re-exported for the tests

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
BROKERS = {"tansu": "FLYBALL_TEST_TANSU_BOOTSTRAP", "kafka": "FLYBALL_TEST_KAFKA_BOOTSTRAP"}
_not_run: set[str] = set()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A broker without an address: in CI that is a failure (the test runs and fails);
    outside CI its tests are deselected and reported loudly at the end."""
    if os.environ.get("CI"):
        return
    keep, drop = [], []
    for item in items:
        broker = next((b for b in BROKERS if item.get_closest_marker(b)), None)
        if broker is not None and not os.environ.get(BROKERS[broker]):
            drop.append(item)
            _not_run.add(broker)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for broker in sorted(_not_run):
        terminalreporter.write_sep("!", f"the {broker} integration suite did NOT run: {BROKERS[broker]} is not set "
                                        "(run `make test`, which starts the brokers)", red=True, bold=True)


def broker_address(name: str) -> str:
    address = os.environ.get(BROKERS[name], "")
    if not address:
        pytest.fail(f"{BROKERS[name]} is not set: the {name} broker is not running (run `make test`)")
    return address


@pytest.fixture(params=[pytest.param("tansu", marks=pytest.mark.tansu), pytest.param("kafka", marks=pytest.mark.kafka)])
def bootstrap(request: pytest.FixtureRequest) -> str:
    """The bootstrap address of each real broker in turn."""
    return broker_address(request.param)


@pytest.fixture(autouse=True)
def _collect_leaks(request: pytest.FixtureRequest) -> object:
    """Collect garbage after every test that opens sockets, processes or files, so an object it leaked
    raises its ResourceWarning (an error, see pyproject) in that test rather than in whichever later
    test happens to trigger a collection. Unit tests are pure and many: they skip the collection."""
    yield
    if "tests/unit/" not in request.node.nodeid:
        gc.collect()
