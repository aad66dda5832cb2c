"""A product service stand-in: a real process sending the chaos traffic through the shim.

    python -m chaos.emitter BOOTSTRAP SPILL_DIR TAG START END RATE

Emits events START..END-1 (chaos.traffic.call) at RATE events/s, then flushes and closes the
shim, and prints one JSON line: the shim's counters (``sent`` = acknowledged by the broker).
Logs go to stderr; stdout carries only that line.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from flyball.producers import ShimSettings, Telemetry

from .traffic import call, emit_kwargs


def main(argv: list[str]) -> int:
    bootstrap, spill_dir, tag = argv[:3]
    start, end, rate = int(argv[3]), int(argv[4]), float(argv[5])
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    tel = Telemetry("chaos", bootstrap=bootstrap, spill_dir=spill_dir, follow_directives=False,
                    settings=ShimSettings(shim_send_timeout_s=3.0))
    t0 = time.monotonic()
    for i in range(start, end):
        tel.emit_llm_call(**emit_kwargs(call(tag, i)))
        ahead = t0 + (i - start + 1) / rate - time.monotonic()
        if ahead > 0.002:
            time.sleep(ahead)
    emitted_s = time.monotonic() - t0
    flushed = tel.flush(300.0)
    tel.close(30.0)
    print(json.dumps({"emitted": end - start, "emit_s": round(emitted_s, 2), "flushed": flushed,
                      "stats": tel.stats()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
