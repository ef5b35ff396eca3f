"""VICReg (Bardes et al. 2022): variance, invariance and covariance regularisation; the three terms are logged."""
from __future__ import annotations

import torch
from torch import nn

from pretrain.ground.distributed import gather
from pretrain.ground.heads import ProjectionHead
from pretrain.methods.base import Method
from pretrain.methods.losses import VICRegLoss
from pretrain.methods.recipe import SMALL_PROJECTOR, paper


class VICReg(Method):
    name = "vicreg"
    default_recipe = SMALL_PROJECTOR
    paper_recipe = paper("lars", 0.2, 1e-6, "Bardes et al. 2022, sec. 4.1")
    couples_batch = True

    def __init__(self, backbone: nn.Module, feature_dim: int, proj_dim: int = 8192, proj_layers: int = 3,
                 lambda_: float = 25.0, mu: float = 25.0, nu: float = 1.0, gamma: float = 1.0):
        super().__init__(backbone, feature_dim)
        self.projector = ProjectionHead(feature_dim, proj_dim, proj_dim, layers=proj_layers)
        self.criterion = VICRegLoss(lambda_, mu, nu, gamma)

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        z1, z2 = self.projector(self.backbone(torch.cat(views[:2]))).chunk(2)
        inv, var, cov = self.criterion.terms(gather(z1), gather(z2))  # statistics of the global batch
        logs = {"invariance": float(inv.detach()), "variance": float(var.detach()), "covariance": float(cov.detach())}
        return self.criterion.weighted(inv, var, cov), logs
