"""The OTLP receiver's throughput per core, against the shim path measured in the same run.

    python bench/otlp.py               # 5 rounds x 20 requests x 512 spans, + HTTP on Kafka
    python bench/otlp.py --quick       # 3 rounds x 4 requests (smoke)
    python bench/otlp.py --no-http     # CPU paths only, no broker

Paths (CPU seconds of this process, ``time.process_time``; median of the rounds):

- **receiver**: what ``POST /v1/traces`` does per request, minus HTTP: gunzip, decode the
  protobuf ``ExportTraceServiceRequest`` (opentelemetry-proto), map every GenAI span to an
  event and validate it (``control_plane/otlp.py``). The requests are real: spans made by the
  OpenTelemetry SDK (15 GenAI attributes, as in bench/shim.py) and encoded by the SDK's own
  OTLP encoder, 512 spans per request (the BatchSpanProcessor's default export batch), gzip;
- **shim** (baseline): ``Telemetry.emit_llm_call`` with the same 15 fields into the in-memory
  transport and ``flush``: the caller's append plus the shim thread's validate + encode;
- **http** (with a broker): the FastAPI app served by uvicorn in this process, the same
  requests posted with httpx, every span acknowledged by the broker (``acks=all``) before the
  answer. Its CPU includes the client and the broker client, so it is an upper bound of the
  receiver's cost per span; wall spans/s is what one process took on this machine.

Figures are spans (events) per CPU-second, i.e. per core; the ratio is receiver / shim.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flyball.control_plane.otlp import PROTOBUF, OtlpOptions, decode_request, decompress, map_request  # noqa: E402
from flyball.producers import Telemetry  # noqa: E402
from flyball.producers.transports import MemoryTransport  # noqa: E402

SPANS_PER_REQUEST = 512
FIELDS: dict[str, Any] = {
    "tenant_id": "acme", "feature": "support-bot", "provider": "openai", "model": "gpt-4o-mini",
    "input_tokens": 1200, "output_tokens": 300, "cache_read_tokens": 1000, "cache_write_tokens": 0,
    "reasoning_tokens": 0, "latency_ms": 850.5, "ttft_ms": 120.0, "status": "ok", "stream": True,
    "request_id": "req-1", "route": "primary",
}
ATTRIBUTES: dict[str, Any] = {
    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18", "gen_ai.usage.input_tokens": 1200,
    "gen_ai.usage.output_tokens": 300, "gen_ai.usage.cache_read.input_tokens": 1000,
    "gen_ai.usage.cache_creation.input_tokens": 0, "gen_ai.usage.reasoning.output_tokens": 0,
    "gen_ai.request.stream": True, "gen_ai.response.time_to_first_chunk": 0.12,
    "flyball.tenant_id": "acme", "flyball.feature": "support-bot", "flyball.request_id": "req-1",
    "flyball.route": "primary",
}


def make_requests(n: int) -> list[bytes]:
    """``n`` gzip'd protobuf export requests of real SDK spans, encoded by the SDK's exporter code."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")
    out = []
    for _ in range(n):
        exporter.clear()
        for _ in range(SPANS_PER_REQUEST):
            start = time.time_ns()
            tracer.start_span("chat gpt-4o-mini", attributes=ATTRIBUTES, start_time=start).end(
                end_time=start + 850_000_000)
        out.append(gzip.compress(encode_spans(exporter.get_finished_spans()).SerializeToString()))
    provider.shutdown()
    return out


def receiver_round(requests: list[bytes]) -> float:
    options = OtlpOptions()
    from datetime import UTC, datetime
    t0 = time.process_time()
    events = 0
    for body in requests:
        mapped = map_request(decode_request(decompress(body, "gzip", max_bytes=options.max_body_bytes), PROTOBUF),
                             options, now=datetime.now(UTC))
        events += len(mapped.events)
        assert not mapped.dead, mapped.reasons[:1]
    return events / (time.process_time() - t0)


def shim_round(n: int) -> float:
    with tempfile.TemporaryDirectory() as spill:
        tel = Telemetry("bench", transport=MemoryTransport(), follow_directives=False, spill_dir=spill,
                        queue_size=2 * n)
        try:
            t0 = time.process_time()
            for _ in range(n):
                tel.emit_llm_call(**FIELDS)
            tel.flush(timeout=60)
            cpu = time.process_time() - t0
            assert tel.stats()["sent"] >= n, tel.stats()
        finally:
            tel.close(timeout=10)
    return n / cpu


async def http_round(requests: list[bytes], bootstrap: str) -> tuple[float, float]:
    import httpx
    import uvicorn

    from flyball.control_plane.app import Deps, create_app
    from flyball.control_plane.auth import KeyRing, Role
    from flyball.control_plane.embedded import free_port
    from flyball.control_plane.policy_file import DEFAULT_POLICIES
    from flyball.control_plane.receiver import OtlpReceiver

    keys = KeyRing()
    key, _ = keys.create(Role.SERVICE)
    receiver = OtlpReceiver(bootstrap)
    app = create_app(Deps(store=None, control=None, keys=keys, policies=lambda: DEFAULT_POLICIES,
                          prices=lambda: None, otlp=receiver))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           access_log=False))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": PROTOBUF, "Content-Encoding": "gzip"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            assert (await http.post("/v1/traces", content=requests[0], headers=headers)).status_code == 200  # warm
            t0, c0 = time.perf_counter(), time.process_time()
            for body in requests:
                r = await http.post("/v1/traces", content=body, headers=headers)
                assert r.status_code == 200, r.text
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        server.should_exit = True
        await task
        await receiver.stop()
    spans = len(requests) * SPANS_PER_REQUEST
    return spans / cpu, spans / wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-http", action="store_true")
    p.add_argument("--broker", default="kafka", choices=["kafka", "tansu"])
    a = p.parse_args(argv)
    rounds, per_round = (3, 4) if a.quick else (5, 20)
    requests = make_requests(per_round)
    receiver_round(requests[:1])  # warm-up (imports, caches)
    shim_round(SPANS_PER_REQUEST)
    recv, shim = [], []
    for _ in range(rounds):  # interleaved, so load on the machine hits both paths alike
        recv.append(receiver_round(requests))
        shim.append(shim_round(per_round * SPANS_PER_REQUEST))
    result: dict[str, Any] = {
        "spans_per_request": SPANS_PER_REQUEST, "rounds": rounds, "spans_per_round": per_round * SPANS_PER_REQUEST,
        "receiver_spans_per_cpu_s": round(statistics.median(recv)),
        "shim_events_per_cpu_s": round(statistics.median(shim)),
        "ratio_receiver_to_shim": round(statistics.median(recv) / statistics.median(shim), 2),
        "receiver_rounds": [round(x) for x in recv], "shim_rounds": [round(x) for x in shim],
    }
    if not a.no_http:
        sys.path.insert(0, str(ROOT / "bench"))
        from _brokers import test_brokers

        with test_brokers([a.broker]) as addresses:
            bootstrap = addresses[a.broker]
            from flyball.stream_processors.topics import ensure_topics
            asyncio.run(ensure_topics(bootstrap))
            http = [asyncio.run(http_round(requests, bootstrap)) for _ in range(max(1, rounds // 2))]
        result["http_broker"] = a.broker
        result["http_spans_per_cpu_s"] = round(statistics.median(h[0] for h in http))
        result["http_spans_per_s_wall"] = round(statistics.median(h[1] for h in http))
        result["ratio_http_to_shim"] = round(result["http_spans_per_cpu_s"] / result["shim_events_per_cpu_s"], 2)
    result["run_id"] = uuid.uuid4().hex[:8]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
