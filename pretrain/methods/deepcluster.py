"""DeepCluster (Caron et al. 2018): k-means on the whole dataset's features each epoch; the cluster ids are the
labels a classifier head learns from, which trains the backbone.

Before epochs 0, `recluster_every`, 2 x `recluster_every`, ... (`start_epoch`, through the trainer's data pass:
centre crops, eval mode) the backbone's features of every training image are PCA-whitened to `pca_dim`,
L2-normalised and clustered by k-means (pretrain/methods/clustering.py, with the paper's empty-cluster fix); the
classifier is re-initialised, since cluster ids mean nothing from one clustering to the next. The paper
clusters every epoch of ImageNet (thousands of steps); on a small dataset `recluster_every` gives the
classifier as many steps to learn each clustering. Training: one augmented view per image, a `hidden_dim` MLP
then the classifier over `clusters`, cross-entropy with the image's cluster weighted by 1 / cluster size (the
paper samples uniformly over clusters; weights do the same in expectation without a special sampler).
The labels, their weights and the epoch they were made for are buffers: a resumed run continues with
them. Under torchrun every process clusters the same gathered features with the same seed (replicated).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.ground.heads import ProjectionHead
from pretrain.methods.base import Method
from pretrain.methods.clustering import balance_weights, kmeans, pca_whiten
from pretrain.methods.losses import pseudo_label_loss
from pretrain.methods.recipe import Recipe


class DeepCluster(Method):
    name = "deepcluster"
    default_recipe = Recipe(method_args={"clusters": 100, "recluster_every": 5}, transform_args={"views": 1},
                            source="SimCLR's optimiser, 100 clusters, k-means every 5 epochs, one view "
                                   "(docs/benchmarks/learning.md)")
    paper_recipe = Recipe("sgd", 0.05, 1e-5, transform_args={"views": 1},
                          source="Caron et al. 2018, sec. 4 (k = 10000)")
    needs = ("index",)

    def __init__(self, backbone: nn.Module, feature_dim: int, *, num_images: int, clusters: int = 10000,
                 pca_dim: int = 256, kmeans_iterations: int = 20, hidden_dim: int = 2048, recluster_every: int = 1,
                 seed: int = 0):
        super().__init__(backbone, feature_dim)
        if not 2 <= clusters <= num_images or recluster_every < 1:
            raise ValueError(f"clusters must be between 2 and the {num_images} training images and recluster_every "
                             f">= 1 (got {clusters}, {recluster_every})")
        self.head = ProjectionHead(feature_dim, hidden_dim, hidden_dim, layers=2)
        self.classifier = nn.Linear(hidden_dim, clusters)
        self.clusters, self.pca_dim, self.iterations, self.seed = clusters, pca_dim, kmeans_iterations, seed
        self.recluster_every = recluster_every
        self.register_buffer("labels", torch.zeros(num_images, dtype=torch.long))
        self.register_buffer("weights", torch.ones(clusters))
        self.register_buffer("labelled_epoch", torch.tensor(-1))

    def start_epoch(self, epoch: int, data_pass) -> dict[str, float]:
        if epoch % self.recluster_every or int(self.labelled_epoch) == epoch:  # a resumed epoch keeps its labels
            return {}
        feats, ok = data_pass(self.backbone, desc=f"k-means, epoch {epoch + 1}", modules=(self.backbone,))
        x = pca_whiten(feats[ok], self.pca_dim)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        _, labels, fixed = kmeans(x, self.clusters, self.iterations, generator)
        full = torch.full((len(ok),), -1, dtype=torch.long)  # undecodable images: no label, no loss
        full[ok] = labels
        self.labels.copy_(full.to(self.labels.device))
        self.weights.copy_(balance_weights(labels, self.clusters).to(self.weights.device))
        self.labelled_epoch.fill_(epoch)
        with torch.no_grad():  # new clusters: a new classifier (same tensors, so the optimizer keeps them)
            self.classifier.reset_parameters()
        return {"empty_clusters_fixed": float(fixed)}

    def forward(self, views: list[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.classifier(F.relu(self.head(self.backbone(views[0]))))
        return pseudo_label_loss(logits, self.labels[index], self.weights), {}
