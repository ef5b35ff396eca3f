"""The command-line options that commands of several stages share, each declared once: --device, --model,
--batch-size, --workers, --quiet and the kNN vote's -k/--temperature.

Every stage may import it (it is pretrain's ground, and it imports argparse only: retrieval's commands use it
without loading torch). A command passes what is its own (whether --model is required, its default batch, a
note on its help); the flag, its type, its metavar and the wording of its help are the same everywhere.
"""
from __future__ import annotations

import argparse

MODEL_HELP = "model dir written by `sslforge pretrain`"
DEVICES = "torch device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps"  # training configs' too
DEVICE_HELP = DEVICES + " (default: auto)"
QUIET_HELP = "no progress bars"
WORKERS_DEFAULT_HELP = "CPU cores, max 8"  # what workers=None means to pretrain.train.evaluate (default_workers)


def add_device(parser: argparse.ArgumentParser, *, note: str = "") -> argparse.Action:
    """--device, a torch device name (pretrain.ground.device.select_device reads it); `note` follows the help."""
    return parser.add_argument("--device", default="auto", help=DEVICE_HELP + note)


def add_model(parser: argparse.ArgumentParser, *, required: bool = True, help: str = MODEL_HELP) -> argparse.Action:
    """--model RUN_DIR, a model dir; `help` says which one when the command needs a particular one."""
    return parser.add_argument("--model", required=required, metavar="RUN_DIR", help=help)


def add_batch_size(parser: argparse.ArgumentParser, *, default: int = 256) -> argparse.Action:
    """--batch-size of inference: images per forward pass of the backbone (not a training batch)."""
    return parser.add_argument("--batch-size", type=int, default=default,
                               help=f"images per forward pass (default: {default})")


def add_workers(parser: argparse.ArgumentParser, *, default: int | None = None) -> argparse.Action:
    """--workers: the data-loading processes that decode and preprocess images (None: CPU cores, at most 8)."""
    shown = WORKERS_DEFAULT_HELP if default is None else default
    return parser.add_argument("--workers", type=int, default=default,
                               help=f"data-loading processes; 0 loads in the main process (default: {shown})")


def add_quiet(parser: argparse.ArgumentParser, *, help: str = QUIET_HELP) -> argparse.Action:
    """--quiet: no progress bars (a command whose progress is more than bars says so in `help`)."""
    return parser.add_argument("--quiet", action="store_true", help=help)


def add_knn_vote(parser: argparse.ArgumentParser, *, short_k: bool = False) -> None:
    """-k/--k and --temperature of the weighted kNN vote (`sslforge eval knn`, `sslforge index classify`):
    the k nearest labelled rows vote for their class with weight exp(similarity / T)."""
    parser.add_argument(*(("-k",) if short_k else ()), "--k", type=int, default=200,
                        help="neighbours that vote (default: 200)")
    parser.add_argument("--temperature", type=float, default=0.1, help="vote weight temperature T (default: 0.1)")
