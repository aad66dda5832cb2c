"""POST /v1/prices cost: N price changes applied at once (``PriceBook.with_entries``, what the
route and a restart's ``restore_prices`` run) against the same N applied one at a time
(``with_entry`` in a loop, what they ran before). Prints medians and the ratio.

    .venv/bin/python bench/prices.py [--n 2000 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from flyball.control_plane.runtime import load_prices
from flyball.stream_processors.pricing import PriceEntry, Rates


def changes(n: int) -> list[PriceEntry]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [PriceEntry("bench", f"model-{i % 500}", start + timedelta(days=i // 500),
                       Rates(input=Decimal(i) / 10**9, output=Decimal(i) / 10**8)) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-max", type=int, default=2000, help="skip the one-by-one loop above this N")
    args = parser.parse_args()
    book = load_prices(None)
    for n in args.n:
        batch = changes(n)
        at_once = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            book.with_entries(batch)
            at_once.append(time.perf_counter() - t0)
        line = f"n={n}: with_entries median {statistics.median(at_once) * 1000:.1f} ms"
        if n <= args.baseline_max:
            t0 = time.perf_counter()
            folded = book
            for e in batch:
                folded, _ = folded.with_entry(e)
            one_by_one = time.perf_counter() - t0
            line += f"; one by one {one_by_one * 1000:.0f} ms (1 run); ratio {one_by_one / statistics.median(at_once):.0f}x"
        print(line)


if __name__ == "__main__":
    main()
