"""Which directives a control plane restores from its audit log when the directive topic lacks
them (`flyball up` after a restart: its embedded broker starts empty)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flyball.control_plane.directives import restorable
from flyball.schemas import ActionKind, Directive, DirectiveState, Scope

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ACTIVE, EXPIRED, REVERTED = DirectiveState.ACTIVE, DirectiveState.EXPIRED, DirectiveState.REVERTED


def directive(tenant: str, did: str, state: DirectiveState = ACTIVE, *, ttl_s: int = 600,
              pinned: bool = False) -> Directive:
    return Directive(directive_id=did, action=ActionKind.BLOCK, scope=Scope(tenant_id=tenant), state=state,
                     created_at=NOW, expires_at=NOW + timedelta(seconds=ttl_s), pinned=pinned)


def restored(rows: list[tuple[str, Directive]], known: set[str] | None = None, minutes: int = 5) -> set[str]:
    return {d.directive_id for d in restorable(rows, known=known or set(), now=NOW + timedelta(minutes=minutes))}


def test_active_unexpired_and_pinned_come_back_and_ended_ones_do_not() -> None:
    rows = [
        ("applied", directive("live", "live")),
        ("applied", directive("lapsed", "lapsed", ttl_s=60)),
        ("applied", directive("pinned", "pinned", ttl_s=60)),
        ("pinned", directive("pinned", "pinned", ttl_s=60, pinned=True)),
        ("applied", directive("reverted", "reverted")),
        ("reverted", directive("reverted", "reverted", REVERTED)),
    ]
    assert restored(rows) == {"live", "pinned"}


def test_a_replaced_directive_stays_replaced() -> None:
    rows = [("applied", directive("acme", "old", ttl_s=3600)), ("applied", directive("acme", "new", ttl_s=3600)),
            ("reverted", directive("acme", "new", REVERTED, ttl_s=3600))]
    assert restored(rows) == set()


def test_a_lapsing_approval_does_not_clear_the_directive_in_force_on_its_scope() -> None:
    rows = [("applied", directive("acme", "in-force", ttl_s=3600)),
            ("expired", directive("acme", "never-approved", EXPIRED))]
    assert restored(rows) == {"in-force"}


def test_the_topic_stays_the_authority_for_scopes_it_has() -> None:
    d = directive("acme", "a")
    assert restored([("applied", d)], known={d.key()}) == set()
