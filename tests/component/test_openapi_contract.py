"""The OpenAPI document describes the answers the API really gives: the 422 body with named
fields, and 401/403/404/413/429 where a route can answer them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from flyball.control_plane.app import Deps, create_app
from flyball.control_plane.auth import KeyRing, Principal, Role
from flyball.control_plane.policy_file import DEFAULT_POLICIES
from flyball.stream_processors.pricing import PriceBook


@pytest.fixture
async def api() -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Any]]]:
    keys = KeyRing()
    keys.add("admin-key", Principal("admin", Role.ADMIN))
    app = create_app(Deps(store=None, control=None, keys=keys, policies=lambda: DEFAULT_POLICIES,
                          prices=lambda: PriceBook()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        doc = (await client.get("/openapi.json")).json()
        yield client, doc


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items()]


async def test_every_protected_route_documents_401_and_403_and_writes_413_422_429(
        api: tuple[httpx.AsyncClient, dict[str, Any]]) -> None:
    _, doc = api
    for path, method, op in operations(doc):
        codes = set(op["responses"])
        if path != "/healthz":
            assert {"401", "403"} <= codes, (method, path)
        if "{" in path:
            assert "404" in codes, (method, path)
        if method in ("post", "put", "delete"):
            assert {"413", "422", "429"} <= codes, (method, path)


async def test_the_documented_422_body_is_the_one_sent(api: tuple[httpx.AsyncClient, dict[str, Any]]) -> None:
    client, doc = api
    schema = doc["components"]["schemas"]["ValidationProblem"]
    for path, method, op in operations(doc):
        if "422" in op["responses"]:
            ref = op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ValidationProblem"), (method, path)
    response = await client.post("/v1/directives", json={"action": "nope"}, headers={"Authorization": "Bearer admin-key"})
    assert response.status_code == 422
    body = response.json()
    assert set(schema["required"]) <= set(body) and all(set(e) == {"field", "message"} for e in body["errors"])
    assert "HTTPValidationError" not in doc["components"]["schemas"]


async def test_the_documented_401_body_is_the_one_sent(api: tuple[httpx.AsyncClient, dict[str, Any]]) -> None:
    client, doc = api
    response = await client.get("/v1/alerts")
    assert response.status_code == 401 and set(response.json()) == set(doc["components"]["schemas"]["Problem"]["required"])
