"""JSON Schema of every event kind, for producers in other languages and for schema
registries. ``flyball schemas export DIR`` writes them; ``schemas/json/`` holds the committed
copies, kept equal to the models by a test.

One file per kind, ``<event_type>.v<major>.schema.json`` (draft 2020-12, as pydantic emits),
plus ``event.v<major>.schema.json``: the ``oneOf`` of all kinds, discriminated by
``event_type``. The schemas describe the wire (``mode="validation"``); checks that JSON
Schema cannot express (token subsets, clock skew, unknown fields folded into
``attributes``) are stated in each schema's ``description``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .events import EVENT_ADAPTER, KINDS, SCHEMA_VERSION

BASE_ID = "https://flyball.dev/schemas/events"
NOTE = ("Also enforced by flyball and not expressible here: cache_read_tokens + cache_write_tokens <= "
        "input_tokens, cache_write_1h_tokens + cache_write_12h_tokens <= cache_write_tokens, reasoning_tokens <= "
        "output_tokens, ttft_ms <= latency_ms (llm_call); ts at most 5 minutes "
        "ahead of the consumer's clock; unknown fields are kept in attributes as 'x.<name>'.")


def schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema document."""
    out: dict[str, dict[str, Any]] = {}
    for kind, model in KINDS.items():
        schema = model.model_json_schema(mode="validation")
        name = f"{kind}.v{SCHEMA_VERSION}.schema.json"
        doc = (schema.get("description") or "").strip()
        out[name] = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"{BASE_ID}/{name}",
                     **schema, "description": (doc + "\n\n" if doc else "") + NOTE}
    union = EVENT_ADAPTER.json_schema(mode="validation")
    name = f"event.v{SCHEMA_VERSION}.schema.json"
    out[name] = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"{BASE_ID}/{name}",
                 "title": "flyball event", **union, "description": NOTE}
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export(directory: str | Path) -> list[Path]:
    """Write every schema into ``directory``; return the paths written."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = target / name
        path.write_text(render(schema))
        written.append(path)
    return written
