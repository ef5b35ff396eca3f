"""SimCLRv2 (Chen et al. 2020b): SimCLR with a deeper (3-layer) projection head whose first layer is kept.

Probing or fine-tuning from the middle of the head beats using the backbone output, so the model dir
stores backbone + first head layer (a "neck") as the embedding network. Distillation into a student
is `sslforge distill` (methods/distill.py). `bank_negatives=N` adds memory-bank negatives as in simclr.
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain.ground.distributed import gather
from pretrain.ground.heads import Neck, ProjectionHead, WithNeck
from pretrain.methods.base import Method
from pretrain.methods.losses import NTXentLoss
from pretrain.methods.memorybank import BankNegatives
from pretrain.methods.recipe import LARS_SIMCLR


class SimCLRv2(Method):
    name = "simclr2"
    paper_recipe = LARS_SIMCLR
    couples_batch = True

    def __init__(self, backbone: nn.Module, feature_dim: int, temperature: float = 0.2,
                 hidden_dim: int | None = None, out_dim: int = 128, head_layers: int = 3, keep_layers: int = 1,
                 bank_negatives: int = 0, bank_momentum: float = 0.5, num_images: int | None = None):
        super().__init__(backbone, feature_dim)
        # bank_negatives > 0: that many memory-bank entries join the batch's negatives (pretrain/methods/memorybank.py)
        self.bank = BankNegatives(num_images, out_dim, bank_negatives, bank_momentum) if bank_negatives else None
        self.needs = ("index",) if bank_negatives else ()
        if not 0 <= keep_layers < head_layers:
            raise ValueError(f"keep_layers must be in [0, head_layers) (got {keep_layers} of {head_layers})")
        hidden = hidden_dim or feature_dim
        self.neck = Neck(feature_dim, [hidden] * keep_layers)
        self.projector = ProjectionHead(hidden if keep_layers else feature_dim, hidden, out_dim,
                                        layers=head_layers - keep_layers)
        self.criterion = NTXentLoss(temperature)

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        z1, z2 = self.projector(self.neck(self.backbone(torch.cat(views[:2])))).chunk(2)
        z1, z2 = gather(z1), gather(z2)
        banked = self.bank.negatives(gather(index), z1, z2) if self.bank is not None else None
        return self.criterion(z1, z2, banked), {}

    def deployable(self) -> tuple[nn.Module, list[int]]:
        widths = [m.out_features for m in self.neck if isinstance(m, nn.Linear)]
        return (WithNeck(self.backbone, self.neck) if widths else self.backbone), widths
