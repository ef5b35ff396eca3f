"""Build time, size, queries/s and recall@k of flat / HNSW / IVF / IVF-PQ indexes against exact search.

Data: clustered unit vectors (a Gaussian mixture around random centres, like image embeddings: many
near-duplicates per class, no exact ties), or a real embeddings dir with --embeddings. Queries are
fresh draws from the same mixture (or held-out rows). Ground truth is exact search with Faiss. The
torch exact fallback is timed on the same queries. Each operating point is timed right after the
exact search it is compared with, so a busy neighbour on the machine hits both.

    python bench/index_speed.py --rows 100000 --json docs/bench-index-100k.json
    python bench/index_speed.py --rows 1000000 --json docs/bench-index-1m.json
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pretrain.ground.knn import l2_normalize
from retrieval import Index, exact_search, read_embeddings
from retrieval.evaluate import rss_bytes
from retrieval.metrics import recall_at_k

# (name, kind, build params, [search knobs per operating point])
CONFIGS = [
    ("hnsw", "hnsw", {}, [{"ef_search": 32}, {"ef_search": 128}, {"ef_search": 512}, {"ef_search": 1024}]),
    ("ivf", "ivf", {"nlist": 1024}, [{"nprobe": 8}, {"nprobe": 32}]),
    ("ivfpq", "ivfpq", {"nlist": 1024, "m": 64}, [{"nprobe": 16}, {"nprobe": 64}]),
    ("ivfpq+refine", "ivfpq", {"nlist": 1024, "m": 64, "refine": 8},
     [{"nprobe": 16, "refine": 4}, {"nprobe": 32, "refine": 8}, {"nprobe": 64, "refine": 32}]),
]


def clustered(n: int, dim: int, centres: np.ndarray, spread: float, seed: int, block: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, block):
        m = min(block, n - s)
        x = centres[rng.integers(0, len(centres), m)] + spread / np.sqrt(dim) * rng.normal(size=(m, dim))
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def timed(fn, *args, repeat: int = 1, **kwargs):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return result, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="database vectors (generated data)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=0.6, help="noise norm relative to the unit-norm centres")
    ap.add_argument("--embeddings", help="use this embeddings dir instead (last --queries rows are the queries)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--kinds", nargs="+", default=["hnsw", "ivf", "ivfpq", "ivfpq+refine"],
                    help="configurations to run (names as in CONFIGS)")
    ap.add_argument("--hnsw-m", type=int, default=32, help="HNSW links per node")
    ap.add_argument("--ef-construction", type=int, default=100, help="HNSW build candidate list")
    ap.add_argument("--exact-queries", type=int, default=200, help="queries timed for exact search's queries/s")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()

    if args.embeddings:
        emb = read_embeddings(args.embeddings)
        allx = l2_normalize(emb.vectors)
        db, queries = allx[:-args.queries], allx[-args.queries:]
        data = f"{args.embeddings} ({len(db):,} rows, {len(queries)} held-out queries)"
    else:
        rng = np.random.default_rng(0)
        centres = rng.normal(size=(args.clusters, args.dim))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        db = clustered(args.rows, args.dim, centres, args.spread, seed=1)
        queries = clustered(args.queries, args.dim, centres, args.spread, seed=2)
        data = f"{args.rows:,} clustered unit vectors, dim {args.dim}, {args.clusters} clusters, spread {args.spread}"
    k = args.k
    print(f"data: {data}; {len(queries)} queries, k={k}", flush=True)
    paths = [str(i) for i in range(len(db))]
    rows = []

    def exact_qps(backend: str) -> float:
        """Best of 2 on the first --exact-queries queries (exact search costs the same for every query)."""
        n = min(args.exact_queries, len(queries))
        _, t = timed(exact_search, db, queries[:n], k, backend=backend, repeat=2)
        return n / t

    truth = exact_search(db, queries, k, backend="faiss-cpu")[1]
    faiss_qps, torch_qps = exact_qps("faiss-cpu"), exact_qps("torch-cpu")
    print(f"exact: faiss-cpu {faiss_qps:,.0f} q/s, torch-cpu fallback {torch_qps:,.0f} q/s "
          f"({torch_qps / faiss_qps:.2f}x)", flush=True)
    rows.append({"kind": "flat", "backend": "faiss-cpu", "params": {}, "knobs": {}, "build_s": 0.0,
                 "bytes": int(db.nbytes), "qps": faiss_qps, f"recall@{k}": 1.0, "speedup": 1.0})
    rows.append({"kind": "flat", "backend": "torch-cpu", "params": {}, "knobs": {}, "build_s": 0.0,
                 "bytes": int(db.nbytes), "qps": torch_qps, f"recall@{k}": 1.0, "speedup": torch_qps / faiss_qps})
    for name, kind, params, points in CONFIGS:
        if name not in args.kinds:
            continue
        if kind == "hnsw":
            params = {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction}
        params = {**params, "nlist": min(params.get("nlist", 1), len(db) // 39)} if "nlist" in params else params
        gc.collect()
        rss0 = rss_bytes()
        index = Index.build(db, paths, kind=kind, progress=True, **params)
        build_s = index.info["build_seconds"]
        rss = rss_bytes() - rss0
        with tempfile.TemporaryDirectory(dir=".") as tmp:
            index.save(Path(tmp) / "idx")
            size = sum(f.stat().st_size for f in (Path(tmp) / "idx").iterdir())
        for knobs in points:
            ref_qps = exact_qps("faiss-cpu")  # exact timed next to each point: same machine load
            (s, ids), t = timed(index.search_ids, queries, k, repeat=2, **knobs)
            row = {"kind": kind, "backend": "faiss-cpu", "params": params, "knobs": knobs, "build_s": build_s,
                   "bytes": size, "rss_delta": rss, "qps": len(queries) / t, f"recall@{k}": recall_at_k(ids, truth),
                   "exact_qps_alongside": ref_qps, "speedup": len(queries) / t / ref_qps}
            rows.append(row)
            print(f"{kind:6s} {json.dumps(params):58s} {json.dumps(knobs):30s} build {build_s:7.1f} s  "
                  f"{size / 2**20:8.1f} MiB  {row['qps']:9,.0f} q/s  recall@{k} {row[f'recall@{k}']:.4f}  "
                  f"{row['speedup']:6.1f}x exact", flush=True)
        del index
    if args.json:
        Path(args.json).write_text(json.dumps({"data": data, "k": k, "rows": rows, "argv": sys.argv[1:]}, indent=2))


if __name__ == "__main__":
    main()
