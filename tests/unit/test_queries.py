"""The API's reads (control_plane/queries.py): every value a caller gives reaches ClickHouse as a
bound parameter, never as SQL text, and a name outside the fixed columns is refused before any
SQL is built."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from flyball.control_plane import queries

HOSTILE = "x' OR 1=1 --"


class Recorder:
    def __init__(self, rows: Sequence[Sequence[Any]] = ()) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.rows = rows

    def __call__(self, sql: str, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        self.calls.append((sql, params))
        return self.rows


def test_spend_binds_every_value_and_names_its_columns() -> None:
    q = Recorder([("acme", "2026-03-01", 3, "1.500000000000", 0, 1)])
    lo, hi = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    rows = queries.spend(q, {"tenant_id": "acme", "feature": HOSTILE, "model": None}, ["tenant_id", "day"],
                         from_ts=lo, to_ts=hi)
    sql, params = q.calls[0]
    assert HOSTILE not in sql and "acme" not in sql and "model" not in sql.split("WHERE")[1]
    assert params == {"tenant_id": "acme", "feature": HOSTILE, "from_ts": lo, "to_ts": hi}
    assert rows == [{"tenant_id": "acme", "day": "2026-03-01", "events": 3, "cost_usd": "1.500000000000",
                     "unpriced_events": 0, "late_events": 1}]


def test_an_empty_spend_filter_matches_the_empty_value() -> None:
    q = Recorder()
    queries.spend(q, {"feature": ""}, [])
    assert q.calls[0][1] == {"feature": ""}


@pytest.mark.parametrize(("filters", "groups"), [({"cost_usd": "1"}, []), ({}, ["ts; DROP TABLE events"]),
                                                 ({"day": "2026-03-01"}, [])])
def test_spend_refuses_names_outside_its_columns(filters: dict[str, str | None], groups: list[str]) -> None:
    q = Recorder()
    with pytest.raises(ValueError):
        queries.spend(q, filters, groups)
    assert q.calls == []


def test_alerts_and_actions_bind_their_filters() -> None:
    q = Recorder([('{"alert_id": "a1"}', "cost_spike", "tenant=acme")])
    assert queries.alerts(q, limit=5, kind=HOSTILE, status="", tenant_id="acme") == [
        ({"alert_id": "a1"}, "cost_spike|tenant=acme")]
    sql, params = q.calls[0]
    assert HOSTILE not in sql and params == {"limit": 5, "kind": HOSTILE, "tenant": "acme"}
    at = datetime(2026, 3, 1, tzinfo=UTC)
    q = Recorder([("id", at, "applied", "d1", "k", "acme", "a1", "p@2", "loop", "why", "", '{"x": 1}', "")])
    [row] = queries.actions(q, {"actor": HOSTILE, "decision": ""}, limit=10, policy_id="p", from_ts=at)
    sql, params = q.calls[0]
    assert HOSTILE not in sql and params == {"limit": 10, "actor": HOSTILE, "policy_id": "p", "policy_prefix": "p@",
                                             "from_ts": at}
    assert row["after"] == {"x": 1} and row["before"] is None
    with pytest.raises(ValueError):
        queries.actions(q, {"reason": "x"}, limit=1)
    assert queries.alert_body(Recorder(), HOSTILE) is None
