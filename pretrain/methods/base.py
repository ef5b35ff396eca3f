"""The contract every SSL method follows, so one trainer runs them all."""
from __future__ import annotations

import torch
from torch import nn


class Method(nn.Module):
    """An SSL method owns the backbone and its heads (plus momentum copies, queues, prototypes).

    Subclasses take `(backbone, feature_dim, **hyper_parameters)` and implement `forward(views)`
    returning `(loss, logs)`, where logs are floats worth plotting (loss terms, statistics).
    `after_step` runs after each optimizer step, for momentum encoders and schedules.

    A transform may return a dict `{"views": [...], name: tensor with one row per view, ...}` instead of
    a list of views; a method that uses such per-view extras (crop boxes, rotation labels) names them
    in `needs`, and the trainer passes them as keyword arguments to `forward`.
    """

    needs: tuple[str, ...] = ()

    def __init__(self, backbone: nn.Module, feature_dim: int):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after optimizer step `step` (0-based) of `total_steps`; nothing to do by default."""
