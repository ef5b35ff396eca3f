"""SimCLR (Chen et al. 2020): two augmented views, a 2-layer projection head, NT-Xent."""
from __future__ import annotations

import torch
from torch import nn

from pretrain.distributed import gather
from pretrain.heads import ProjectionHead
from pretrain.losses import NTXentLoss
from pretrain.methods.base import Method


class SimCLR(Method):
    couples_batch = True

    def __init__(self, backbone: nn.Module, feature_dim: int, temperature: float = 0.2,
                 hidden_dim: int | None = None, out_dim: int = 128):
        super().__init__(backbone, feature_dim)
        self.projector = ProjectionHead(feature_dim, hidden_dim or feature_dim, out_dim, layers=2)
        self.criterion = NTXentLoss(temperature)

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        # Both views go through the backbone as one batch: one call, batch-norm statistics over 2N.
        z1, z2 = self.projector(self.backbone(torch.cat(views[:2]))).chunk(2)
        return self.criterion(gather(z1), gather(z2)), {}  # negatives from every process
