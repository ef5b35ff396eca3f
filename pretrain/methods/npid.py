"""Instance discrimination with a memory bank (Wu et al. 2018, NPID): every image is its own class.

One view per image is projected to `proj_dim` and L2-normalised; its positive is the image's own entry of
the memory bank (pretrain/methods/memorybank.py: a moving average of the embeddings the image got, momentum
`bank_momentum`), its negatives `negatives` entries of other images drawn at random. The loss is the
softmax over positive and negatives at temperature t (the paper's NCE approximates this softmax; with a few
thousand negatives it is computed exactly). After the step the batch's embeddings move their bank entries.
Under torchrun the batch's indices and embeddings are gathered, so every process updates the same bank.
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain.ground.distributed import gather
from pretrain.ground.heads import ProjectionHead
from pretrain.methods.base import Method
from pretrain.methods.losses import info_nce
from pretrain.methods.memorybank import MemoryBank
from pretrain.methods.recipe import Recipe


class NPID(Method):
    name = "npid"
    default_recipe = Recipe(transform_args={"views": 1},
                            source="SimCLR's optimiser, one view: +0.145 over random init in 10 min "
                                   "(docs/benchmarks/learning.md)")
    paper_recipe = Recipe("sgd", 0.03, 5e-4, transform_args={"views": 1}, source="Wu et al. 2018, sec. 4")
    needs = ("index",)

    def __init__(self, backbone: nn.Module, feature_dim: int, *, num_images: int, temperature: float = 0.07,
                 negatives: int = 4096, bank_momentum: float = 0.5, proj_hidden_dim: int = 0, proj_dim: int = 128):
        super().__init__(backbone, feature_dim)
        # the paper's head is one linear layer; proj_hidden_dim > 0 makes it SimCLR's 2-layer MLP
        self.projector = ProjectionHead(feature_dim, proj_hidden_dim, proj_dim, layers=2 if proj_hidden_dim else 1)
        self.bank = MemoryBank(num_images, proj_dim, bank_momentum)
        self.temperature, self.negatives = temperature, negatives

    def forward(self, views: list[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        z = self.projector(self.backbone(views[0]))
        index = gather(index)
        z_all = gather(z)
        loss = info_nce(z_all, self.bank.vectors[index], self.bank.sample(self.negatives, exclude=index),
                        self.temperature)
        if self.training:
            self.bank.update(index, z_all)
        return loss, {}
