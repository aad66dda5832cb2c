"""The browser suite needs Debian's chromium (scripts/ensure-chromium.sh, run by `make test`,
installs it). Missing: with CI=true the suite fails; elsewhere it is skipped and the run says
so loudly at the end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("FLYBALL_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / ".state" / "console-screenshots"
_missing: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if Path(CHROMIUM).exists() or os.environ.get("CI"):
        return  # in CI a missing browser fails the tests themselves
    here = Path(__file__).parent
    drop = [i for i in items if here in Path(str(i.fspath)).parents]
    if drop:
        _missing.append(CHROMIUM)
        config.hook.pytest_deselected(items=drop)
        items[:] = [i for i in items if i not in drop]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _missing:
        terminalreporter.write_sep("!", f"the console's browser suite did NOT run: no chromium at {_missing[0]} "
                                        "(run scripts/ensure-chromium.sh as root, or `make test`)", red=True, bold=True)


@pytest.fixture(autouse=True)
def _needs_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium is missing at {CHROMIUM} (CI=true: the browser suite must run)")
