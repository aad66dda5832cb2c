"""Reading a document a person wrote (a policies file, an SLO file): JSON or YAML, refused before
any parser recurses into it when it is nested deeper than a limit (a parser recurses once per
level, so a deep document could otherwise exhaust the stack or stall the API)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import InvalidInput

MAX_DEPTH = 32  # the documents are 4 levels deep
M = TypeVar("M", bound=BaseModel)


def check_depth(text: str, what: str, limit: int = MAX_DEPTH, error: type[ValueError] = InvalidInput) -> None:
    """Refuse a document nested deeper than ``limit``: flow brackets (JSON, YAML ``[...]``/``{...}``,
    counted even inside strings, which only errs on the side of refusing) and block indentation
    (each YAML level indents at least one more column)."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif char in "]}":
            depth -= 1
    indent = max((len(line) - len(line.lstrip(" -")) for line in text.splitlines()), default=0)
    if deepest > limit or indent > 4 * limit:
        raise error(f"{what}: nested deeper than {limit} levels")


def load_document(text: str, what: str, *, limit: int = MAX_DEPTH, error: type[ValueError] = InvalidInput) -> Any:
    """The decoded JSON (or else YAML) of ``text``, ``{}`` for an empty document. A document too
    deep or neither JSON nor YAML raises ``error`` with a message that begins with ``what``."""
    import yaml

    check_depth(text, what, limit, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{what} file is neither JSON nor YAML: {exc}") from None
    return data if data is not None else {}


def validate_document(model: type[M], data: Any, what: str, *, list_key: str, error: type[ValueError] = InvalidInput) -> M:
    """``model`` from decoded ``data`` (a bare list is the document's ``list_key``); on a validation
    error, ``error`` naming each offending field by its path, e.g. ``policies[0].ttl_s``."""
    if isinstance(data, list):
        data = {list_key: data}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = "; ".join(f"{_path(e['loc'], list_key)}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise error(f"invalid {what}: {errors}") from None


def _path(loc: Iterable[Any], root: str) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or root
