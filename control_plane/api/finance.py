"""Finance routes: spend (JSON or CSV), forecast, budgets, the price catalog, re-pricing.

Roles: ``finance`` (and ``sre`` for spend) reads; ``finance`` sets budgets for the tenants it
may see; ``admin`` changes prices and reprices. A tenant-bound key sees only its tenant and is
refused another tenant without the other tenant's name being echoed, even in errors.
"""

import asyncio
import csv
import io
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import orjson
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, model_validator

from flyball.schemas.events import MAX_NAME, PlausibleTime

from flyball.stream_processors.budgets import Period, crossed_already, make_budget, period_bounds
from flyball.stream_processors.forecast import forecast as forecast_spend
from flyball.stream_processors.ingest import ALERT_COLUMNS, alert_row
from flyball.stream_processors.pricing import entry_to_dict

from ..auth import Principal, Role
from ..escaping import csv_text
from ..finance import Finance, budget_status
from ..queries import GROUPABLE, SPEND_COLUMNS, TIME_BUCKETS
from ..queries import spend as spend_query
from .deps import Auth, Deps, actor, as_utc, aware, dec_text, ordered, tenant_scope


Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
MAX_PRICES_PER_REQUEST = 5_000  # a whole provider catalog; more goes in several requests
MAX_LIMIT_USD = Decimal(10) ** 15  # ClickHouse Decimal(38, 12) holds 26 integer digits


class BudgetBody(BaseModel):
    tenant_id: Name | None = None  # a tenant-bound key may omit it
    feature: Name | None = None
    period: Period = Period.MONTHLY
    limit_usd: Decimal = Field(gt=0, le=MAX_LIMIT_USD, decimal_places=12, allow_inf_nan=False)
    thresholds: list[Annotated[int, Field(gt=0, le=1000)]] | None = Field(default=None, max_length=20)


class RepriceBody(BaseModel):
    from_: PlausibleTime = Field(alias="from")
    to: PlausibleTime
    provider: Name | None = None
    model: Name | None = None
    tenant_id: Name | None = None
    dry_run: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "RepriceBody":
        if as_utc(self.to) <= as_utc(self.from_):
            raise ValueError("to: must be after from")
        return self


