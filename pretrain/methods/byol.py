"""BYOL (Grill et al. 2020): an online network with a predictor regresses an EMA target network's projections.

The target's momentum rises from `momentum_base` to 1 on a cosine schedule over training; the
update is the `after_step` hook, so the trainer has no BYOL-specific code. `predictor_lr` trains the
predictor at a multiple of the learning rate (a faster predictor speeds up the start; Tian et al. 2021).
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain.ground.heads import ProjectionHead
from pretrain.methods.base import Method
from pretrain.methods.ema import cosine_momentum, ema_update, frozen_copy
from pretrain.methods.losses import byol_loss
from pretrain.methods.recipe import FAST_PREDICTOR, paper


class BYOL(Method):
    name = "byol"
    default_recipe = FAST_PREDICTOR
    paper_recipe = paper("lars", 0.2, 1.5e-6, "Grill et al. 2020, sec. 3.2", momentum_base=0.996)

    def __init__(self, backbone: nn.Module, feature_dim: int, proj_hidden_dim: int = 4096, proj_dim: int = 256,
                 momentum_base: float = 0.99, predictor_lr: float = 1.0):
        super().__init__(backbone, feature_dim)
        self.projector = ProjectionHead(feature_dim, proj_hidden_dim, proj_dim, layers=2)
        self.predictor = ProjectionHead(proj_dim, proj_hidden_dim, proj_dim, layers=2)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.momentum_base, self.predictor_lr = momentum_base, predictor_lr

    def lr_scales(self) -> dict[str, float]:
        return {"predictor": self.predictor_lr}

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x = torch.cat(views[:2])
        p1, p2 = self.predictor(self.projector(self.backbone(x))).chunk(2)
        with torch.no_grad():
            t1, t2 = self.target_projector(self.target_backbone(x)).chunk(2)
        return (byol_loss(p1, t2) + byol_loss(p2, t1)) / 2, {}

    def after_step(self, step: int, total_steps: int) -> None:
        momentum = cosine_momentum(step + 1, total_steps, self.momentum_base)
        ema_update(self.target_backbone, self.backbone, momentum)
        ema_update(self.target_projector, self.projector, momentum)
