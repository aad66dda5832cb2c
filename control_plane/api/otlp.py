"""OTLP/HTTP trace ingest: ``POST /v1/traces`` (the path an OpenTelemetry exporter posts to).

Protobuf or JSON bodies, identity or gzip, authenticated with a ``service`` key (``admin``
too). Answers as OTLP says: 200 with an ``ExportTraceServiceResponse`` in the request's
encoding (``partial_success`` counts and explains rejected spans), 400/413/415 for a body
that cannot be read, 503 with ``Retry-After`` when the broker does not take the spans.
"""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response

from ..auth import Principal, Role
from ..otlp import OtlpRequestError, decode_request, decompress, encode_response, map_request, media_type
from ..receiver import PublishError
from .deps import Auth, Deps


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise OtlpRequestError(413, f"body: {declared} bytes is more than the {limit} accepted")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise OtlpRequestError(413, f"body: more than the {limit} bytes accepted")
        chunks.append(chunk)
    return b"".join(chunks)


def register(app: FastAPI, deps: Deps, auth: Auth) -> None:
    service = auth.require(Role.SERVICE, rate_limited=False)

    @app.post("/v1/traces", tags=["ingest"], response_class=Response,
              responses={200: {"content": {"application/x-protobuf": {}, "application/json": {}},
                               "description": "ExportTraceServiceResponse (partial_success lists rejected spans)"}})
    async def traces(request: Request, p: Annotated[Principal, Depends(service)]) -> Response:
        """OTLP/HTTP export of spans: GenAI spans become flyball events on ``flyball.events.v1``."""
        receiver = deps.otlp
        if receiver is None:
            raise HTTPException(503, "OTLP ingest is not enabled in this process")
        options = receiver.options
        try:
            kind = media_type(request.headers.get("content-type"))
            raw = await _read_capped(request, options.max_body_bytes)
            body = decompress(raw, request.headers.get("content-encoding"), max_bytes=options.max_body_bytes)
            export = decode_request(body, kind)
        except OtlpRequestError as exc:
            raise HTTPException(exc.status, exc.message) from None
        now = deps.control.clock() if deps.control is not None else datetime.now(UTC)
        mapped = map_request(export, options, now=now, bound_tenant=p.tenant_id)
        try:
            await receiver.publish(mapped)
        except PublishError as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "2"}) from None
        return Response(encode_response(mapped, kind), media_type=kind)
