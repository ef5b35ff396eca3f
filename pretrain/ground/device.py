"""The device a run uses and its autocast precision (torch.compile of a method's networks: pretrain/train/speed.py).

Shared by the trainers, evaluation, the study wing and export's Embedder (which imports this small module,
not the training stack).
"""
from __future__ import annotations

import torch

from pretrain.ground import distributed
from pretrain.ground.errors import ConfigError


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


def describe_device(device: torch.device, amp_dtype: torch.dtype | None, processes: int = 1) -> str:
    """Where and how a run trains, in words (the first thing to check on a GPU machine)."""
    precision = str(amp_dtype).replace("torch.", "") + " autocast" if amp_dtype else "fp32"
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return f"{device}{gpu}, {precision}" + (f", {processes} processes" if processes > 1 else "")

