"""What a training loop needs around its steps: the device and precision, torch.compile, the RNG state a
checkpoint carries, and the per-step logs (metrics.csv + TensorBoard) and evaluation rows (eval.csv).

Shared by the pretraining and fine-tuning trainers (pretrain/trainer.py, pretrain/finetune.py).
"""
from __future__ import annotations

import csv
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from pretrain import distributed
from pretrain.atomic import write_with
from pretrain.config import ConfigError


def select_device(name: str) -> torch.device:
    """The training device; under torchrun `auto` and `cuda` mean this process's GPU, cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed.launched():
        name = f"cuda:{distributed.local_rank()}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} requested but CUDA is not available here: use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device mps requested but MPS is not available here: use --device cpu")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def compile_networks(method: torch.nn.Module, device: torch.device) -> None:
    """torch.compile each network of `method` in place (backbone, heads, momentum copies; not the loss
    code, which keeps its queues, gathers and logged floats in Python). Compiling in place keeps the
    state_dict keys, so checkpoints and model dirs do not depend on the option."""
    if device.type == "cpu" and not shutil.which(os.environ.get("CXX", "g++")):
        raise ConfigError("--compile on a CPU needs a C++ compiler (g++) for torch.compile: install one "
                          "(apt-get install g++) or drop --compile")
    for network in method.children():
        if any(True for _ in network.parameters()):
            network.compile()


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


class MetricsLog:
    """Per-step rows in metrics.csv (plottable) and TensorBoard; on resume, rows after the checkpoint go."""

    def __init__(self, folder: Path, resume_step: int):
        self.path = folder / "metrics.csv"
        self.fields: list[str] | None = None
        if self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = reader.fieldnames
                rows = [r for r in reader if int(r["step"]) <= resume_step]
            write_with(self.path, lambda tmp: _write_csv(tmp, self.fields, rows))
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(folder / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, row: dict[str, float]) -> None:
        if self.fields is None:
            self.fields = list(row)
            _write_csv(self.path, self.fields, [])
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)
        for key, value in row.items():
            if key != "step":
                self.tb.add_scalar(f"train/{key}", value, int(row["step"]))

    def close(self) -> None:
        self.tb.close()


def _write_csv(path: Path, fields: list[str] | None, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields or [])
        writer.writeheader()
        writer.writerows(rows)


def append_eval_row(folder: Path, result: dict, log: MetricsLog, name: str) -> None:
    """One row of an online evaluation in eval.csv, and its top-1/top-5 in TensorBoard as eval/NAME_top1, ..."""
    path = folder / "eval.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, list(result))
        if new:
            writer.writeheader()
        writer.writerow(result)
    for k in ("top1", "top5"):
        log.tb.add_scalar(f"eval/{name}_{k}", result[k], result["step"])
