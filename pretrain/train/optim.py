"""Optimizers (SGD, AdamW, LARS), their parameter groups, and the warm-up + cosine learning-rate schedule.

Every step updates all parameters of a group at once: torch's fused AdamW on CPU and CUDA, SGD and LARS on
torch's foreach kernels.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pretrain.ground.errors import ConfigError


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
        """One update of every parameter of a group at once (torch's foreach kernels, no loop over tensors)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["lars"]:
                w_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                    torch.ones_like(w_norm))
                grads = torch._foreach_mul(grads, list(trust.unbind()))
            old = [i for i, p in enumerate(params) if "momentum_buffer" in self.state[p]]
            for i, p in enumerate(params):
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = grads[i].clone()
            if old:
                buffers = [self.state[params[i]]["momentum_buffer"] for i in old]
                torch._foreach_mul_(buffers, group["momentum"])
                torch._foreach_add_(buffers, [grads[i] for i in old])
            torch._foreach_add_(params, [self.state[p]["momentum_buffer"] for p in params], alpha=-group["lr"])
        return loss


def fast_step(params: list[torch.Tensor]) -> dict:
    """The keyword that makes torch's SGD/AdamW update all parameters in one kernel: `fused` on CPU and CUDA
    (float parameters), `foreach` elsewhere."""
    devices = {p.device.type for p in params}
    if devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params):
        return {"fused": True}
    return {"foreach": True}


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float,
                    lr_scales: dict[str, float] | None = None) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, lr_scales)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    for g in groups:
        g.pop("lars")
    fast = fast_step([p for g in groups for p in g["params"]])
    if name == "sgd":
        # foreach, not fused: torch's fused SGD takes the first parameter's missing momentum buffer for "first
        # step" and fails when a parameter gets its first gradient later (SwAV's prototypes, frozen at the start)
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **fast)
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
