"""`sslforge index build|classify|eval|quickstart|remove|compact` and `sslforge dedup`, added to the sslforge CLI
through the `sslforge.commands` entry point (pretrain never imports this module). `sslforge search` and
`sslforge index add`, which embed images, are serve's (serve/search.py, serve/ingest.py): they compose export's
Embedder with the index; their options for the index come from here, and `index add` joins the `index` group
through INDEX_ACTIONS."""
from __future__ import annotations

import argparse
import csv
import functools
import json
from pathlib import Path

import numpy as np

from pretrain.ground.atomic import atomic_path, write_json
from pretrain.ground.cliargs import add_knn_vote, add_quiet
from retrieval.embeddings import EmbeddingsError, read_embeddings
from retrieval.exact import BackendError
from retrieval.filters import Filter, FilterError
from retrieval.index import IndexDirError, choose_kind
from retrieval.kinds import REGISTRY
from retrieval.store import ENV, build_store, display, is_database, location_or_env, open_store
from retrieval.store_pgsql import PG_KINDS

ERRORS = (EmbeddingsError, IndexDirError, BackendError, FilterError)
INDEX_ACTIONS = "index_actions"  # attribute of the `index` parser: its sub-commands, which later stages may add to
BUILD_OPTIONS = {  # name: (type, help)
    "nlist": (int, "ivf/ivfpq: inverted lists (default: 4 x sqrt(rows))"),
    "m": (int, "ivfpq: sub-quantizers, must divide the dimension (default: about dim/8)"),
    "nbits": (int, "ivfpq: bits per sub-quantizer code (default: 8)"),
    "hnsw_m": (int, "hnsw: links per node (default: 32)"),
    "ef_construction": (int, "hnsw: candidate list size while building (default: 200)"),
    "train_size": (int, "ivf/ivfpq: rows sampled to train the quantizers (default: 100000)"),
}
SEARCH_OPTIONS = {
    "ef_search": (int, "hnsw: candidate list size per query; higher = better recall, slower (default: 128)"),
    "nprobe": (int, "ivf/ivfpq: inverted lists visited per query; higher = better recall, slower (default: 16)"),
    "refine": (int, "ivfpq: re-rank refine x k PQ candidates with the exact vectors (0 = off; default: 0)"),
}


def add_options(p: argparse.ArgumentParser, options: dict, what: str) -> None:
    for name, (kind, text) in options.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=f"{text}{what}")


def search_knobs(args: argparse.Namespace) -> dict:
    return {n: getattr(args, n) for n in SEARCH_OPTIONS if getattr(args, n, None) is not None}


def add_index_option(p: argparse.ArgumentParser, what: str = "the collection") -> None:
    """--index: an index dir or a postgresql:// URL (default: $SSLFORGE_INDEX)."""
    p.add_argument("--index", metavar="INDEX", default=None,
                   help=f"{what}: an index dir, or postgresql://USER@HOST:PORT/DB?table=NAME for a PostgreSQL "
                        f"(pgvector) collection; default: ${ENV}")


