"""PIRL (Misra & van der Maaten 2020): the representation of an image should not change under a jigsaw.

Views (transform `jigsaw`): an augmented image and a jigsaw of it (grid x grid shuffled cells,
pretrain/views/ops.py). The image goes through backbone and head f; each cell goes through the backbone
on its own, the cells' features are concatenated in their shuffled order and projected by g. Both are
contrasted (softmax over positive and `negatives` bank entries at temperature t) against the image's
memory-bank entry, a moving average of f (pretrain/methods/memorybank.py), with weight `lam` on the jigsaw term
and 1 - lam on the image term (the paper's eq. 5 with lam = 0.5). The bank is replicated under torchrun.
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain.ground.distributed import gather
from pretrain.methods.base import Method
from pretrain.methods.losses import pirl_loss
from pretrain.methods.memorybank import MemoryBank
from pretrain.methods.recipe import Recipe, paper
from pretrain.views.ops import patches_of


class PIRL(Method):
    name = "pirl"
    default_views = "jigsaw"
    default_recipe = Recipe(method_args={"grid": 2}, transform_args={"grid": 2},
                            source="SimCLR's optimiser, a 2 x 2 jigsaw (docs/benchmarks/learning.md)")
    paper_recipe = paper("sgd", 0.12, 1e-4, "Misra & van der Maaten 2020, sec. 4.1", negatives=32000)
    needs = ("index",)
    view_options = ("grid",)  # must equal the jigsaw views' own (the trainer checks)

    def __init__(self, backbone: nn.Module, feature_dim: int, *, num_images: int, temperature: float = 0.07,
                 negatives: int = 4096, bank_momentum: float = 0.5, lam: float = 0.5, grid: int = 3,
                 proj_dim: int = 128):
        super().__init__(backbone, feature_dim)
        if not 0 <= lam <= 1:
            raise ValueError(f"lam weighs the two terms: it must be in [0, 1] (got {lam})")
        self.f_head = nn.Linear(feature_dim, proj_dim)
        self.cell_head = nn.Linear(feature_dim, proj_dim)
        self.g_head = nn.Linear(grid * grid * proj_dim, proj_dim)
        self.bank = MemoryBank(num_images, proj_dim, bank_momentum)
        self.temperature, self.negatives, self.lam, self.grid = temperature, negatives, lam, grid

    def forward(self, views: list[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        image, puzzle = views[0], views[1]
        f = self.f_head(self.backbone(image))
        cells = self.cell_head(self.backbone(patches_of(puzzle, self.grid)))
        g = self.g_head(cells.reshape(image.shape[0], -1))  # the cells in their shuffled order
        index = gather(index)
        f, g = gather(f), gather(g)
        negatives = self.bank.sample(self.negatives, exclude=index)
        loss = pirl_loss(f, g, self.bank.vectors[index], negatives, self.temperature, self.lam)
        if self.training:
            self.bank.update(index, f)
        return loss, {}
