"""DrLIM (Hadsell, Chopra & LeCun 2006) as an SSL method: the margin contrastive loss on pairs of views.

Positives are the two views of an image, negatives the views of the other images in the batch.
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain.ground.distributed import gather
from pretrain.ground.heads import ProjectionHead
from pretrain.methods.base import Method
from pretrain.methods.losses import drlim_loss


class DrLIM(Method):
    name = "drlim"
    couples_batch = True

    def __init__(self, backbone: nn.Module, feature_dim: int, margin: float = 1.0, hidden_dim: int | None = None,
                 out_dim: int = 128):
        super().__init__(backbone, feature_dim)
        if margin <= 0:
            raise ValueError(f"margin must be positive (got {margin})")
        self.projector = ProjectionHead(feature_dim, hidden_dim or feature_dim, out_dim, layers=2)
        self.margin = margin

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        z1, z2 = self.projector(self.backbone(torch.cat(views[:2]))).chunk(2)
        return drlim_loss(gather(z1), gather(z2), self.margin), {}  # negatives from every process
