"""What a filter costs an index dir's search: the mask of the rows that match, with the column cache and without.

An index dir keeps its rows' paths, labels and user fields as Python lists; a filtered search needs a boolean mask
over every row. retrieval/filters.py's Columns turns the lists into arrays once (codes per field, sorted paths for
a prefix) and extends them as rows are added, so a query's mask is a few numpy operations. This times, on N rows
with a `shard` field (row % 20, the 1-in-20 filter of bench/store_speed.py), a label and class/NNNNNNN.jpg paths:

- cold: a fresh cache per query (the first filtered search after a load pays this once),
- warm: the cached columns (every later query),
- after an add: 1,000 rows appended, then the next query (the cache extends by the new rows only),

for an equality filter and a path prefix. Median of --repeat calls; writes bench/results/filters/rowsN.json.

    python bench/filter_speed.py --rows 1000000
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runinfo  # noqa: E402

from retrieval.filters import Columns, Filter  # noqa: E402

RESULTS = runinfo.ROOT / "bench" / "results" / "filters"
FILTERS = {"shard=0": Filter({"shard": "0"}), "path prefix": Filter(path_prefix="c3/")}


def rows(n: int, start: int = 0) -> tuple[list[str], list[str], list[dict]]:
    ids = range(start, start + n)
    return [f"c{i % 10}/{i:07d}.jpg" for i in ids], [f"class{i % 10}" for i in ids], [{"shard": i % 20} for i in ids]


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 3)


def measure(n: int, repeat: int, cold_repeat: int) -> list[dict]:
    paths, labels, meta = rows(n)
    removed = np.array([], np.int64)
    out = []
    for name, where in FILTERS.items():
        expected = int(where.mask(paths, labels, meta, removed).sum())
        cold = median_ms(lambda w=where: w.mask(paths, labels, meta, removed, Columns()), cold_repeat)
        columns = Columns()
        where.mask(paths, labels, meta, removed, columns)
        warm = median_ms(lambda w=where, c=columns: w.mask(paths, labels, meta, removed, c), repeat)
        grown = []
        for _ in range(cold_repeat):
            more = rows(1000, len(paths))
            for lst, extra in zip((paths, labels, meta), more):
                lst.extend(extra)
            t = time.perf_counter()
            got = where.mask(paths, labels, meta, removed, columns)
            grown.append((time.perf_counter() - t) * 1000)
        assert got.sum() >= expected  # the appended rows are matched too
        out.append({"filter": name, "rows": n, "matching": expected, "cold_ms": cold, "warm_ms": warm,
                    "after_add_ms": round(statistics.median(grown), 3), "speedup": round(cold / warm, 1)})
        print(f"{name:12} {n:,} rows, {expected:,} match: cold {cold:,.1f} ms, warm {warm:,.3f} ms "
              f"({cold / warm:,.0f}x), after adding 1,000 rows {out[-1]['after_add_ms']:,.2f} ms", flush=True)
        del paths[n:], labels[n:], meta[n:]
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the index (default: 1000000)")
    p.add_argument("--repeat", type=int, default=200, help="timed warm calls per filter (default: 200)")
    p.add_argument("--cold-repeat", type=int, default=5, help="timed cold calls per filter (default: 5)")
    p.add_argument("--out", type=Path, help="result JSON (default: bench/results/filters/rowsN.json)")
    args = p.parse_args(argv)
    result = runinfo.header(vars(args) | {"out": str(args.out) if args.out else None})
    result["rows"] = measure(args.rows, args.repeat, args.cold_repeat)
    path = runinfo.write_result(result, args.out or RESULTS / f"rows{args.rows}.json")
    print(f"written: {path}")
    return path


if __name__ == "__main__":
    main()
