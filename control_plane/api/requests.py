"""The request/trace chain: every event of one ``request_id`` or ``trace_id`` in order
(retrieval -> model calls -> tool calls -> safety triggers), with tokens, cost, latency and
status; ids and fields, never text. SRE role; a tenant-bound key sees only its tenant's events
(another tenant's request answers 404, the same as an unknown id)."""

from decimal import Decimal
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path

from ..auth import Principal, Role
from ..ui.queries import request_chain
from .deps import Auth, Deps, dec_text


def register(app: FastAPI, deps: Deps, auth: Auth) -> None:
    sre = auth.require(Role.SRE)

    @app.get("/v1/requests/{request_id}", tags=["sre"])
    async def request_events(request_id: Annotated[str, Path(min_length=1, max_length=200)],
                             p: Annotated[Principal, Depends(sre)]) -> dict[str, Any]:
        """The chain of one request or trace (matched on ``request_id`` or ``trace_id``), oldest
        first, with totals; at most 500 events."""
        if deps.store is None:
            raise HTTPException(503, "no ClickHouse store in this process")
        events = await deps.store.run(request_chain, deps.store.query, request_id, p.tenant_id)
        if not events:
            raise HTTPException(404, "no events with this request_id or trace_id")
        cost = sum((Decimal(e["cost_usd"]) for e in events if e["cost_usd"] is not None), Decimal(0))
        kinds: dict[str, int] = {}
        for e in events:
            kinds[e["event_type"]] = kinds.get(e["event_type"], 0) + 1
        return {"id": request_id, "events": events, "counts": kinds, "cost_usd": dec_text(cost),
                "input_tokens": sum(int(e["input_tokens"]) for e in events),
                "output_tokens": sum(int(e["output_tokens"]) for e in events),
                "failed": sum(1 for e in events if e["status"] not in ("ok", "")),
                "unpriced": sum(1 for e in events if e["unpriced"])}
