"""VICRegL (Bardes, Ponce & LeCun 2022): VICReg on global embeddings plus a local VICReg on feature maps.

Feature-map vectors of two views are matched by location in the source image (the views' crop boxes
come with the batch: the `vicregl` transform provides them) and by feature nearest neighbour; the
loss is alpha * global + (1 - alpha) * local. Views: 2 global crops, then local crops.
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain.ground.backbones import FeatureMapTap
from pretrain.ground.distributed import gather
from pretrain.ground.heads import ProjectionHead
from pretrain.methods.base import Method
from pretrain.methods.losses import vicregl_global_terms, vicregl_local_terms
from pretrain.methods.recipe import SMALL_PROJECTOR, Recipe, paper

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
    """The authors' objective (their main_vicregl.py): alpha * (global invariance + variance + covariance) +
    (1 - alpha) * (local ...), each term weighted by lambda_, mu, nu. The global terms cover every view (the
    invariance pairs each global view with every other view); the local terms average over the same pairs of
    feature maps. (The authors' loop over those pairs overwrites instead of summing, so only its last pair
    counts, divided by the number of pairs; here every pair counts, which is what the division intends.)
    `matches_ab` / `matches_ba`: location matches kept from the first view of a pair to the second and back.
    """
    name = "vicregl"
    default_views = "vicregl"
    default_recipe = Recipe(method_args=SMALL_PROJECTOR.method_args, transform_args={"local_views": 0})
    paper_recipe = paper("lars", 0.3, 1e-6, "Bardes et al. 2022 (VICRegL), sec. 4")

    needs = ("boxes",)
    couples_batch = True

    def __init__(self, backbone: nn.Module, feature_dim: int, alpha: float = 0.75, proj_dim: int = 8192,
                 proj_layers: int = 3, local_proj_dim: int = 512, matches_ab: int = 20, matches_ba: int = 4,
                 lambda_: float = 25.0, mu: float = 25.0, nu: float = 1.0):
        super().__init__(backbone, feature_dim)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1] (got {alpha})")
        self.tap = FeatureMapTap(backbone)
        self.projector = ProjectionHead(feature_dim, proj_dim, proj_dim, layers=proj_layers)
        # Pooling keeps the channel count, so the map's vectors have the feature dimension too.
        self.local_projector = ProjectionHead(feature_dim, local_proj_dim, local_proj_dim, layers=2)
        self.alpha, self.matches = alpha, (matches_ab, matches_ba)
        self.weights = (lambda_, mu, nu)

    def _encode(self, x: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected pooled features, projected map vectors [B, h*w, D] and their source positions [B, h*w, 2]."""
        pooled = self.backbone(x)
        fmap = self.tap.map
        n, c, h, w = fmap.shape
        z = self.local_projector(fmap.flatten(2).transpose(1, 2).reshape(-1, c)).reshape(n, h * w, -1)
        return self.projector(pooled), z, cell_positions(boxes, h, w)

    def forward(self, views: list[torch.Tensor], boxes: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        b = views[0].shape[0]
        embeddings, maps, positions = [], [], []
        groups = [(0, GLOBAL_VIEWS)] + ([(GLOBAL_VIEWS, len(views))] if len(views) > GLOBAL_VIEWS else [])
        for start, end in groups:  # one forward per crop size
            e, z, p = self._encode(torch.cat(views[start:end]), boxes[:, start:end].transpose(0, 1).flatten(0, 1))
            embeddings += e.split(b)
            maps += z.split(b)
            positions += p.split(b)
        # statistics of the global batch under torchrun (identities in one process)
        embeddings, maps, positions = ([gather(t) for t in ts] for ts in (embeddings, maps, positions))
        g_terms = vicregl_global_terms(embeddings, GLOBAL_VIEWS)
        l_terms, pairs = [0.0, 0.0, 0.0], 0
        for i in range(GLOBAL_VIEWS):
            for j in range(len(views)):
                if j != i:
                    for t, value in enumerate(vicregl_local_terms(maps[i], maps[j], positions[i], positions[j],
                                                                  self.matches)):
                        l_terms[t] = l_terms[t] + value
                    pairs += 1
        l_terms = [t / pairs for t in l_terms]
        global_loss = sum(w * t for w, t in zip(self.weights, g_terms))
        local_loss = sum(w * t for w, t in zip(self.weights, l_terms))
        logs = {name: float(t.detach()) for name, t in zip(("invariance", "variance", "covariance"), g_terms)}
        logs["local_loss"] = float(local_loss.detach())
        return self.alpha * global_loss + (1 - self.alpha) * local_loss, logs
