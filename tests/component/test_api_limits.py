"""Unbounded or implausible input gets a 4xx naming the field, never a 500 or a stored surprise:
a body cap (413) on every route, length and number limits, plausible dates, ordered ranges."""

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
async def api() -> AsyncIterator[httpx.AsyncClient]:
    keys = KeyRing()
    keys.add("admin-key", Principal("admin", Role.ADMIN))
    app = create_app(Deps(store=None, control=None, keys=keys, policies=lambda: DEFAULT_POLICIES,
                          prices=lambda: PriceBook()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                 headers={"Authorization": "Bearer admin-key"}) as client:
        yield client


def fields(response: httpx.Response) -> list[str]:
    return [e["field"] for e in response.json()["errors"]]


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/budgets"), ("POST", "/v1/directives"),
                                              ("PUT", "/v1/policies"), ("POST", "/v1/keys"), ("POST", "/v1/prices")])
async def test_a_body_over_the_cap_is_413_on_every_route(api: httpx.AsyncClient, method: str, path: str) -> None:
    big = b'{"feature": "' + b"x" * (20 * 1024 * 1024) + b'"}'
    response = await api.request(method, path, content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(400):
            yield b" " * (64 * 1024)
    response = await api.request(method, path, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize(("body", "field"), [
    ({"action": "throttle", "scope": {"tenant_id": "a"}, "rate_per_s": "Infinity"}, "rate_per_s"),
    ({"action": "reroute", "scope": {"tenant_id": "a"}, "to_model": "m", "chain": ["x" * 300]}, "chain.0"),
    ({"action": "reroute", "scope": {"tenant_id": "a"}, "to_model": "m", "chain": ["m"] * 1000}, "chain"),
    ({"action": "block", "scope": {"tenant_id": "a" * 5000}}, "scope.tenant_id"),
    ({"action": "block", "scope": {"tenant_id": "a"}, "ttl_s": 10**8}, "ttl_s"),
])
async def test_directive_fields_are_bounded(api: httpx.AsyncClient, body: dict[str, Any], field: str) -> None:
    response = await api.post("/v1/directives", json=body)
    assert response.status_code == 422, response.text
    assert field in fields(response)


@pytest.mark.parametrize(("body", "field"), [
    ({"tenant_id": "acme", "feature": "x" * 100_000, "limit_usd": "10"}, "feature"),
    ({"tenant_id": "acme", "limit_usd": "1e400"}, "limit_usd"),
    ({"tenant_id": "acme", "limit_usd": "Infinity"}, "limit_usd"),
])
async def test_budget_fields_are_bounded(api: httpx.AsyncClient, body: dict[str, Any], field: str) -> None:
    response = await api.post("/v1/budgets", json=body)
    assert response.status_code == 422, response.text
    assert field in fields(response)


@pytest.mark.parametrize(("path", "params", "field"), [
    ("/v1/spend", {"from": "0130-01-01T00:00:00Z"}, "from"),
    ("/v1/spend", {"to": "9999-12-31T00:00:00Z"}, "to"),
    ("/v1/spend", {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
    ("/v1/actions", {"from": "0130-01-01T00:00:00Z"}, "from"),
    ("/v1/actions", {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
    ("/v1/spend/forecast", {"at": "9999-12-31T00:00:00Z"}, "at"),
])
async def test_implausible_or_inverted_dates_are_422_naming_the_field(api: httpx.AsyncClient, path: str,
                                                                      params: dict[str, str], field: str) -> None:
    response = await api.get(path, params=params)
    assert response.status_code == 422, response.text
    assert fields(response) == [field]


async def test_reprice_with_an_implausible_or_inverted_range_is_422(api: httpx.AsyncClient) -> None:
    for body, field in (({"from": "0130-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
                        ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to")):
        response = await api.post("/v1/reprice", json=body)
        assert response.status_code == 422, response.text
        assert any(f == field or f.endswith(field) for f in fields(response)) or field in response.text


async def test_a_price_update_is_capped_per_request(api: httpx.AsyncClient) -> None:
    entry = {"provider": "p", "model": "m", "effective_from": "2026-01-01T00:00:00Z", "input": "0", "output": "0"}
    response = await api.post("/v1/prices", json={"prices": [entry] * 5_001})
    assert response.status_code == 422 and response.json()["detail"].startswith("prices: at most 5000")


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000,
                                  "policies:\n" + "".join(" " * i + "- \n" for i in range(1, 1200)),
                                  '{"policies": ' + '{"a": ' * 50_000 + "1" + "}" * 50_001])
async def test_deeply_nested_policies_are_422_not_a_stalled_server(api: httpx.AsyncClient, text: str) -> None:
    response = await api.put("/v1/policies", content=text.encode())
    assert response.status_code == 422 and "nested deeper" in response.json()["detail"]
