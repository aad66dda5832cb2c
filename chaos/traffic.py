"""The traffic every scenario sends, and what it must cost, computed without flyball's pricing.

Event ``i`` of a run tagged ``tag`` is a pure function of ``(tag, i)``: the emitter process
sends it through the shim, and the checker recomputes it to know what was sent. The expected
spend is plain ``Decimal`` arithmetic over the built-in catalog's JSON (per-token rates), not
``flyball.stream_processors.pricing``. One event in ``UNPRICED_EVERY`` uses a model with no
price: it costs nothing and must raise one ``unpriced_model`` alert per model.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

CATALOG = Path(__file__).resolve().parents[1] / "stream_processors" / "data" / "prices.json"
TENANTS = 20
UNPRICED_EVERY = 997
UNPRICED_MODELS = 3
PRICED = (("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-5"))


@dataclass(frozen=True)
class Call:
    event_id: str
    tenant_id: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int


def tenant(tag: str, i: int) -> str:
    return f"{tag}-t{i % TENANTS}"


def unpriced_model(tag: str, k: int) -> str:
    return f"{tag}-unpriced-{k}"


def call(tag: str, i: int) -> Call:
    """Deterministic, varied, and below every long-context threshold (one rate per model)."""
    if i % UNPRICED_EVERY == UNPRICED_EVERY - 1:
        provider, model = "openai", unpriced_model(tag, (i // UNPRICED_EVERY) % UNPRICED_MODELS)
    else:
        provider, model = PRICED[i % len(PRICED)]
    inp = 500 + (i * 7919) % 4000
    return Call(event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"flyball-chaos/{tag}/{i}")), tenant_id=tenant(tag, i),
                provider=provider, model=model, input_tokens=inp, output_tokens=20 + (i * 104729) % 400,
                cache_read_tokens=(i * 31) % (inp // 2))


Rates = dict[tuple[str, str], dict[str, Decimal]]


def rates() -> Rates:
    data = json.loads(CATALOG.read_text())
    return {(e["provider"], e["model"]): {k: Decimal(e[k]) for k in ("input", "output", "cache_read", "per_request")
                                          if e.get(k) is not None}
            for e in data["prices"]}


def cost(c: Call, table: Rates) -> Decimal:
    """Fresh input at the input rate, cached input at the cache-read rate, output at its rate,
    plus the per-request price if any."""
    m = table.get((c.provider, c.model))
    if m is None:
        return Decimal(0)
    return ((c.input_tokens - c.cache_read_tokens) * m["input"] + c.cache_read_tokens * m.get("cache_read", m["input"])
            + c.output_tokens * m["output"] + m.get("per_request", Decimal(0)))


def expected(tag: str, n: int) -> tuple[dict[str, Decimal], set[str]]:
    """event_id -> expected cost for events 0..n-1, and the unpriced models among them."""
    table = rates()
    out: dict[str, Decimal] = {}
    unpriced: set[str] = set()
    for i in range(n):
        c = call(tag, i)
        out[c.event_id] = cost(c, table)
        if (c.provider, c.model) not in table:
            unpriced.add(c.model)
    return out, unpriced


def emit_kwargs(c: Call) -> dict[str, Any]:
    return {"tenant_id": c.tenant_id, "provider": c.provider, "model": c.model, "feature": "chaos",
            "input_tokens": c.input_tokens, "output_tokens": c.output_tokens,
            "cache_read_tokens": c.cache_read_tokens, "event_id": c.event_id}
