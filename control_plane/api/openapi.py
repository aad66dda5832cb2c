"""The OpenAPI document says what the routes answer: the 422 body this API sends (``detail``
plus ``errors`` naming each field, not FastAPI's default), and the 401/403/404/413/429
answers every protected route can give. Added to the generated document in one place, from the
same rules the routes follow, so no route has to repeat them."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

PUBLIC = frozenset({"/healthz"})
WRITES = frozenset({"post", "put", "patch", "delete"})
_PROBLEM = {"$ref": "#/components/schemas/Problem"}
_INVALID = {"$ref": "#/components/schemas/ValidationProblem"}
SCHEMAS: dict[str, Any] = {
    "Problem": {"type": "object", "title": "Problem", "required": ["detail"],
                "properties": {"detail": {"type": "string", "title": "Detail"}}},
    "ValidationProblem": {
        "type": "object", "title": "ValidationProblem", "required": ["detail", "errors"],
        "properties": {
            "detail": {"type": "string", "title": "Detail"},
            "errors": {"type": "array", "title": "Errors", "items": {
                "type": "object", "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}}}},
}


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` with the generated document plus the answers above."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            doc.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMAS)
            for path, operations in doc.get("paths", {}).items():
                for method, op in operations.items():
                    responses = op.setdefault("responses", {})
                    if "422" in responses or method in WRITES:
                        responses["422"] = _answer("Invalid request: each failing field is named", _INVALID)
                    if method in WRITES:
                        responses["413"] = _answer("Request body over the size cap", _PROBLEM)
                    if path in PUBLIC:
                        continue
                    responses["401"] = _answer("Missing or unknown API key", _PROBLEM)
                    responses["403"] = _answer("The key's role or tenant binding does not allow this", _PROBLEM)
                    if "{" in path:
                        responses["404"] = _answer("No such resource (or not visible to this key)", _PROBLEM)
                    responses["429"] = _answer(f"{'Write' if method in WRITES else 'Read'} rate limit of this "
                                               "key exceeded (see Retry-After)", _PROBLEM)
            doc["components"]["schemas"].pop("HTTPValidationError", None)
            doc["components"]["schemas"].pop("ValidationError", None)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise it
