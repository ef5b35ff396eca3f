"""The serve stage's commands, added to `sslforge` through the `sslforge.commands` entry point:

    sslforge serve --model RUN_DIR [--index INDEX_DIR] [--backend onnx] [--host H] [--port P] [--no-batching] ...
    sslforge demo  --model RUN_DIR --index INDEX_DIR [--backend onnx] [--host H] [--port P] [--k K]
    sslforge search --index INDEX_DIR (--model RUN_DIR IMAGE... | --query-embeddings EMB_DIR) [-k K] [--sheet FILE.png]
    sslforge index add --index INDEX_DIR (--images DIR --model RUN_DIR | --embeddings EMB_DIR) [--field NAME=VALUE]

`serve` becomes `bentoml serve serve.service:SSLForge` (exec, same process id) with the options as SSLFORGE_*
variables, so it is the same service that `bentoml serve` starts from the project root.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from export.backends import add_backend
from pretrain.ground.cliargs import add_model
from retrieval.store import display, is_database
from serve.engine import BadInput
from serve.ingest import add_index_add
from serve.search import add_search_command
from serve.settings import Limits, Settings, SettingsError, from_env

SERVICE = "serve.service:SSLForge"


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Absolute paths (the server may run elsewhere); the limits from the SSLFORGE_* variables, --max-k over them."""
    for name, path in (("--model", args.model), ("--index", args.index)):
        if path is not None and not is_database(path) and not Path(path).is_dir():
            raise SettingsError(f"{name} {path} is not a folder")
    index = args.index if is_database(args.index) else str(Path(args.index).resolve()) if args.index else None
    env = from_env(require_model=False)
    limits = env.limits
    if args.max_k is not None:
        limits = replace(limits, max_k=args.max_k)
    return Settings(model=str(Path(args.model).resolve()), index=index, backend=args.backend, device=args.device,
                    batching=getattr(args, "batching", True),
                    max_batch_size=getattr(args, "max_batch_size", 32),
                    max_latency_ms=getattr(args, "max_latency_ms", 10_000), limits=limits,
                    write_token=env.write_token)


def server_command(host: str, port: int, workers: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]
    return cmd + (["--api-workers", str(workers)] if workers else [])


def cmd_serve(args: argparse.Namespace) -> None:
    settings = settings_from_args(args)
    cmd = server_command(args.host, args.port)
    print(f"sslforge serve: {' '.join(cmd[1:])} (model {settings.model}, index {display(settings.index or 'none')}, "
          f"batching {'on' if settings.batching else 'off'}, "
          f"{'/add and /remove need the write token' if settings.writable else 'read-only'})", flush=True)
    # exec, not a child process: `bentoml serve` takes over this process id, so the signals a process manager,
    # `docker stop` or `kill PID` sends reach the server itself, which stops its workers and frees the port
    os.execve(cmd[0], cmd, {**os.environ, **settings.env()})


def cmd_demo(args: argparse.Namespace) -> None:
    from serve.demo import launch
    from serve.engine import Engine

    engine = Engine.load(settings_from_args(args))
    if engine.index is None:
        raise SettingsError("sslforge demo searches an index: pass --index INDEX_DIR")
    print(f"demo on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    launch(engine, host=args.host, port=args.port, k=args.k)


def _add_common(p: argparse.ArgumentParser, index_required: bool) -> None:
    add_model(p)
    p.add_argument("--index", required=index_required, default=None,
                   help="the collection: an index dir from `sslforge index`, or a postgresql://...?table=NAME URL "
                        "(needed for search)" + ("" if index_required else
                                                                                 "; without it /search answers 404"))
    add_backend(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--max-k", type=int, default=None, help=f"largest k a request may ask for (default: "
                                                           f"SSLFORGE_MAX_K, else {Limits.max_k})")


def add_commands(sub: argparse._SubParsersAction) -> tuple[type[Exception], ...]:
    p = sub.add_parser("serve", help="start the BentoML service (embed, classify, search)",
                       description="Start the BentoML service on a model dir (and index): POST /embed, /classify, "
                                   "/search with uploaded images; /livez, /readyz, /metrics.")
    _add_common(p, index_required=False)
    p.add_argument("--port", type=int, default=3000, help="port (default: 3000)")
    p.add_argument("--no-batching", dest="batching", action="store_false",
                   help="turn adaptive batching off (one model call per request)")
    p.add_argument("--max-batch-size", type=int, default=32, help="adaptive batching: largest batch (default: 32)")
    p.add_argument("--max-latency-ms", type=int, default=10_000,
                   help="adaptive batching: a request waiting longer gets 503 (default: 10000)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="start the Gradio image-search demo",
                       description="A web page: drop an image, see its k nearest indexed images and the "
                                   "linear-probe prediction. Runs the model in-process (CPU is fine).")
    _add_common(p, index_required=True)
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--k", type=int, default=8, help="results shown at first; a slider changes it (default: 8)")
    p.set_defaults(func=cmd_demo)
    add_index_add(sub)
    return (SettingsError, BadInput, *add_search_command(sub))
