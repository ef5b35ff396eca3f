"""`sslforge search`: image search, the composition of export's Embedder and a retrieval Store.

Query images are embedded with the model dir through the Embedder (the path the service and the demo
use: the model dir's preprocessing, L2-normalised rows), or read from an embeddings dir; the index's
search options and device come from retrieval's CLI.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pretrain.data.images import DECODE_ERRORS, load_rgb
from pretrain.ground.cliargs import add_model
from retrieval.cli import (
    SEARCH_OPTIONS,
    add_device,
    add_index_option,
    add_options,
    load_queries,
    opens_store,
    search_knobs,
)
from retrieval.filters import Filter, FilterError
from retrieval.text import shown


class QueryError(ValueError):
    """A query image could not be used, or the query options do not fit together."""


def embed_query_images(model: str, images: list[str], device: str) -> tuple[np.ndarray, str]:
    """Embed query image files with a model dir (torch backend): (vectors (N, D), model fingerprint)."""
    from export.embedder import Embedder

    files = [Path(p) for p in images]
    for f in files:
        if not f.is_file():
            raise QueryError(f"query image {f} not found")
    decoded, failed = [], 0
    for f in files:
        try:
            decoded.append(load_rgb(f))
        except DECODE_ERRORS:
            failed += 1
    if failed:
        raise QueryError(f"{failed} of the query images could not be decoded: pass readable images")
    embedder = Embedder.load(model, "torch", device={"gpu": "cuda"}.get(device, device))
    return embedder.embed(decoded), embedder.fingerprint


def cmd_search(args: argparse.Namespace) -> None:
    if bool(args.images) == bool(args.query_embeddings):
        raise QueryError("give query IMAGEs with --model, or --query-embeddings, not both")
    search(args)


@opens_store
def search(args: argparse.Namespace, index) -> None:
    if args.images:
        if not args.model:
            raise QueryError("query images need --model RUN_DIR to embed them")
        vectors, fingerprint = embed_query_images(args.model, args.images, args.device)
        index.check_model(fingerprint)
        names, qpaths = list(args.images), [Path(p) for p in args.images]
    else:
        emb = load_queries(args.query_embeddings, index)
        rows = slice(0, args.limit)
        vectors, names = np.asarray(emb.vectors[rows]), emb.paths[rows]
        qroot = Path(emb.manifest.get("root", ""))
        qpaths = [qroot / p for p in names]
    where = Filter.parse(args.where, args.path_prefix)
    _, _, metadata = index.search(vectors, args.k, where=where, **search_knobs(args))
    if where:
        print(f"filter: {shown(where.describe())}")
    root = Path(index.info.get("root", ""))
    for name, hits in zip(names, metadata):  # stored strings are escaped: a label may hold ESC or NUL
        print(f"query {shown(name)}")
        for rank, hit in enumerate((h for h in hits if h is not None), 1):
            print(f"  {rank:3d}. {hit['score']:.4f}  {shown(hit['label'] or '-'):<12} {shown(hit['path'])}")
    if args.sheet:
        from retrieval.sheet import contact_sheet

        contact_sheet(args.sheet, [(p, n) for p, n in zip(qpaths, names)],
                      [[(root / h["path"], h["label"] or "", h["score"]) for h in hits if h is not None]
                       for hits in metadata])
        print(f"contact sheet: {args.sheet}")


def add_search_command(sub: argparse._SubParsersAction) -> tuple[type[Exception], ...]:
    """Add `search`; return the exception types that mean bad input."""
    p = sub.add_parser("search", help="image search: nearest indexed images of query images or embeddings",
                       description="Embed query images with --model (or read --query-embeddings), search the index "
                                   "and print path, label and cosine score of each neighbour; optionally a PNG "
                                   "contact sheet.")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="query image files (need --model)")
    add_index_option(p, "the collection to search")
    add_model(p, required=False, help="model dir that embeds the query images (the index's model)")
    p.add_argument("--query-embeddings", metavar="EMB_DIR", help="search with these vectors instead of images")
    p.add_argument("--limit", type=int, default=None, help="with --query-embeddings: only the first N rows")
    p.add_argument("-k", "--k", type=int, default=10, help="neighbours per query (default: 10)")
    p.add_argument("--where", action="append", metavar="FIELD=VALUE",
                   help="only rows whose FIELD is VALUE (label, or a field given when the rows were added); "
                        "repeat for several (all must hold)")
    p.add_argument("--path-prefix", metavar="PREFIX", help="only rows whose indexed path starts with PREFIX")
    p.add_argument("--sheet", metavar="FILE.png", help="write a contact sheet: query, then its neighbours")
    p.add_argument("--mmap", action="store_true", help="memory-map the index instead of reading it into RAM")
    add_options(p, SEARCH_OPTIONS, "; overrides the index's")
    add_device(p)
    p.set_defaults(func=cmd_search)
    return (QueryError, FilterError)
