"""Read what a worker stored, in a process of its own (chDB: one process per data dir).

    python -m chaos.inspect_store CLICKHOUSE_DIR TAG

Prints one JSON object: ``costs`` (event_id -> cost as text, "" when unpriced: read with FINAL, one row per event)
and ``alerts`` (distinct alert ids stored whose scope names the run's tag).
"""

from __future__ import annotations

import json
import sys

from flyball.stream_processors.sinks.clickhouse import ClickHouseStore


def main(argv: list[str]) -> int:
    path, tag = argv
    store = ClickHouseStore(f"chdb://{path}")
    try:
        prefix = {"p": f"{tag}-"}
        costs = store.query("SELECT event_id, ifNull(toString(cost_usd), '') FROM events FINAL "
                            "WHERE startsWith(tenant_id, {p:String})", prefix)
        alerts = store.query("SELECT DISTINCT alert_id FROM alerts WHERE position(scope_key, {t:String}) > 0",
                             {"t": tag})
    finally:
        store.close()
    print(json.dumps({"costs": {str(e): c for e, c in costs},
                      "alerts": sorted(str(a) for (a,) in alerts)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
