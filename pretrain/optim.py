"""Optimizers (SGD, AdamW, LARS), their parameter groups, and the warm-up + cosine learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from pretrain.config import ConfigError


def param_groups(model: nn.Module, weight_decay: float, lr_scales: dict[str, float] | None = None) -> list[dict]:
    """Weights with decay; biases and normalisation parameters (all 1-d tensors) without decay and without
    LARS adaptation, as in SimCLR, BYOL and Barlow Twins. `lr_scales` maps a top-level part of the model
    (`"predictor"`) to a multiple of the learning rate; its parameters get groups of their own carrying
    `lr_scale`, which the schedule multiplies in."""
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = (lr_scales or {}).get(name.split(".")[0], 1.0)
            groups.setdefault((scale, p.ndim > 1), []).append(p)
    order = sorted(groups, key=lambda k: (k[0] != 1.0, k[0], not k[1]))  # scale 1 first: decay, then no decay
    return [{"params": groups[k], "weight_decay": weight_decay if k[1] else 0.0, "lars": k[1], "lr_scale": k[0]}
            for k in order]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) over SGD with momentum.

    For groups with `lars=True` each parameter's update is scaled by the trust ratio
    eta * ||w|| / (||g|| + weight_decay * ||w||), computed after adding weight decay to the gradient.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                if group["lars"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    grad = grad.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float,
                    lr_scales: dict[str, float] | None = None) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, lr_scales)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    for g in groups:
        g.pop("lars")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ConfigError(f"optimizer must be sgd, adamw or lars (got {name!r})")


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule of Goyal et al.: lr = base_lr * batch / 256."""
    return base_lr * batch_size / 256


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, final: float = 0.0) -> float:
    """Linear warm-up from ~0 to `peak` over `warmup_steps`, then cosine decay to `final` at `total_steps`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
