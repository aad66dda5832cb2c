"""The chaos suite runs on Apache Kafka (started by `make chaos` with scripts/testbrokers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .harness import ROOT


@pytest.fixture
def kafka() -> str:
    address = os.environ.get("FLYBALL_TEST_KAFKA_BOOTSTRAP", "")
    if not address:
        pytest.fail("FLYBALL_TEST_KAFKA_BOOTSTRAP is not set: run `make chaos`, which starts Apache Kafka")
    return address


@pytest.fixture
def results() -> Path:
    """Where each scenario appends its figures (docs/RELIABILITY.md is generated from it)."""
    return Path(os.environ.get("FLYBALL_CHAOS_RESULTS", ROOT / ".state" / "chaos" / "results.jsonl"))
