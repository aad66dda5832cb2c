"""Identifiers built from user-chosen names cannot collide: a scope or budget named with the
separators inside is not another tenant's scope or budget."""

from __future__ import annotations

from decimal import Decimal

import pytest
from flyball.schemas import Scope
from flyball.stream_processors.budgets import make_budget


def test_a_tenant_named_like_a_compound_scope_has_its_own_key() -> None:
    assert Scope(tenant_id="acme", feature="coll").key() != Scope(tenant_id="acme|feature=coll").key()
    assert Scope(tenant_id="a=b").key() != Scope(tenant_id="a", feature=None).key()
    assert Scope(tenant_id="a%7Cb").key() != Scope(tenant_id="a|b").key()


def test_ordinary_scope_keys_are_unchanged() -> None:
    assert Scope(tenant_id="acme", feature="chat").key() == "tenant_id=acme|feature=chat"


@pytest.mark.parametrize(("one", "other"), [
    ({"tenant_id": "acme", "feature": "x/y"}, {"tenant_id": "acme/x", "feature": "y"}),
    ({"tenant_id": "acme", "feature": "*"}, {"tenant_id": "acme"}),
    ({"tenant_id": "acme", "feature": "%2F"}, {"tenant_id": "acme", "feature": "/"}),
])
def test_budgets_of_different_scopes_have_different_ids(one: dict[str, str], other: dict[str, str]) -> None:
    a = make_budget(limit_usd=Decimal(10), **one)
    b = make_budget(limit_usd=Decimal(10), **other)
    assert a.budget_id != b.budget_id


def test_ordinary_budget_ids_are_unchanged() -> None:
    assert make_budget(tenant_id="acme", feature="chat", limit_usd=Decimal(1)).budget_id == "acme/chat/monthly"
    assert make_budget(tenant_id="acme", limit_usd=Decimal(1)).budget_id == "acme/*/monthly"
