"""Contrastive predictive coding on an image (van den Oord et al. 2018; Henaff et al. 2019, CPC v2).

Views (transform `patchgrid`): one crop cut into grid x grid half-overlapping patches (pretrain/views/ops.py:
PatchGrid). The one-device default is 2 x 2 patches resized to the image size, each with its own colour
(CPC v2's per-patch augmentation; with one colour for the crop, rows can be matched by their colour cast).
Every patch goes through the backbone on its own, giving a grid of codes z; a projection to
`code_dim` (CPC v2 scores the encoder's own output; with a ResNet's 512-d pooled features a linear map
makes the dot products trainable at a sane scale). A context network that sees only the rows above and at
row i (masked convolutions: a `rows` x 3 kernel padded at the top only, `context_layers` residual blocks of
width `hidden_dim`) summarises them into c_i; for k = 1..`steps` a linear map W_k of c_i predicts the code
k rows below in the same column, scored by InfoNCE against every other code of the (global) batch
(`cpc_loss`; the paper's dot product, or cosine / `temperature` when it is > 0). Downstream, the backbone
encodes whole images as usual.

CPC v2 replaces the encoder's batch norm with layer norm, because batch statistics over patches of the same
batch can leak which patches belong together; the backbone here is any timm/torchvision network and keeps
its own normalisation (the predictions are over rows of the same image, so the leak is a small one).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pretrain.ground.distributed import gather
from pretrain.methods.base import Method
from pretrain.methods.losses import cpc_loss
from pretrain.methods.recipe import Recipe
from pretrain.views.ops import patches_of


class RowCausalConv(nn.Module):
    """A convolution whose output at row i sees input rows i - rows + 1 .. i only (all nearby columns)."""

    def __init__(self, dim: int, rows: int = 2):
        super().__init__()
        self.rows = rows
        self.conv = nn.Conv2d(dim, dim, (rows, 3), padding=(0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 0, self.rows - 1, 0)))


class CPC(Method):
    name = "cpc"
    default_views = "patchgrid"
    default_recipe = Recipe(method_args={"grid": 2, "steps": 1},
                            transform_args={"grid": 2, "patch_size": -1, "patch_colour": True},
                            source="SimCLR's optimiser, 2 x 2 patches at the image size, a colour per patch "
                                   "(docs/benchmarks/learning.md)")
    paper_recipe = Recipe("adamw", 2e-4, 0.0, source="van den Oord et al. 2018, sec. 3.2 (Adam; its 7 x 7 grid of "
                                                      "64 px patches: transform_args grid=7 at 256 px)")
    view_options = ("grid",)  # must equal the patch-grid views' own (the trainer checks)
    couples_batch = True

    def __init__(self, backbone: nn.Module, feature_dim: int, *, grid: int = 3, steps: int = 2, code_dim: int = 256,
                 hidden_dim: int = 256, context_layers: int = 2, rows: int = 2, temperature: float = 0.0):
        super().__init__(backbone, feature_dim)
        if not 1 <= steps < grid:
            raise ValueError(f"steps (rows predicted ahead) must be in 1..grid-1 (got {steps} with grid {grid})")
        if context_layers < 1 or rows < 1:
            raise ValueError(f"context_layers and rows must be >= 1 (got {context_layers}, {rows})")
        self.grid, self.steps, self.temperature = grid, steps, temperature
        self.code = nn.Linear(feature_dim, code_dim)
        self.context_in = nn.Conv2d(code_dim, hidden_dim, 1)
        self.context = nn.ModuleList(RowCausalConv(hidden_dim, rows) for _ in range(context_layers))
        self.predict = nn.ModuleList(nn.Conv2d(hidden_dim, code_dim, 1) for _ in range(steps))

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        b, g = views[0].shape[0], self.grid
        z = self.code(self.backbone(patches_of(views[0], g))).reshape(b, g, g, -1)  # (B, row, col, D)
        c = self.context_in(z.permute(0, 3, 1, 2))
        for layer in self.context:
            c = c + layer(F.relu(c))
        c = F.relu(c)
        predictions = [gather(head(c[:, :, :g - k]).permute(0, 2, 3, 1)) for k, head in enumerate(self.predict, 1)]
        return cpc_loss(gather(z), predictions, self.temperature), {}