def opens_store(command):
    """`command(args, store)` as `command(args)`: the store of --index (or $SSLFORGE_INDEX) opened with --mmap and
    --device when the command has them, and closed when it returns."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> None:
        store = open_store(location_or_env(args.index), mmap=getattr(args, "mmap", False),
                           device=getattr(args, "device", "auto"))
        try:
            command(args, store)
        finally:
            store.close()
    return run


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: the GPU when Faiss (or torch, for exact search) sees one; gpu: fail without one "
                        "(default: auto)")


def cmd_build(args: argparse.Namespace) -> None:
    emb = read_embeddings(args.embeddings)
    kind = args.kind
    if kind == "auto":
        kind, reason = choose_kind(len(emb), emb.dim)
        if is_database(args.out) and kind not in PG_KINDS:
            kind, reason = "hnsw", f"a database collection has no {kind}: hnsw (use --dtype float16 to halve the size)"
        print(f"--kind auto picked {kind}: {reason}")
    params = {n: getattr(args, n) for n in (*BUILD_OPTIONS, *SEARCH_OPTIONS) if getattr(args, n) is not None}
    dtype = args.dtype or (emb.manifest.get("dtype", "float32") if is_database(args.out) else None)
    store = build_store(args.out, emb.vectors, emb.paths, emb.labels, kind=kind,
                        model_fingerprint=emb.model_fingerprint, info={"root": emb.manifest.get("root", "")},
                        source=str(Path(args.embeddings).resolve()), dtype=dtype, device=args.device,
                        progress=not args.quiet, seed=args.seed, preprocessing={
                            k: emb.manifest[k] for k in ("model", "backend", "normalized") if k in emb.manifest},
                        **params)
    try:
        where = "in PostgreSQL" if is_database(args.out) else f"on the {store.info['built_on']}"
        print(f"{kind} index of {len(store):,} vectors (dim {store.dim}) built {where} in "
              f"{store.info['build_seconds']:.1f} s, {store.size_bytes() / 2**20:.1f} MiB on disk: {store.location}")
        print(f"params: {json.dumps(store.params)}")
    finally:
        store.close()


def load_queries(path: str, index):
    emb = read_embeddings(path)
    index.check_model(emb.model_fingerprint)
    return emb


@opens_store
def cmd_classify(args: argparse.Namespace, index) -> None:
    from retrieval.knn import classify, label_codes, topk_accuracy

    if args.k < 1 or args.temperature <= 0:
        raise IndexDirError("-k must be >= 1 and --temperature > 0")
    queries = load_queries(args.queries, index)
    scores, classes = classify(index, queries.vectors, k=args.k, temperature=args.temperature, **search_knobs(args))
    if args.predictions:
        best = scores.argmax(1)
        with atomic_path(args.predictions) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "predicted", "score"])
            for path, label, b, row in zip(queries.paths, queries.labels, best, scores):
                w.writerow([path, label or "", classes[b], f"{row[b]:.6g}"])
        print(f"predictions: {args.predictions}")
    codes = label_codes(queries.labels, classes)
    labelled = codes >= 0
    if labelled.any():
        acc = topk_accuracy(scores[labelled], codes[labelled])
        print(f"kNN (k={args.k}, T={args.temperature}) from {index.kind} index {index.location} on {labelled.sum():,} "
              f"labelled queries: top-1 {acc['top1']:.4f}  top-5 {acc['top5']:.4f}")
    else:
        print(f"{len(queries):,} queries have no labels known to the index: no accuracy to report")


@opens_store
def cmd_eval(args: argparse.Namespace, index) -> None:
    from retrieval.evaluate import evaluate_index

    source = args.embeddings or index.info.get("source")
    if not source:
        raise IndexDirError(f"{index.location} names no source embeddings: pass --embeddings")
    ref = read_embeddings(source)
    if len(ref) != index.ntotal:
        raise IndexDirError(f"{source} holds {len(ref)} rows, the index {index.ntotal}: pass the embeddings it was "
                            f"built from (--embeddings)")
    index.check_model(ref.model_fingerprint)
    if args.queries:
        q = load_queries(args.queries, index)
        vectors, labels, ids = q.vectors, q.labels, None
    else:
        live = np.setdiff1d(np.arange(index.ntotal), index.removed)
        ids = np.sort(np.random.default_rng(args.seed).choice(live, min(args.sample, len(live)), replace=False))
        vectors, labels = np.asarray(ref.vectors[ids]), [index.labels[i] for i in ids]
    result = evaluate_index(index, ref.vectors, vectors, k=args.k, query_ids=ids, query_labels=labels,
                            **search_knobs(args))
    k = args.k
    print(f"{index.kind} {json.dumps(result['params'])}: {result['rows']:,} rows, {result['queries']:,} queries "
          f"({'rows of the index, each without itself' if ids is not None else args.queries})")
    print(f"  recall@{k} vs exact     {result[f'recall@{k}']:.4f}")
    print(f"  queries/s              {result['queries_per_s']:,.0f}  (exact: {result['exact_queries_per_s']:,.0f}; "
          f"{result['speedup_vs_exact']:.1f}x)")
    if result.get("build_seconds") is not None:
        print(f"  build time             {result['build_seconds']:.1f} s")
    if "index_bytes" in result:
        print(f"  size on disk           {result['index_bytes'] / 2**20:.1f} MiB")
    if f"precision@{k}" in result:
        print(f"  precision@{k} by label  {result[f'precision@{k}']:.4f}  (exact search: "
              f"{result[f'exact_precision@{k}']:.4f})")
        print(f"  mAP@{k}                 {result[f'mAP@{k}']:.4f}")
    if args.json:
        write_json(args.json, result)
        print(f"written: {args.json}")


def cmd_quickstart(args: argparse.Namespace) -> None:
    from retrieval.quickstart import quickstart

    quickstart(run=args.run, embeddings=args.embeddings, out=args.out, progress=not args.quiet)


@opens_store
def cmd_dedup(args: argparse.Namespace, index) -> None:
    from retrieval.dedup import find_groups, index_vectors, sheet, write_groups

    groups = find_groups(index, args.threshold, args.max_neighbours)
    x = index_vectors(index)
    write_groups(args.out, index, groups, x)
    images = sum(len(g) for g in groups.rows)
    how = "all pairs compared" if groups.exact else f"each row's {args.max_neighbours} nearest rows compared"
    print(f"{len(index):,} rows, {groups.pairs:,} pairs with cosine >= {args.threshold} ({how}): "
          f"{len(groups.rows):,} groups holding {images:,} images"
          + (f", the largest {len(groups.rows[0])}" if groups.rows else "") + f"; written: {args.out}")
    if args.sheet:
        print(f"contact sheet of the largest groups: {sheet(args.sheet, index, groups, x)}")


def cmd_remove(args: argparse.Namespace) -> None:
    try:
        ids = [int(v) for v in args.ids.split(",") if v.strip()] if args.ids else []
    except ValueError:
        raise IndexDirError(f"--ids takes comma-separated row ids (got {args.ids!r})") from None
    where = Filter.parse(args.where, args.path_prefix)
    if not ids and not where:
        raise IndexDirError("nothing to remove: give --ids, or --where / --path-prefix that match live rows")
    store = open_store(location_or_env(args.index))
    try:
        removed = store.remove(ids) if ids else 0
        matched = store.remove_where(where) if where else 0
        if not ids and not matched:
            raise IndexDirError(f"nothing to remove: no live row matches {where.describe()}")
        print(f"removed {removed + matched:,} rows ({len(set(ids)) - removed:,} were already removed); "
              f"{len(store):,} live rows remain in {store.location}")
    finally:
        store.close()


def cmd_compact(args: argparse.Namespace) -> None:
    from retrieval.collection import Collection

    location = location_or_env(args.index)
    if is_database(location):
        raise IndexDirError(f"{display(location)} is a database collection: it has no change log to fold in "
                            f"(PostgreSQL's autovacuum reclaims the space of removed rows)")
    col = Collection.open(location)
    pending = col.pending()
    if not pending:
        print(f"{location} has no changes to fold in ({col.index.ntotal:,} rows, {len(col.index):,} live)")
        return
    col.compact()
    print(f"folded {pending / 2**20:.1f} MiB of changes into a new snapshot of {location}: "
          f"{col.index.ntotal:,} rows, {len(col.index):,} live, ids unchanged")


def add_commands(sub: argparse._SubParsersAction) -> tuple[type[Exception], ...]:
    """Add `index` (build, classify, eval, quickstart); return the exception types that mean bad input."""
    ix = sub.add_parser("index", help="build, evaluate and classify with collections of embeddings (Faiss index "
                                      "dirs or PostgreSQL tables)",
                        description="Collections of an embeddings dir (cosine similarity on L2-normalised vectors), "
                                    "in a Faiss index dir or a PostgreSQL table with pgvector (a postgresql://"
                                    "...?table=NAME location): build one, classify with it (weighted kNN), evaluate "
                                    "it, add or remove rows while it is served, copy it between the two stores.")
    isub = ix.add_subparsers(dest="index_command", required=True, metavar="ACTION",
                             help="build, add, remove, compact, copy, classify, eval or quickstart; "
                                  "`sslforge index ACTION --help` for its options")
    setattr(ix, INDEX_ACTIONS, isub)

    p = isub.add_parser("build", help="build an index dir from an embeddings dir",
                        description="Build a flat (exact), HNSW, IVF or IVF-PQ index of an embeddings dir and save "
                                    "it (index file + index.json + id table), replacing --out as a whole.")
    p.add_argument("--embeddings", required=True, metavar="EMB_DIR", help="embeddings dir (`sslforge embed`)")
    p.add_argument("--out", required=True, metavar="INDEX",
                   help="index dir to write, or postgresql://USER@HOST:PORT/DB?table=NAME: a PostgreSQL table with "
                        "pgvector (replaced as a whole, in one transaction)")
    p.add_argument("--dtype", choices=("float32", "float16"), default=None,
                   help="database collections: vector (float32) or halfvec (float16, half the space) "
                        "(default: the embeddings' dtype)")
    p.add_argument("--kind", choices=("auto", *REGISTRY), default="auto",
                   help="".join(f"{name}: {kind.summary}; " for name, kind in REGISTRY.items()) +
                   "auto: flat below 100,000 rows, hnsw while the float32 data is at most 8 GiB, ivfpq above "
                   "(default: auto). A database collection is flat, hnsw (pgvector HNSW) or ivf (pgvector IVFFlat)")
    add_options(p, BUILD_OPTIONS, "")
    add_options(p, SEARCH_OPTIONS, "; stored as the index's search default")
    p.add_argument("--seed", type=int, default=0, help="seed of the training sample (default: 0)")
    add_device(p)
    add_quiet(p, help="no progress output")
    p.set_defaults(func=cmd_build)

    p = isub.add_parser("classify", help="weighted kNN classification of embeddings against a labelled index",
                        description="The k nearest labelled rows of the index vote for their class with weight "
                                    "exp(similarity / T) (the same vote as `sslforge eval knn`). Prints top-1/top-5 "
                                    "when the queries have labels.")
    add_index_option(p, "the collection with labelled rows")
    p.add_argument("--queries", required=True, metavar="EMB_DIR", help="embeddings dir of the images to classify")
    add_knn_vote(p, short_k=True)
    p.add_argument("--predictions", metavar="FILE.csv", help="also write path, label, predicted class, score")
    p.add_argument("--mmap", action="store_true", help="memory-map the index instead of reading it into RAM")
    add_options(p, SEARCH_OPTIONS, "; overrides the index's")
    add_device(p)
    p.set_defaults(func=cmd_classify)

    p = isub.add_parser("eval", help="recall@k vs exact search, queries/s, memory, precision@k and mAP",
                        description="Search with the index and with exact search; print recall@k of the index, "
                                    "queries/s of both, build time, size on disk, and precision@k / mAP@k by label "
                                    "when the rows have labels.")
    add_index_option(p, "the collection to evaluate")
    p.add_argument("--embeddings", metavar="EMB_DIR",
                   help="the embeddings the index was built from (default: the source in index.json)")
    p.add_argument("--queries", metavar="EMB_DIR",
                   help="query embeddings (default: --sample rows of the index, each searched without itself)")
    p.add_argument("--sample", type=int, default=1000, help="rows used as queries without --queries (default: 1000)")
    p.add_argument("-k", "--k", type=int, default=10, help="results per query (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the query sample (default: 0)")
    p.add_argument("--json", metavar="FILE.json", help="also write the figures as JSON")
    add_options(p, SEARCH_OPTIONS, "; overrides the index's")
    add_device(p)
    p.set_defaults(func=cmd_eval)

    p = isub.add_parser("quickstart", help="the `make run` retrieval demo on the bundled sample",
                        description="Index the embeddings dir that `make run` wrote (the bundled sample's test "
                                    "images), print a search and the kNN accuracy from the index, each image "
                                    "searched without itself.")
    p.add_argument("--run", default="runs/quickstart",
                   help="model dir the embeddings come from, for the commands printed at the end "
                        "(default: runs/quickstart)")
    p.add_argument("--embeddings", default="emb/quickstart", metavar="EMB_DIR",
                   help="embeddings dir to index (default: emb/quickstart, what `make run` embeds)")
    p.add_argument("--out", default="runs/quickstart-retrieval",
                   help="folder for the embeddings and the index (default: runs/quickstart-retrieval)")
    add_quiet(p)
    p.set_defaults(func=cmd_quickstart)

    p = isub.add_parser("remove", help="stop returning rows of a live index (by id or by filter), durably",
                        description="Append a removal to the index dir's change log, or delete the rows of a "
                                    "database collection in one transaction (the running service and other "
                                    "readers see it at their next search); ids stay as they are. Rows to remove: "
                                    "--ids, and/or every live row matching --where / --path-prefix.")
    add_index_option(p, "the collection to change")
    p.add_argument("--ids", metavar="ID,ID,...", help="row ids, comma-separated (as search and /add print them)")
    p.add_argument("--where", action="append", metavar="FIELD=VALUE",
                   help="also every live row whose FIELD is VALUE (label or a user field); repeat: all must hold")
    p.add_argument("--path-prefix", metavar="PREFIX", help="also every live row whose path starts with PREFIX")
    p.set_defaults(func=cmd_remove)

    p = isub.add_parser("compact", help="fold the change log of a live index into a new snapshot",
                        description="Load the snapshot with its change log (adds and removes since the build) and "
                                    "write it as a new snapshot, swapped in as a whole, under the index's lock; "
                                    "readers reload it at their next search. Ids are unchanged; removed rows keep "
                                    "their space until the index is rebuilt.")
    add_index_option(p, "the collection to compact")
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("dedup", help="near-duplicate groups of an index (cosine >= a threshold), as CSV and a sheet",
                       description="Find every pair of live rows of the index whose cosine similarity is at least "
                                   "--threshold (all pairs exactly up to 200,000 rows; above, each row's "
                                   "--max-neighbours nearest), join them into groups (connected components) and "
                                   "write group, size, id, path, label and similarity to the group's first row.")
    add_index_option(p, "the collection to search for near-duplicates")
    p.add_argument("--threshold", type=float, default=0.95, help="cosine similarity of a pair (default: 0.95)")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="the groups, largest first")
    p.add_argument("--sheet", metavar="FILE.png", help="also a contact sheet of the 8 largest groups")
    p.add_argument("--max-neighbours", type=int, default=64,
                   help="above 200,000 rows: neighbours compared per row (default: 64)")
    add_device(p)
    p.set_defaults(func=cmd_dedup)

    from retrieval.cli_store import add_store_commands

    add_store_commands(sub, isub)
    return ERRORS
