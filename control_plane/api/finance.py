"""Finance routes: spend (JSON or CSV) and the price catalog."""

import csv
import io
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response

from ..auth import Principal, Role
from .deps import Auth, Deps, dec_text, tenant_scope

GROUPABLE = ("tenant_id", "feature", "provider", "model", "hour", "day", "month")
TIME_BUCKETS = {"hour": "toStartOfHour(ts)", "day": "toDate(ts)", "month": "toStartOfMonth(ts)"}


def register(app: FastAPI, deps: Deps, auth: Auth) -> None:
    @app.get("/v1/spend", tags=["finance"])
    async def spend(
        request: Request,
        p: Annotated[Principal, Depends(auth.require(Role.FINANCE, Role.SRE))],
        tenant_id: str | None = None, feature: str | None = None, provider: str | None = None,
        model: str | None = None,
        from_: Annotated[datetime | None, Query(alias="from")] = None,
        to: datetime | None = None,
        group_by: Annotated[list[str] | None, Query()] = None,
    ) -> Response:
        """Spend in USD as exact decimal strings; ``total_usd`` is the sum of the rows."""
        tenant = tenant_scope(p, tenant_id)
        groups = [g.strip() for item in (group_by or []) for g in item.split(",") if g.strip()]
        for g in groups:
            if g not in GROUPABLE:
                raise HTTPException(422, f"group_by: unknown value {g!r} (one of {', '.join(GROUPABLE)})")
        where, params = ["event_type = 'llm_call'"], {}
        for name, value in (("tenant_id", tenant), ("feature", feature), ("provider", provider), ("model", model)):
            if value is not None:
                where.append(f"{name} = {{{name}:String}}")
                params[name] = value
        if from_ is not None:
            where.append("ts >= {from_ts:DateTime64(3, 'UTC')}")
            params["from_ts"] = from_
        if to is not None:
            where.append("ts < {to_ts:DateTime64(3, 'UTC')}")
            params["to_ts"] = to
        cols = [f"toString({TIME_BUCKETS[g]}) AS {g}" if g in TIME_BUCKETS else g for g in groups]
        select = ", ".join([*cols, "count() AS events", "toString(sumOrNull(cost_usd)) AS cost_usd",
                            "countIf(unpriced = 1) AS unpriced_events"])
        sql = f"SELECT {select} FROM events FINAL WHERE {' AND '.join(where)}"
        if groups:
            sql += f" GROUP BY {', '.join(groups)} ORDER BY {', '.join(groups)}"
        rows = await deps.query(sql, params)
        names = [*groups, "events", "cost_usd", "unpriced_events"]
        items = []
        for row in rows:
            item = dict(zip(names, row, strict=True))
            item["cost_usd"] = dec_text(item["cost_usd"])
            items.append(item)
        total = sum((Decimal(i["cost_usd"]) for i in items), Decimal(0))
        events = sum(int(i["events"]) for i in items)
        if "text/csv" in request.headers.get("accept", ""):
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(names)
            for item in items:
                writer.writerow([item[n] for n in names])
            return Response(buf.getvalue(), media_type="text/csv")
        body = {"currency": "USD", "total_usd": dec_text(total), "events": events, "group_by": groups, "rows": items}
        return Response(orjson.dumps(body), media_type="application/json")

    @app.get("/v1/prices", tags=["finance"])
    async def prices(_: Annotated[Principal, Depends(auth.require(Role.FINANCE, Role.SRE))],
                     provider: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        book = deps.prices()
        out = []
        for (prov, mod), versions in sorted(book.entries.items()):
            if (provider and prov != provider.lower()) or (model and mod != model.lower()):
                continue
            for e in versions:
                r = e.rates
                out.append({"provider": e.provider, "model": e.model, "version": e.version,
                            "effective_from": e.effective_from.isoformat(), "source": e.source,
                            **{k: (None if getattr(r, k) is None else dec_text(getattr(r, k)))
                               for k in ("input", "output", "cache_read", "cache_write", "reasoning", "per_request")}})
        return out
