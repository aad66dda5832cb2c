"""Directives and alerts are authenticated: an HMAC by a shared key set (rotation without
downtime), a per-scope version against replays and reorders, and the shim's expiry clamp."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flyball.producers.enforcement import DirectiveIntake, DirectiveRefused, DirectiveView, enforce
from flyball.schemas import (
    ALERTS,
    DIRECTIVES,
    MAX_TTL_S,
    ActionKind,
    Directive,
    DirectiveState,
    KeySet,
    Scope,
    SignatureError,
    sign,
    verify,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
OLD = KeySet({"k1": b"0123456789abcdef-old"}, "k1")
BOTH = KeySet({"k1": b"0123456789abcdef-old", "k2": b"0123456789abcdef-new"}, "k2")
NEW = KeySet({"k2": b"0123456789abcdef-new"}, "k2")


def block(version: int, *, state: DirectiveState = DirectiveState.ACTIVE, days: float = 0.01) -> Directive:
    return Directive(directive_id="d1", action=ActionKind.BLOCK, scope=Scope(tenant_id="acme"), state=state,
                     created_at=NOW, expires_at=NOW + timedelta(days=days), version=version)


def wire(d: Directive, keys: KeySet = OLD) -> bytes:
    return sign(d.model_dump_json().encode(), topic=DIRECTIVES, keys=keys)


def test_a_signed_message_verifies_and_an_altered_one_does_not() -> None:
    message = wire(block(1))
    assert verify(message, topic=DIRECTIVES, keys=OLD) == block(1).model_dump_json().encode()
    with pytest.raises(SignatureError, match="does not match"):
        verify(message.replace(b"block", b"throttle"), topic=DIRECTIVES, keys=OLD)
    with pytest.raises(SignatureError, match="does not match"):  # a directive replayed as an alert
        verify(message, topic=ALERTS, keys=OLD)


def test_an_unsigned_message_or_an_unknown_key_is_refused() -> None:
    with pytest.raises(SignatureError, match="missing"):
        verify(block(1).model_dump_json().encode(), topic=DIRECTIVES, keys=OLD)
    forged = sign(block(1).model_dump_json().encode(), topic=DIRECTIVES,
                  keys=KeySet({"k1": b"guessed-secret-0000"}, "k1"))
    with pytest.raises(SignatureError, match="does not match"):
        verify(forged, topic=DIRECTIVES, keys=OLD)
    with pytest.raises(SignatureError, match="unknown key id"):
        verify(wire(block(1), NEW), topic=DIRECTIVES, keys=OLD)


def test_rotation_verifiers_holding_both_keys_accept_old_and_new_signers() -> None:
    for signer in (OLD, BOTH, NEW):
        assert verify(wire(block(1), signer), topic=DIRECTIVES, keys=BOTH)


def test_keys_parse_from_the_environment_form() -> None:
    keys = KeySet.parse("a:0123456789abcdef0, b:fedcba98765432100", current="b")
    assert keys.current == "b" and set(keys.keys) == {"a", "b"}
    with pytest.raises(ValueError, match="16 bytes"):
        KeySet.parse("a:short")


def test_the_shim_refuses_a_forged_block_when_it_holds_keys() -> None:
    intake = DirectiveIntake(keys=OLD)
    with pytest.raises(DirectiveRefused, match="signature: missing"):
        intake.admit(block(1).model_dump_json().encode(), now=NOW.timestamp())
    assert intake.admit(wire(block(1)), now=NOW.timestamp()).action is ActionKind.BLOCK


def test_a_replayed_or_reordered_message_cannot_resurrect_a_reverted_directive() -> None:
    intake, view = DirectiveIntake(keys=OLD), DirectiveView()
    now = NOW.timestamp()
    old_active, reverted = wire(block(5)), wire(block(6, state=DirectiveState.REVERTED))
    view.apply(intake.admit(old_active, now=now))
    view.apply(intake.admit(reverted, now=now))
    assert enforce(view, tenant_id="acme", now=now).allowed
    for again in (old_active, reverted):
        with pytest.raises(DirectiveRefused, match="not newer"):
            intake.admit(again, now=now)
    assert enforce(view, tenant_id="acme", now=now).allowed


def test_a_signed_directive_without_a_version_is_refused() -> None:
    with pytest.raises(DirectiveRefused, match="version"):
        DirectiveIntake(keys=OLD).admit(wire(block(0)), now=NOW.timestamp())


def test_a_365_day_expiry_is_clamped_to_the_maximum_ttl_from_when_the_shim_reads_it() -> None:
    read_at = NOW + timedelta(hours=1)
    got = DirectiveIntake(keys=OLD).admit(wire(block(1, days=365)), now=read_at.timestamp())
    assert got.expires_at == read_at + timedelta(seconds=MAX_TTL_S)
    assert DirectiveIntake(keys=OLD, max_ttl_s=60).admit(
        wire(block(1, days=365)), now=read_at.timestamp()).expires_at == read_at + timedelta(seconds=60)


def test_without_keys_the_shim_takes_unsigned_directives_for_development() -> None:
    assert DirectiveIntake().admit(block(0).model_dump_json().encode(), now=NOW.timestamp()).version == 0


def test_a_throttle_shared_by_replicas_admits_its_share_in_each() -> None:
    throttle = Directive(directive_id="t1", action=ActionKind.THROTTLE, scope=Scope(tenant_id="acme"),
                         rate_per_s=6.0, burst=6, created_at=NOW, expires_at=NOW + timedelta(hours=1), replicas=3)
    views = [DirectiveView() for _ in range(3)]
    for view in views:
        view.apply(throttle)
    start = NOW.timestamp()
    admitted = 0
    for step in range(1000):  # 10 s at 100 calls/s in each replica
        now = start + step * 0.01
        admitted += sum(enforce(view, tenant_id="acme", now=now).allowed for view in views)
    assert 6 * 10 <= admitted <= 6 * 10 + 6 + 3  # the rate over all replicas, plus each one's burst share
