"""SeLA, self-labelling (Asano et al. 2020): labels that split the dataset into equal-size clusters, found by
optimal transport on the network's own predictions, alternate with training a classifier on them.

Before epochs 0, `label_every`, 2 x `label_every`, ... (`start_epoch`, the trainer's data pass: centre crops,
eval mode), the classifier's logits on every training image become an assignment to `clusters` equal-size
clusters by Sinkhorn-Knopp (pretrain/methods/clustering.py: sela_assign, sharpness `lam`), then each image's label.
Training: one augmented view, an MLP head and the classifier, cross-entropy with the labels. Labels are
buffers (a resumed run keeps them); under torchrun every process labels the same gathered logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.ground.heads import ProjectionHead
from pretrain.methods.base import Method
from pretrain.methods.clustering import sela_assign
from pretrain.methods.losses import pseudo_label_loss
from pretrain.methods.recipe import Recipe


class SeLA(Method):
    name = "sela"
    default_recipe = Recipe(method_args={"clusters": 128, "label_every": 5}, transform_args={"views": 1},
                            source="SimCLR's optimiser, 128 clusters, labels every 5 epochs, one view "
                                   "(docs/benchmarks/learning.md)")
    paper_recipe = Recipe("sgd", 0.05, 1e-5, transform_args={"views": 1},
                          source="Asano et al. 2020, sec. 4 (K = 3000, one head)")
    needs = ("index",)

    def __init__(self, backbone: nn.Module, feature_dim: int, *, num_images: int, clusters: int = 3000,
                 lam: float = 25.0, sinkhorn_iterations: int = 100, label_every: int = 1, hidden_dim: int = 2048,
                 seed: int = 0):
        super().__init__(backbone, feature_dim)
        if not 2 <= clusters <= num_images or label_every < 1:
            raise ValueError(f"clusters must be between 2 and the {num_images} training images and label_every "
                             f">= 1 (got {clusters}, {label_every})")
        self.head = ProjectionHead(feature_dim, hidden_dim, hidden_dim, layers=2)
        self.classifier = nn.Linear(hidden_dim, clusters)
        self.lam, self.iterations, self.label_every = lam, sinkhorn_iterations, label_every
        generator = torch.Generator().manual_seed(seed)  # before the first labelling: random equal-size labels
        self.register_buffer("labels", torch.randperm(num_images, generator=generator) % clusters)
        self.register_buffer("labelled_epoch", torch.tensor(-1))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.relu(self.head(self.backbone(x))))

    def start_epoch(self, epoch: int, data_pass) -> dict[str, float]:
        if epoch % self.label_every or int(self.labelled_epoch) == epoch:
            return {}
        logits, ok = data_pass(self._logits, desc=f"self-labelling, epoch {epoch + 1}",
                               modules=(self.backbone, self.head, self.classifier))
        labels = torch.full((len(ok),), -1, dtype=torch.long)
        labels[ok] = sela_assign(logits[ok], self.lam, self.iterations)
        changed = float((labels != self.labels.cpu()).float().mean())
        self.labels.copy_(labels.to(self.labels.device))
        self.labelled_epoch.fill_(epoch)
        return {"labels_changed": changed}

    def forward(self, views: list[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return pseudo_label_loss(self._logits(views[0]), self.labels[index]), {}
