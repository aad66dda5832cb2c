"""A product service stand-in for the fault tests: a real process running the shim.

Reads commands from stdin, one per line, answers each with one JSON line on stdout:
  emit START END SECONDS   emit llm_call events START..END-1 spread over SECONDS
  flush TIMEOUT            -> {"flushed": bool, "stats": {...}}
  close TIMEOUT            -> {"stats": {...}}, then the process exits
Event i belongs to tenant ``t{i % TENANTS}``, has ``event_id = uuid5(NS, f"{tag}-{i}")`` and
``attributes.seq = i``, so the test knows exactly what must arrive and in which order.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid

import structlog

from flyball.producers import ShimSettings, Telemetry

TENANTS = 10


def event_id(tag: str, i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}-{i}"))


def main() -> int:
    bootstrap, spill_dir, tag = sys.argv[1:4]
    # stdout carries the answers: logs go to stderr (aiokafka's are noisy while Kafka is down)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    logging.basicConfig(level=logging.CRITICAL)
    settings = ShimSettings(shim_send_timeout_s=3.0)
    tel = Telemetry("fault-test", bootstrap=bootstrap, spill_dir=spill_dir, follow_directives=False,
                    settings=settings)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "emit":
            start, end, seconds = int(args[0]), int(args[1]), float(args[2])
            t0 = time.monotonic()
            for i in range(start, end):
                tel.emit_llm_call(tenant_id=f"t{i % TENANTS}", feature=tag, provider="openai", model="gpt-4o-mini",
                                  input_tokens=100, output_tokens=10, event_id=event_id(tag, i),
                                  attributes={"seq": i})
                ahead = t0 + seconds * (i - start + 1) / (end - start) - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            print(json.dumps({"emitted": end - start, "stats": tel.stats()}), flush=True)
        elif cmd == "flush":
            flushed = tel.flush(float(args[0]))
            print(json.dumps({"flushed": flushed, "stats": tel.stats()}), flush=True)
        elif cmd == "close":
            tel.close(float(args[0]))
            print(json.dumps({"stats": tel.stats()}), flush=True)
            return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
