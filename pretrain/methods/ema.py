"""Exponential moving averages of networks: the target/teacher of BYOL, MoCo and DINO."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy that receives no gradients (the optimizer skips it); it follows the online net via `ema_update`."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, for parameters; buffers are copied. In place, all
    tensors in one foreach call each (a lerp: target + (1 - momentum) * (online - target))."""
    targets, onlines = list(target.parameters()), [o.detach() for o in online.parameters()]
    if targets:
        torch._foreach_lerp_(targets, onlines, 1 - momentum)
    buffers = list(target.buffers())
    if buffers:
        torch._foreach_copy_(buffers, list(online.buffers()))


def cosine_momentum(step: int, total_steps: int, base: float) -> float:
    """BYOL's schedule: 1 - (1 - base) * (cos(pi * step / total) + 1) / 2, from `base` up to 1."""
    return 1 - (1 - base) * (math.cos(math.pi * step / max(1, total_steps)) + 1) / 2