def register(app: FastAPI, deps: Deps, auth: Auth) -> None:
    holder: list[Finance] = []

    def fin() -> Finance:
        if deps.finance is not None:
            return deps.finance
        if not holder:
            holder.append(Finance(deps.the_store(), get_book=deps.prices))
        return holder[0]

    @app.get("/v1/spend", tags=["finance"])
    async def spend(
        request: Request,
        p: Annotated[Principal, Depends(auth.require(Role.FINANCE, Role.SRE))],
        tenant_id: str | None = None, feature: str | None = None, provider: str | None = None,
        model: str | None = None, prompt_version: str | None = None, service_tier: str | None = None,
        environment: str | None = None,
        from_: Annotated[PlausibleTime | None, Query(alias="from")] = None,
        to: PlausibleTime | None = None,
        group_by: Annotated[list[str] | None, Query()] = None,
    ) -> Response:
        """Spend in USD as exact decimal strings; ``total_usd`` is the sum of the rows. Each
        event counts once (``FINAL`` over the ReplacingMergeTree keyed by event id)."""
        ordered(from_, to)
        tenant = tenant_scope(p, tenant_id)
        groups = [g.strip() for item in (group_by or []) for g in item.split(",") if g.strip()]
        for g in groups:
            if g not in GROUPABLE:
                raise HTTPException(422, f"group_by: unknown value {g[:40]!r} (one of {', '.join(GROUPABLE)})")
        groups = list(dict.fromkeys(groups))
        filters = {"tenant_id": tenant, "feature": feature, "provider": provider, "model": model,
                   "prompt_version": prompt_version, "service_tier": service_tier, "environment": environment}
        rows = await deps.read(spend_query, filters, groups, from_ts=None if from_ is None else aware(from_, "from"),
                               to_ts=None if to is None else aware(to, "to"))
        names = [*groups, *SPEND_COLUMNS]
        items = []
        for item in rows:
            if not groups and int(item["events"]) == 0:
                continue
            item["cost_usd"] = dec_text(item["cost_usd"])
            items.append(item)
        total = sum((Decimal(i["cost_usd"]) for i in items), Decimal(0))
        events = sum(int(i["events"]) for i in items)
        if "text/csv" in request.headers.get("accept", ""):
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(names)
            text = set(groups) - set(TIME_BUCKETS)
            for item in items:
                writer.writerow([csv_text(item[n]) if n in text else item[n] for n in names])
            return Response(buf.getvalue(), media_type="text/csv")
        body = {"currency": "USD", "total_usd": dec_text(total), "events": events, "group_by": groups, "rows": items}
        return Response(orjson.dumps(body), media_type="application/json")

    @app.get("/v1/spend/forecast", tags=["finance"])
    async def spend_forecast(
        p: Annotated[Principal, Depends(auth.require(Role.FINANCE, Role.SRE))],
        tenant_id: str | None = None, period: Period = Period.MONTHLY,
        at: PlausibleTime | None = None,
        confidence: Annotated[float, Query(gt=0, lt=1)] = 0.9,
    ) -> dict[str, Any]:
        """End-of-period spend per tenant with a confidence interval (median/Theil-Sen daily
        rate, robust to a single spike day). ``at`` defaults to now."""
        tenant = tenant_scope(p, tenant_id)
        now = aware(at, "at") if at is not None else datetime.now(UTC)
        start, end = period_bounds(period, now)
        daily = await asyncio.to_thread(fin().daily_spend, tenant_id=tenant, start=start, end=now)
        if tenant is not None:
            daily.setdefault(tenant, {})
        out = []
        for name in sorted(daily):
            f = forecast_spend(daily[name], period=period, now=now, confidence=confidence)
            out.append({"tenant_id": name, "spent_usd": dec_text(f.spent_to_date), "forecast_usd": dec_text(f.forecast),
                        "low_usd": dec_text(f.low), "high_usd": dec_text(f.high),
                        "daily_rate_usd": dec_text(f.daily_rate), "days_observed": f.days_observed,
                        "method": f.method})
        return {"period": str(period), "period_start": start.isoformat(), "period_end": end.isoformat(),
                "at": now.isoformat(), "confidence": confidence, "forecasts": out}

    # ------------------------------------------------------------------ budgets
    @app.get("/v1/budgets", tags=["finance"])
    async def budgets(p: Annotated[Principal, Depends(auth.require(Role.FINANCE, Role.SRE))],
                      tenant_id: str | None = None) -> list[dict[str, Any]]:
        """Budgets with the spend so far in the current period."""
        tenant = tenant_scope(p, tenant_id)
        f = fin()
        now = datetime.now(UTC)
        chosen = [b for b in f.budget_list() if tenant is None or b.tenant_id == tenant]
        out = []
        for b in sorted(chosen, key=lambda b: b.budget_id):
            start, end = period_bounds(b.period, now)
            spent = await deps.the_store().run(f.period_spend, b, start, end)
            out.append(budget_status(b, spent, now))
        return out

    @app.post("/v1/budgets", status_code=201, tags=["finance"])
    async def set_budget(body: BudgetBody, p: Annotated[Principal, Depends(auth.require(Role.FINANCE))]) -> dict[str, Any]:
        tenant = tenant_scope(p, body.tenant_id)
        if tenant is None:
            raise HTTPException(422, "tenant_id: required")
        budget = make_budget(tenant_id=tenant, limit_usd=body.limit_usd, period=body.period,
                             feature=body.feature, thresholds=body.thresholds)  # BudgetError: 422
        f = fin()
        await asyncio.to_thread(f.put_budget, budget, actor=actor(p))
        now = datetime.now(UTC)
        start, end = period_bounds(budget.period, now)
        store = deps.the_store()
        spent = await store.run(f.period_spend, budget, start, end)
        alerts = crossed_already(budget, spent, start, end, at=now)
        if alerts:  # a budget set below the spend so far alerts now, like one crossed later
            rows = [alert_row(a, now) for a in alerts]
            await store.run(store.insert, "alerts", rows, ALERT_COLUMNS)
            for alert in alerts:
                if deps.control is not None:
                    await deps.control.on_alert(alert)
        return budget_status(budget, spent, now)

    @app.delete("/v1/budgets/{budget_id:path}", tags=["finance"])
    async def delete_budget(budget_id: str, p: Annotated[Principal, Depends(auth.require(Role.FINANCE))]) -> dict[str, Any]:
        f = fin()
        found = next((b for b in f.budget_list() if b.budget_id == budget_id), None)
        if found is None or (p.tenant_id is not None and found.tenant_id != p.tenant_id):
            raise HTTPException(404, "budget_id: no such budget")  # same answer either way: no leak
        await asyncio.to_thread(f.delete_budget, budget_id, actor=actor(p))
        return {"deleted": budget_id}

    # ------------------------------------------------------------------ prices
    @app.get("/v1/prices", tags=["finance"])
    async def prices(_: Annotated[Principal, Depends(auth.require(Role.FINANCE, Role.SRE))],
                     provider: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """Every version of every entry, in flyball's catalog format (rates: USD per token)."""
        book = fin().book()
        return [entry_to_dict(e) for e in book.all()
                if not ((provider and e.provider.lower() != provider.lower()) or (model and e.model.lower() != model.lower()))]

    @app.post("/v1/prices", status_code=201, tags=["finance"])
    async def set_prices(p: Annotated[Principal, Depends(auth.require(Role.ADMIN, global_only=True))],
                         body: Annotated[Any, Body()], reason: str = "") -> dict[str, Any]:
        """Add a price version, or correct one (same provider, model and effective_from: the
        next revision). Body: one entry or ``{"prices": [...]}``. Every change is audited in
        ClickHouse (``price_changes``) and the live worker prices with it from its next batch;
        events already stored keep their cost until ``POST /v1/reprice``."""
        raws = body.get("prices") if isinstance(body, dict) and "prices" in body else [body]
        if not isinstance(raws, list) or not raws:
            raise HTTPException(422, "prices: expected a non-empty list of entries")
        if len(raws) > MAX_PRICES_PER_REQUEST:
            raise HTTPException(422, f"prices: at most {MAX_PRICES_PER_REQUEST} entries per request")
        changes = await asyncio.to_thread(fin().set_prices, raws, actor=actor(p), reason=reason)  # CatalogError: 422
        return {"changes": [{"version": new.version, "previous_version": old.version if old else None,
                             "entry": entry_to_dict(new)} for new, old in changes]}

    @app.get("/v1/prices/history", tags=["finance"])
    async def price_history(_: Annotated[Principal, Depends(auth.require(Role.FINANCE))],
                            provider: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(fin().price_history, provider=provider, model=model)

    @app.post("/v1/reprice", tags=["finance"])
    async def reprice(body: RepriceBody,
                      p: Annotated[Principal, Depends(auth.require(Role.ADMIN, global_only=True))]) -> dict[str, Any]:
        """Recompute stored costs in [from, to) with the current catalog; history in ``reprices``."""
        start, end = aware(body.from_, "from"), aware(body.to, "to")
        if end <= start:
            raise HTTPException(422, "to: must be after from")
        summary = await asyncio.to_thread(fin().reprice, start=start, end=end, actor=actor(p), provider=body.provider,
                                          model=body.model, tenant_id=body.tenant_id, dry_run=body.dry_run)
        return summary.as_json()
