"""`sslforge index add`: append images (embedded with the index's model) or an embeddings dir to a live index.

It joins retrieval's `index` group (retrieval.cli.INDEX_ACTIONS) because it composes export's Embedder with the
index, as `sslforge search` does. The rows are appended through the collection's Store: durable when the command
returns (an index dir's change log, or a committed transaction), visible to a running service at its next search.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from export.backends import add_backend
from pretrain.ground.cliargs import add_batch_size, add_model, add_quiet, add_workers
from retrieval.cli import INDEX_ACTIONS, add_index_option
from retrieval.embeddings import read_embeddings
from retrieval.filters import name_values
from retrieval.index import IndexDirError
from retrieval.store import is_database, location_or_env, open_store
from retrieval.text import shown


def stored_path(root: str, folder: Path, relative: str) -> str:
    """A row's path: relative to the index's image root when the file lies under it (so the demo can show it),
    else the file's absolute path."""
    file = (folder / relative).resolve()
    if root:
        try:
            return file.relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return file.as_posix()


def cmd_add(args: argparse.Namespace) -> None:
    if bool(args.images) == bool(args.embeddings):
        raise IndexDirError("give --images DIR (with --model) or --embeddings EMB_DIR, not both")
    location = location_or_env(args.index)
    col = open_store(location)
    try:
        add_to(args, col, location)
    finally:
        col.close()


def add_to(args: argparse.Namespace, col, location: str) -> None:
    """Embed (or read) the rows and append them to the open collection `col`."""
    scratch = None if is_database(location) else Path(location).resolve().parent
    with tempfile.TemporaryDirectory(prefix=".sslforge-add-", dir=scratch) as tmp:
        if args.images:
            if not args.model:
                raise IndexDirError("--images needs --model RUN_DIR (the model the index was built with)")
            from export.embed import embed_images
            from export.embedder import Embedder

            embedder = Embedder.load(args.model, args.backend, device=args.device)
            col.check_model(embedder.fingerprint)
            manifest = embed_images(embedder, args.images, Path(tmp) / "emb", batch_size=args.batch_size,
                                    workers=args.workers, progress=not args.quiet)
            if manifest["failed"]:
                print(f"{manifest['failed']:,} images could not be decoded and were skipped (listed in the "
                      f"embeddings dir's failed.jsonl)")
            emb = read_embeddings(Path(tmp) / "emb")
        else:
            emb = read_embeddings(args.embeddings)
            col.check_model(emb.model_fingerprint)
        if not len(emb):
            raise IndexDirError("no image to add")
        folder = Path(emb.manifest.get("root", ""))
        root = col.info.get("root", "")
        paths = [stored_path(root, folder, p) for p in emb.paths]
        labels = [args.label] * len(emb) if args.label is not None else emb.labels
        fields = name_values(args.field, "--field")
        ids = col.add(emb.vectors, paths, labels, [dict(fields) for _ in paths])
    outside = sum(p.startswith("/") for p in paths)
    print(f"added {len(ids):,} rows (ids {ids[0]}..{ids[-1]}) to {col.location}: {len(col):,} live rows")
    if outside:
        print(f"{outside:,} of them lie outside the index's image root {shown(root) or '(none recorded)'}: they are "
              f"stored with absolute paths, which search prints and the demo does not show")


def add_index_add(sub: argparse._SubParsersAction) -> None:
    actions = getattr(sub.choices["index"], INDEX_ACTIONS)
    p = actions.add_parser("add", help="append images (or an embeddings dir) to a live index, durably",
                           description="Embed the images of --images with --model (the index's model), or read "
                                       "--embeddings, and append them to the index's change log: durable when the "
                                       "command returns, seen by a running service at its next search. Labels "
                                       "are the class folders (or --label); --field adds a user field to filter on.")
    add_index_option(p, "the collection to add to")
    p.add_argument("--images", metavar="DIR", help="image folder (searched recursively) or a text file of paths")
    add_model(p, required=False, help="with --images: the model dir the index was built with")
    p.add_argument("--embeddings", metavar="EMB_DIR", help="instead of --images: rows of `sslforge embed`")
    p.add_argument("--label", help="the label of every added row (default: its class folder)")
    p.add_argument("--field", action="append", metavar="NAME=VALUE",
                   help="a user field of every added row, for filtered search (repeatable)")
    add_backend(p)
    add_batch_size(p, default=64)
    add_workers(p, default=2)
    add_quiet(p)
    p.set_defaults(func=cmd_add)
