"""SimSiam (Chen & He 2021): predictor + stop-gradient, negative cosine, no momentum encoder, no negatives.

`predictor_lr` trains the predictor at a multiple of the learning rate (Tian et al. 2021: a faster
predictor speeds up the start).
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain.ground.heads import ProjectionHead
from pretrain.methods.base import Method
from pretrain.methods.losses import negative_cosine
from pretrain.methods.recipe import FAST_PREDICTOR, paper


class SimSiam(Method):
    name = "simsiam"
    default_recipe = FAST_PREDICTOR
    paper_recipe = paper("sgd", 0.05, 1e-4, "Chen & He 2021, sec. 4")

    def __init__(self, backbone: nn.Module, feature_dim: int, proj_dim: int = 2048, pred_hidden_dim: int = 512,
                 predictor_lr: float = 1.0):
        super().__init__(backbone, feature_dim)
        self.projector = ProjectionHead(feature_dim, proj_dim, proj_dim, layers=3, last_bn=True)
        self.predictor = ProjectionHead(proj_dim, pred_hidden_dim, proj_dim, layers=2)
        self.predictor_lr = predictor_lr

    def lr_scales(self) -> dict[str, float]:
        return {"predictor": self.predictor_lr}

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        z1, z2 = self.projector(self.backbone(torch.cat(views[:2]))).chunk(2)
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        return (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2, {}
