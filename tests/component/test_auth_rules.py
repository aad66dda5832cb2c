"""Authorization rules a careless or hostile key must not get around."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from flyball.control_plane.app import Deps, create_app
from flyball.control_plane.auth import KeyRing, Principal, Role
from flyball.control_plane.policy_file import DEFAULT_POLICIES
from flyball.control_plane.runtime import load_prices

BOOK = load_prices(None)


@pytest.fixture
def keys() -> KeyRing:
    ring = KeyRing()
    ring.add("admin-key", Principal("admin", Role.ADMIN))
    ring.add("sre-key", Principal("sre", Role.SRE))
    ring.add("tenant-key", Principal("svc", Role.SERVICE, tenant_id="acme"))
    return ring


@pytest.fixture
async def client(keys: KeyRing) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Deps(store=None, control=None, keys=keys, policies=lambda: DEFAULT_POLICIES,
                          prices=lambda: BOOK))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
        yield c


def as_(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_the_last_admin_key_cannot_be_revoked(client: httpx.AsyncClient) -> None:
    response = await client.delete("/v1/keys/admin", headers=as_("admin-key"))
    assert response.status_code == 409 and "key_id" in response.json()["detail"]
    assert (await client.get("/v1/keys", headers=as_("admin-key"))).status_code == 200


async def test_an_admin_key_can_be_revoked_while_another_remains(client: httpx.AsyncClient) -> None:
    created = (await client.post("/v1/keys", json={"role": "admin"}, headers=as_("admin-key"))).json()
    assert (await client.delete("/v1/keys/admin", headers=as_("admin-key"))).status_code == 200
    assert (await client.get("/v1/keys", headers=as_(created["key"]))).status_code == 200
    assert (await client.delete(f"/v1/keys/{created['key_id']}", headers=as_(created["key"]))).status_code == 409


async def test_metrics_are_not_readable_by_a_tenant_bound_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics", headers=as_("tenant-key"))).status_code == 403
    assert (await client.get("/metrics", headers=as_("sre-key"))).status_code == 200


@pytest.mark.parametrize("scope", [{"provider": "openai"}, {"model": "gpt-4o"}, {"tool_name": "sql"}])
async def test_a_directive_on_every_tenant_needs_an_admin_key(client: httpx.AsyncClient, scope: dict[str, str]) -> None:
    body = {"action": "disable_tool" if "tool_name" in scope else "block", "scope": scope}
    response = await client.post("/v1/directives", json=body, headers=as_("sre-key"))
    assert response.status_code == 403 and "scope.tenant_id" in response.json()["detail"]


@pytest.mark.parametrize(("field", "body"), [
    ("to_model", {"to_model": "http://attacker.example/v1"}),
    ("chain.1", {"to_model": "gpt-4o-mini", "chain": ["gpt-4o", "file:///etc/passwd"]}),
])
async def test_a_reroute_only_names_models_of_the_catalog(client: httpx.AsyncClient, field: str,
                                                          body: dict[str, object]) -> None:
    response = await client.post("/v1/directives", headers=as_("sre-key"),
                                 json={"action": "reroute", "scope": {"tenant_id": "acme", "model": "gpt-4o"}, **body})
    assert response.status_code == 422 and response.json()["detail"].startswith(field + ":")
