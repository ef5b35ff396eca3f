"""SwAV (Caron et al. 2020): online clustering; each view predicts the other views' cluster codes.

Codes come from Sinkhorn-Knopp over the batch (equal share per prototype, so no collapse); the
prototypes are L2-normalised before every step and frozen for the first `freeze_prototypes_epochs`.
With small batches, a queue of past global-view embeddings (from `queue_start_epoch`) joins the batch
in Sinkhorn so the equipartition is over enough samples. Views: 2 global crops, then local crops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.ground.heads import ProjectionHead
from pretrain.methods.base import Method, encode_views
from pretrain.methods.losses import sinkhorn, swapped_prediction
from pretrain.methods.recipe import Recipe, paper

GLOBAL_VIEWS = 2


class SwAV(Method):
    name = "swav"
    default_views = "multicrop"
    default_recipe = Recipe("sgd", 0.12, 5e-4, transform_args={"local_views": 0}, method_args={"prototypes": 512},
                            source="SGD with weight decay 5e-4, 2 global crops, 512 prototypes, no queue: +0.115 over "
                                   "random init in 30 min at batch 64 on one CPU core (docs/benchmarks/learning.md)")
    paper_recipe = paper("lars", 0.3, 1e-6, "Caron et al. 2020, sec. A.1")
    couples_batch = True  # Sinkhorn's equal share per prototype is over the batch
    skips_parameters = True  # frozen prototypes

    def __init__(self, backbone: nn.Module, feature_dim: int, prototypes: int = 3000, temperature: float = 0.1,
                 epsilon: float = 0.05, sinkhorn_iterations: int = 3, proj_hidden_dim: int = 2048,
                 proj_dim: int = 128, freeze_prototypes_epochs: float = 1.0, queue_length: int = 0,
                 queue_start_epoch: float = 15.0):
        super().__init__(backbone, feature_dim)
        self.projector = ProjectionHead(feature_dim, proj_hidden_dim, proj_dim, layers=2)
        self.prototypes = nn.Linear(proj_dim, prototypes, bias=False)
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, sinkhorn_iterations
        self.freeze_prototypes_epochs, self.queue_start_epoch = freeze_prototypes_epochs, queue_start_epoch
        self.register_buffer("queue", torch.zeros(GLOBAL_VIEWS, queue_length, proj_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.backbone(x)).float(), dim=1)

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.training:
            with torch.no_grad():
                self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        weight = self.prototypes.weight
        if self.progress.epoch < self.freeze_prototypes_epochs:
            weight = weight.detach()  # no gradient: the optimizer leaves the prototypes as they are
        z = encode_views(self._embed, views)
        scores = [e @ weight.T for e in z]
        codes = [self._codes(scores[i], z[i].detach(), i) for i in range(GLOBAL_VIEWS)]
        if self.training and self.queue.shape[1]:
            self._push(z[:GLOBAL_VIEWS])
        return swapped_prediction(scores, codes, self.temperature), {}

    @torch.no_grad()
    def _codes(self, scores: torch.Tensor, z: torch.Tensor, view: int) -> torch.Tensor:
        n = scores.shape[0]
        use_queue = self.queue.shape[1] and self.progress.epoch >= self.queue_start_epoch
        if use_queue and int(self.queue_filled) >= self.queue.shape[1]:
            scores = torch.cat([scores, self.queue[view] @ self.prototypes.weight.T])
        return sinkhorn(scores.detach(), self.epsilon, self.iterations)[:n]

    @torch.no_grad()
    def _push(self, globals_: list[torch.Tensor]) -> None:
        """Newest embeddings in front, oldest fall off the end."""
        n = min(globals_[0].shape[0], self.queue.shape[1])
        self.queue[:, n:] = self.queue[:, :-n].clone()
        for view, e in enumerate(globals_):
            self.queue[view, :n] = e[:n].detach()
        self.queue_filled.fill_(min(int(self.queue_filled) + n, self.queue.shape[1]))
