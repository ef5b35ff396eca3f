"""VICRegL (Bardes, Ponce & LeCun 2022): VICReg on global embeddings plus a local VICReg on feature maps.

Feature-map vectors of two views are matched by location in the source image (the views' crop boxes
come with the batch: the `vicregl` transform provides them) and by feature nearest neighbour; the
loss is alpha * global + (1 - alpha) * local. Views: 2 global crops, then local crops.
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain.backbones import FeatureMapTap
from pretrain.distributed import gather
from pretrain.heads import ProjectionHead
from pretrain.losses import VICRegLoss, vicregl_local_loss
from pretrain.methods.base import Method

GLOBAL_VIEWS = 2


def cell_positions(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Source-image (x, y) of the centre of every cell of an h x w feature map, for boxes [B, 4] -> [B, h*w, 2].

    A box is (x0, y0, x1, y1) normalised to the source; a flipped view has x0 > x1, which this mapping
    x = x0 + u * (x1 - x0) handles as it is.
    """
    u = (torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5) / w
    v = (torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5) / h
    x = boxes[:, None, 0] + u[None] * (boxes[:, None, 2] - boxes[:, None, 0])  # [B, w]
    y = boxes[:, None, 1] + v[None] * (boxes[:, None, 3] - boxes[:, None, 1])  # [B, h]
    return torch.stack(torch.broadcast_tensors(x[:, None, :], y[:, :, None]), dim=-1).flatten(1, 2)


class VICRegL(Method):
    needs = ("boxes",)
    couples_batch = True

    def __init__(self, backbone: nn.Module, feature_dim: int, alpha: float = 0.75, proj_dim: int = 8192,
                 proj_layers: int = 3, local_proj_dim: int = 512, matches_global: int = 20,
                 matches_local: int = 4, lambda_: float = 25.0, mu: float = 25.0, nu: float = 1.0):
        super().__init__(backbone, feature_dim)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1] (got {alpha})")
        self.tap = FeatureMapTap(backbone)
        self.projector = ProjectionHead(feature_dim, proj_dim, proj_dim, layers=proj_layers)
        # Pooling keeps the channel count, so the map's vectors have the feature dimension too.
        self.local_projector = ProjectionHead(feature_dim, local_proj_dim, local_proj_dim, layers=2)
        self.alpha, self.matches_global, self.matches_local = alpha, matches_global, matches_local
        self.criterion = VICRegLoss(lambda_, mu, nu)

    def _local(self, x: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pooled features, projected map vectors [B, h*w, D] and their source positions [B, h*w, 2]."""
        pooled = self.backbone(x)
        fmap = self.tap.map
        n, c, h, w = fmap.shape
        z = self.local_projector(fmap.flatten(2).transpose(1, 2).reshape(-1, c)).reshape(n, h * w, -1)
        return pooled, z, cell_positions(boxes, h, w)

    def forward(self, views: list[torch.Tensor], boxes: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        b = views[0].shape[0]
        pooled, zg, pg = self._local(torch.cat(views[:GLOBAL_VIEWS]),
                                     boxes[:, :GLOBAL_VIEWS].transpose(0, 1).flatten(0, 1))
        z1, z2 = self.projector(pooled).chunk(2)
        inv, var, cov = self.criterion.terms(gather(z1), gather(z2))  # statistics of the global batch
        global_loss = self.criterion.weighted(inv, var, cov)
        (g1, g2), (p1, p2) = [gather(t) for t in zg.split(b)], [gather(t) for t in pg.split(b)]
        local_losses = [vicregl_local_loss(g1, g2, p1, p2, self.matches_global, self.criterion)]
        if len(views) > GLOBAL_VIEWS:
            _, zl, pl = self._local(torch.cat(views[GLOBAL_VIEWS:]),
                                    boxes[:, GLOBAL_VIEWS:].transpose(0, 1).flatten(0, 1))
            for zi, pi in zip(map(gather, zl.split(b)), map(gather, pl.split(b))):
                for zgi, pgi in ((g1, p1), (g2, p2)):
                    local_losses.append(vicregl_local_loss(zgi, zi, pgi, pi, self.matches_local, self.criterion))
        local_loss = sum(local_losses) / len(local_losses)
        logs = {"invariance": float(inv.detach()), "variance": float(var.detach()),
                "covariance": float(cov.detach()), "local_loss": float(local_loss.detach())}
        return self.alpha * global_loss + (1 - self.alpha) * local_loss, logs
