"""SimCLR (Chen et al. 2020): two augmented views, a 2-layer projection head, NT-Xent.

`bank_negatives=N` switches on a memory bank (Wu et al. 2018; seed 003's second source of negatives, beside a
large batch and a momentum encoder): N entries of other images join each anchor's negatives; the bank is
replicated under torchrun (pretrain/methods/memorybank.py).
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain.ground.distributed import gather
from pretrain.ground.heads import ProjectionHead
from pretrain.methods.base import Method
from pretrain.methods.losses import NTXentLoss
from pretrain.methods.memorybank import BankNegatives
from pretrain.methods.recipe import LARS_SIMCLR


class SimCLR(Method):
    name = "simclr"
    paper_recipe = LARS_SIMCLR
    couples_batch = True

    def __init__(self, backbone: nn.Module, feature_dim: int, temperature: float = 0.2,
                 hidden_dim: int | None = None, out_dim: int = 128, bank_negatives: int = 0, bank_momentum: float = 0.5,
                 num_images: int | None = None):
        super().__init__(backbone, feature_dim)
        # bank_negatives > 0: that many memory-bank entries join the batch's negatives (pretrain/methods/memorybank.py)
        self.bank = BankNegatives(num_images, out_dim, bank_negatives, bank_momentum) if bank_negatives else None
        self.needs = ("index",) if bank_negatives else ()
        self.projector = ProjectionHead(feature_dim, hidden_dim or feature_dim, out_dim, layers=2)
        self.criterion = NTXentLoss(temperature)

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        # Both views go through the backbone as one batch: one call, batch-norm statistics over 2N.
        z1, z2 = self.projector(self.backbone(torch.cat(views[:2]))).chunk(2)
        z1, z2 = gather(z1), gather(z2)  # negatives from every process
        banked = self.bank.negatives(gather(index), z1, z2) if self.bank is not None else None
        return self.criterion(z1, z2, banked), {}
