"""KPI routes: ``GET /v1/kpis`` (JSON, or CSV with ``Accept: text/csv``) and the monthly report's
data (``GET /v1/kpis/report?month=YYYY-MM``), which ``flyball kpis`` and ``flyball report`` render.

Roles as the other finance and SRE reads: ``finance`` and ``sre``; a tenant-bound key sees only
its tenant (every query is filtered on it) and is refused another tenant.
"""

import asyncio
import csv
import io
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response

from ..auth import Principal, Role
from ..kpi_rollup import KPIRefresher, KPIRollup
from ..kpis import CSV_HEADER, Span, csv_rows, kpis
from ..report import build, month_bounds
from .deps import Auth, Deps, aware, tenant_scope
from .slos import RegistryHolder


def register(app: FastAPI, deps: Deps, auth: Auth) -> None:
    reader = auth.require(Role.FINANCE, Role.SRE)
    # the rollups are refreshed in the background (``KPIRefresher.loop``, spawned with the API by
    # the runtime); a request waits only for a pass that covers rows of its period that arrived
    # since the last one
    refresher = KPIRefresher(KPIRollup(deps.store)) if deps.store is not None else None
    app.state.kpi_refresher = refresher

    async def fresh(slos: Any, start: datetime, end: datetime) -> None:
        if refresher is not None:
            await refresher.ensure(slos, start, end)

    def holder() -> RegistryHolder:
        return app.state.slo_registry  # type: ignore[no-any-return]

    def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return deps.store.call(deps.store.query, sql, params)  # type: ignore[no-any-return]

    def store() -> None:
        if deps.store is None:
            raise HTTPException(503, "no ClickHouse store in this process")

    @app.get("/v1/kpis", tags=["finance", "sre"])
    async def get_kpis(
        request: Request, p: Annotated[Principal, Depends(reader)],
        from_: Annotated[datetime | None, Query(alias="from")] = None, to: datetime | None = None,
        group_by: Literal["feature", "tenant_id"] | None = None, tenant_id: str | None = None,
    ) -> Response:
        """SLO attainment and error budget left, MTTD / time to mitigation / MTTR per alert kind,
        cost per successful outcome, spend against the forecast made at ``from``, cache hit rate and
        dollars saved, safety violations per 1,000 calls, p95 latency and TTFT, error rate by class;
        per group. ``from`` defaults to the start of the current month, ``to`` to now. Definitions
        and the query behind each figure: docs/KPIS.md."""
        store()
        tenant = tenant_scope(p, tenant_id)
        now = datetime.now(UTC)
        start = aware(from_, "from") if from_ is not None else datetime(now.year, now.month, 1, tzinfo=UTC)
        end = aware(to, "to") if to is not None else now
        if end <= start:
            raise HTTPException(422, "to: must be after from")
        if end - start > (datetime(2000, 12, 31, tzinfo=UTC) - datetime(2000, 1, 1, tzinfo=UTC)):
            raise HTTPException(422, "to: a KPI period spans at most 366 days")
        slos = (await holder().get()).current
        span = Span(start, end, group_by, tenant)
        book = deps.prices()

        await fresh(slos, start, end)
        answer = await asyncio.to_thread(kpis, query, span, slos=slos, book=book)
        answer.pop("_incidents")
        if "text/csv" in request.headers.get("accept", ""):
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(CSV_HEADER)
            writer.writerows(["" if v is None else v for v in row] for row in csv_rows(answer))
            return Response(buf.getvalue(), media_type="text/csv")
        return Response(orjson.dumps(answer), media_type="application/json")

    @app.get("/v1/kpis/report", tags=["finance", "sre"])
    async def get_report(p: Annotated[Principal, Depends(reader)], month: str | None = None,
                         tenant_id: str | None = None) -> Response:
        """Everything the monthly report shows for ``month`` (YYYY-MM, default: the current month):
        KPIs overall and per feature, incidents with their timelines, the top spend movers
        against the previous month."""
        store()
        tenant = tenant_scope(p, tenant_id)
        month = month if month is not None else datetime.now(UTC).strftime("%Y-%m")
        try:
            month_bounds(month)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        slos = (await holder().get()).current
        book = deps.prices()

        previous, _, end = month_bounds(month)
        await fresh(slos, previous, end)  # the previous month too: the report's movers compare with it
        body = await asyncio.to_thread(build, query, month, slos=slos, book=book, tenant_id=tenant)
        return Response(orjson.dumps(body, default=str), media_type="application/json")
