"""One replica of a product service, as a real process running the shim (for the throttle test).

argv: BOOTSTRAP TENANT SIGNING_KEYS. Emits 20 events for TENANT, flushes, prints {"ready": true};
then on each stdin line "guard SECONDS" calls guard() as fast as it can for SECONDS (about 500
calls/s) and prints {"allowed": n, "calls": m, "replicas": r}; "close" ends it."""

from __future__ import annotations

import json
import logging
import sys
import time

from pydantic import SecretStr

from flyball.producers import ShimSettings, Telemetry


def main() -> int:
    bootstrap, tenant, keys = sys.argv[1:4]
    logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)
    tel = Telemetry("replica", bootstrap=bootstrap, settings=ShimSettings(signing_keys=SecretStr(keys)))
    for _ in range(20):
        tel.emit_llm_call(tenant_id=tenant, provider="openai", model="gpt-4o-mini", input_tokens=10, output_tokens=1)
    print(json.dumps({"ready": tel.flush(30)}), flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "close":
            break
        if cmd == "replicas":
            found = [d.replicas for d in tel.view.active(now=time.time()) if d.scope.tenant_id == tenant]
            print(json.dumps({"replicas": found}), flush=True)
        if cmd == "guard":
            deadline = time.monotonic() + float(args[0])
            allowed = calls = 0
            while time.monotonic() < deadline:
                allowed += tel.guard(tenant_id=tenant).allowed
                calls += 1
                time.sleep(0.002)
            print(json.dumps({"allowed": allowed, "calls": calls}), flush=True)
    tel.close(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
