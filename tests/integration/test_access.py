"""Who may call what, over real HTTP on a real chDB store: EVERY route of the app x every role
x unbound/tenant-bound keys, asserting 401/403/200. Routes are enumerated from the FastAPI app
itself, so a route added later is covered without editing this file (and fails here if it has
no API-key check)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from flyball.control_plane.app import Deps, create_app
from flyball.control_plane.auth import KeyRing, RateLimiter, Role
from flyball.control_plane.policy_file import DEFAULT_POLICIES
from tests.integration._helpers import keys_per_role, serve_app, served_api

PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
ALL = set(Role)
SRE = {Role.SRE, Role.ADMIN}
# The contract from DESIGN.md for the routes this control plane defines; routes of other
# modules are checked against the roles their own dependency declares.
CONTRACT: dict[tuple[str, str], set[Role]] = {
    ("GET", "/metrics"): ALL,
    ("GET", "/v1/directives"): {Role.SERVICE, Role.SRE, Role.ADMIN},
    ("POST", "/v1/directives"): SRE,
    **{("POST", f"/v1/directives/{{directive_id}}/{verb}"): SRE
       for verb in ("revert", "pin", "extend", "approve", "reject")},
    ("GET", "/v1/alerts"): SRE,
    **{("POST", f"/v1/alerts/{{alert_id}}/{verb}"): SRE for verb in ("ack", "silence", "unsilence")},
    ("GET", "/v1/actions"): SRE,
    ("GET", "/v1/policies"): SRE,
    ("PUT", "/v1/policies"): {Role.ADMIN},
    ("GET", "/v1/policies/versions"): {Role.ADMIN},
    ("POST", "/v1/keys"): {Role.ADMIN},
    ("GET", "/v1/keys"): {Role.ADMIN},
    ("DELETE", "/v1/keys/{key_id}"): {Role.ADMIN},
    ("GET", "/v1/webhooks/deliveries"): SRE,
    ("GET", "/v1/spend"): {Role.FINANCE, Role.SRE, Role.ADMIN},
    ("GET", "/v1/requests/{request_id}"): SRE,
    ("GET", "/v1/versions"): SRE,
}
GLOBAL_ONLY = {("PUT", "/v1/policies"), ("POST", "/v1/keys"), ("GET", "/v1/keys"), ("DELETE", "/v1/keys/{key_id}"),
               ("GET", "/v1/webhooks/deliveries"), ("GET", "/metrics")}


def _checks(dependant: Any) -> list[Any]:
    found = [d.call for d in dependant.dependencies if hasattr(d.call, "roles")]
    for sub in dependant.dependencies:
        found += _checks(sub)
    return found


def routes(app: Any) -> list[tuple[str, str, APIRoute]]:
    out = []
    for route in app.routes:
        # the console (/ui) authenticates by session cookie: tests/integration/test_console.py
        if isinstance(route, APIRoute) and route.path not in PUBLIC and not route.path.startswith("/ui"):
            for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
                out.append((method, route.path, route))
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], Any]]:
    keys, plain = keys_per_role("acme")
    with served_api(tmp_path_factory.mktemp("ch"), keys) as (url, app, _):
        yield url, plain, app


def test_every_route_x_role_x_tenant_binding(served: tuple[str, dict[str, str], Any]) -> None:
    url, plain, app = served
    failures: list[str] = []
    table = routes(app)
    assert len(table) >= len(CONTRACT), "the app lost routes"
    seen = set()
    with httpx.Client(base_url=url, timeout=10) as http:
        for method, path, route in table:
            seen.add((method, path))
            checks = _checks(route.dependant)
            if not checks:
                failures.append(f"{method} {path}: no API-key check")
                continue
            declared = set(checks[0].roles)
            allowed = CONTRACT.get((method, path), declared)
            if declared != allowed:
                failures.append(f"{method} {path}: declares {sorted(declared)}, contract says {sorted(allowed)}")
            global_only = bool(checks[0].global_only)
            if (method, path) in CONTRACT and ((method, path) in GLOBAL_ONLY) != global_only:
                failures.append(f"{method} {path}: global_only={global_only} disagrees with the contract")
            concrete = re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", path)
            has_path_params = concrete != path
            tenant_param = any(p.name == "tenant_id" for p in route.dependant.query_params)
            body = {} if method in ("POST", "PUT") else None

            def call(key: str | None, params: dict[str, str] | None = None) -> int:
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                return http.request(method, concrete, headers=headers, params=params, json=body).status_code

            for key in (None, "fb_not_a_key"):
                if (got := call(key)) != 401:
                    failures.append(f"{method} {path} key={key}: {got}, want 401")
            for role in Role:
                for bound in (False, True):
                    who = f"{role}@acme" if bound else str(role)
                    got = call(plain[who])
                    if role not in allowed or (bound and global_only):
                        want: int | str = 403
                    elif method == "GET" and not has_path_params:
                        want = 200
                    else:
                        want = "not 401/403"
                    ok = got == want if isinstance(want, int) else got not in (401, 403, 429)
                    if not ok:
                        failures.append(f"{method} {path} as {who}: {got}, want {want}")
                    if bound and tenant_param and role in allowed and not global_only:
                        if (got := call(plain[who], {"tenant_id": "globex"})) != 403:
                            failures.append(f"{method} {path} as {who} asking for globex: {got}, want 403")
    missing = set(CONTRACT) - seen
    assert not missing, f"routes in the contract that the app does not serve: {missing}"
    assert not failures, "\n".join(failures)


def test_write_routes_are_rate_limited_per_key_with_retry_after(tmp_path: Path) -> None:
    keys = KeyRing()
    admin, _ = keys.create(Role.ADMIN)
    other, _ = keys.create(Role.ADMIN)
    app = create_app(Deps(store=None, control=None, keys=keys, policies=lambda: DEFAULT_POLICIES, prices=lambda: None,
                          limiter=RateLimiter(per_minute=6, burst=2)))
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        def post(key: str) -> httpx.Response:
            return http.post("/v1/keys", json={"role": "service"}, headers={"Authorization": f"Bearer {key}"})

        assert [post(admin).status_code for _ in range(2)] == [201, 201]
        limited = post(admin)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert post(other).status_code == 201  # the limit is per key
        assert http.get("/v1/keys", headers={"Authorization": f"Bearer {admin}"}).status_code == 200  # reads: their own limit
        bad = http.post("/v1/keys", json={"role": "overlord"}, headers={"Authorization": f"Bearer {other}"})
        assert bad.status_code == 422 and "role" in bad.json()["detail"]


def test_read_routes_are_rate_limited_per_key_apart_from_writes() -> None:
    """A key flooding the API with reads (each a ClickHouse query) gets 429 with Retry-After once
    its read burst is spent; other keys, and the same key's writes, are not affected."""
    keys = KeyRing()
    reader, _ = keys.create(Role.ADMIN)
    other, _ = keys.create(Role.ADMIN)
    app = create_app(Deps(store=None, control=None, keys=keys, policies=lambda: DEFAULT_POLICIES, prices=lambda: None,
                          limiter=RateLimiter(per_minute=60, burst=5), read_limiter=RateLimiter(per_minute=6, burst=3)))
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        def get(key: str, path: str = "/v1/keys") -> httpx.Response:
            return http.get(path, headers={"Authorization": f"Bearer {key}"})

        assert [get(reader).status_code for _ in range(3)] == [200, 200, 200]
        limited = get(reader, "/v1/policies")  # the budget is per key, across read routes
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert "read rate limit" in limited.json()["detail"]
        assert get(other).status_code == 200
        created = http.post("/v1/keys", json={"role": "service"}, headers={"Authorization": f"Bearer {reader}"})
        assert created.status_code == 201  # writes draw on their own budget
        assert "429" in app.openapi()["paths"]["/v1/keys"]["get"]["responses"]
