"""Barlow Twins (Zbontar et al. 2021): make the two views' cross-correlation matrix the identity."""
from __future__ import annotations

import torch
from torch import nn

from pretrain.ground.distributed import gather
from pretrain.ground.heads import ProjectionHead
from pretrain.methods.base import Method
from pretrain.methods.losses import BarlowTwinsLoss
from pretrain.methods.recipe import SMALL_PROJECTOR, paper


class BarlowTwins(Method):
    name = "barlowtwins"
    default_recipe = SMALL_PROJECTOR
    paper_recipe = paper("lars", 0.2, 1.5e-6, "Zbontar et al. 2021, sec. 4")
    couples_batch = True

    def __init__(self, backbone: nn.Module, feature_dim: int, proj_dim: int = 8192, proj_layers: int = 3,
                 lambd: float = 5e-3):
        super().__init__(backbone, feature_dim)
        self.projector = ProjectionHead(feature_dim, proj_dim, proj_dim, layers=proj_layers)
        self.criterion = BarlowTwinsLoss(lambd)

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        z1, z2 = self.projector(self.backbone(torch.cat(views[:2]))).chunk(2)
        return self.criterion(gather(z1), gather(z2)), {}  # statistics of the global batch
