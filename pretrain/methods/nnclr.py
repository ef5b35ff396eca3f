"""NNCLR (Dwibedi et al. 2021): nearest neighbours from a support set of past embeddings as the positives.

Each view's projection z is replaced by its nearest neighbour in a FIFO support set of projections of earlier
batches; that neighbour must pick out the other view's prediction p among the batch's (NT-Xent over the batch,
symmetric in the two views). The neighbour is drawn by cosine, carries no gradient, and the batch's projections
of view one are enqueued after the step. A 3-layer projector with batch norm and a 2-layer predictor as in the
paper; the support set is a buffer (pretrain/methods/queues.py), so a checkpoint holds it and resumes exactly.
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain.ground.distributed import gather
from pretrain.ground.heads import ProjectionHead
from pretrain.methods.base import Method
from pretrain.methods.losses import nnclr_loss
from pretrain.methods.queues import FeatureQueue
from pretrain.methods.recipe import Recipe, paper


class NNCLR(Method):
    name = "nnclr"
    default_recipe = Recipe(method_args={"queue_size": 4096, "temperature": 0.2},
                            source="SimCLR's optimiser and temperature, a 4096-row support set "
                                   "(docs/benchmarks/learning.md)")
    paper_recipe = paper("lars", 0.3, 1e-6, "Dwibedi et al. 2021, sec. 4 (batch 4096)")
    couples_batch = True

    def __init__(self, backbone: nn.Module, feature_dim: int, temperature: float = 0.1, queue_size: int = 98304,
                 proj_hidden_dim: int = 2048, proj_dim: int = 256, pred_hidden_dim: int = 4096):
        super().__init__(backbone, feature_dim)
        self.projector = ProjectionHead(feature_dim, proj_hidden_dim, proj_dim, layers=3, last_bn=True)
        self.predictor = ProjectionHead(proj_dim, pred_hidden_dim, proj_dim, layers=2)
        self.support = FeatureQueue(queue_size, proj_dim)
        self.temperature = temperature

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        z = self.projector(self.backbone(torch.cat(views[:2])))
        p1, p2 = self.predictor(z).chunk(2)
        z1, z2 = z.detach().chunk(2)
        z1, z2, p1, p2 = gather(z1), gather(z2), gather(p1), gather(p2)  # negatives from every process
        nn1, nn2 = self.support.nearest(z1), self.support.nearest(z2)
        loss = (nnclr_loss(nn1, p2, self.temperature) + nnclr_loss(nn2, p1, self.temperature)) / 2
        if self.training:
            self.support.enqueue(torch.nn.functional.normalize(z1.float(), dim=1))
        agree = (nn1 * torch.nn.functional.normalize(z1.float(), dim=1)).sum(dim=1).mean()
        return loss, {"nn_similarity": float(agree)}
