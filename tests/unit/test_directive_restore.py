"""Which directives a control plane restores from its audit log when the directive topic lacks
them (`flyball up` after a restart: its embedded broker starts empty)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flyball.control_plane.directives import restorable
from flyball.schemas import Directive, DirectiveState, Scope
from flyball.schemas.directives import ActionKind

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def directive(tenant: str, *, ttl_s: int = 600, state: DirectiveState = DirectiveState.ACTIVE,
              pinned: bool = False, did: str | None = None, created: datetime = NOW) -> Directive:
    return Directive(directive_id=did or f"d-{tenant}-{state}-{ttl_s}", action=ActionKind.BLOCK,
                     scope=Scope(tenant_id=tenant), state=state, created_at=created,
                     expires_at=created + timedelta(seconds=ttl_s), pinned=pinned)


def test_active_unexpired_and_pinned_come_back_and_nothing_else() -> None:
    later = NOW + timedelta(hours=1)
    rows = [
        (directive("live"), NOW),
        (directive("lapsed", ttl_s=60, created=NOW - timedelta(hours=2)), NOW),
        (directive("pinned", ttl_s=60, pinned=True, created=NOW - timedelta(hours=2)), NOW),
        (directive("reverted", state=DirectiveState.REVERTED), NOW),
        (directive("waiting", state=DirectiveState.PENDING), NOW),
    ]
    got = {d.scope.tenant_id for d in restorable(rows, known=set(), now=later - timedelta(minutes=55))}
    assert got == {"live", "pinned"}


def test_the_topic_stays_the_authority_for_scopes_it_has() -> None:
    d = directive("acme")
    assert restorable([(d, NOW)], known={d.key()}, now=NOW) == []


def test_the_latest_decision_on_a_scope_wins() -> None:
    old = directive("acme", did="old", ttl_s=3600)
    new = directive("acme", did="new", ttl_s=3600, created=NOW + timedelta(minutes=1))
    got = restorable([(new, NOW + timedelta(minutes=1)), (old, NOW)], known=set(), now=NOW + timedelta(minutes=2))
    assert [d.directive_id for d in got] == ["new"]
