"""The training checkpoint: its file name and format, what it carries (weights, optimizer, scaler, step, RNG
state, settings), and the checks that a run may resume (the saved settings against the new ones).

A checkpoint holds no trace of the number of processes, so a run resumes on any number of them.
"""
from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import yaml

from pretrain.ground.atomic import write_with
from pretrain.ground.errors import ConfigError
from pretrain.train.config import Config
from pretrain.train.runconfig import same_setting

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
# Settings that may differ when a run is resumed; every other setting must match the saved config.
# `out` is not compared: the run folder is the run, under any spelling of its path, moved or copied.
RESUMABLE_CHANGES = {"epochs", "workers", "device", "checkpoint_every", "checkpoint_every_steps", "knn_every",
                     "knn_test", "knn_k", "knn_temperature", "accumulate", "sync_bn", "compile", "threads",
                     "sync_every", "out"}
PATH_SETTINGS = {"data"}  # compared as the folders they name (relative or absolute, trailing slash, links)


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write a checkpoint atomically: a run killed at any moment keeps the last good one."""
    write_with(path, lambda tmp: torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp))


def read_checkpoint(path: Path, device: torch.device) -> dict:
    """The checkpoint's contents (weights_only), or one ConfigError line when it cannot be resumed from."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint gets the same clear message
        raise ConfigError(f"{path} cannot be read ({str(e).splitlines()[0]}); it may come from another "
                          f"sslforge version: start a new --out") from None
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} has checkpoint format {ckpt.get('format')}, this sslforge reads "
                          f"{CHECKPOINT_FORMAT}: start a new --out")
    return ckpt


def check_out_dir(out: Path, cfg: Config, resume: bool, resumable_changes: Iterable[str],
                  path_settings: Iterable[str]) -> None:
    """With --resume: `out` holds a checkpoint and the settings match the saved ones (but `resumable_changes`);
    without: `out` holds no run yet."""
    saved = out / "config.yaml"
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise ConfigError(f"--resume: {out} has no {CHECKPOINT} to resume from")
        previous = yaml.safe_load(saved.read_text())
        defaults = {f.name: f.default for f in cfg.fields()}  # for settings newer than the run
        changed = [k for k, v in cfg.to_dict().items() if k not in resumable_changes
                   and not same_setting(k, previous.get(k, defaults[k]), v, path_settings)]
        if changed:
            k = changed[0]
            raise ConfigError(f"--resume: {k} was {previous.get(k)!r} in {saved}, now {getattr(cfg, k)!r}; "
                              f"resume with the run's own settings (only "
                              f"{', '.join(sorted(resumable_changes))} may change) or start a new --out")
    elif (out / CHECKPOINT).exists() or (out / "model.json").exists():
        raise ConfigError(f"{out} already holds a run: add --resume to continue it, or choose another --out")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def process_seed(seed: int, rank: int, step: int) -> int:
    """The global RNG seed of process `rank` > 0 (dropout, drop-path) from `step` on; rank 0 keeps `seed`."""
    return hash((seed, rank, step)) & 0x7FFF_FFFF_FFFF_FFFF


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
