"""Projection and prediction heads (MLPs on top of backbone features)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Sequential):
    """`layers` linear layers; every layer but the last is followed by BatchNorm and ReLU.

    SimCLR uses 2 layers (hidden = feature dim), SimCLRv2 3; BYOL/SimSiam predictors are 2-layer heads too.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, last_bn: bool = False):
        if layers < 1:
            raise ValueError(f"a projection head needs at least one layer (got {layers})")
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
        blocks: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-2], dims[1:-1]):
            blocks += [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        blocks.append(nn.Linear(dims[-2], dims[-1], bias=not last_bn))
        if last_bn:  # SimSiam's projector ends in a BatchNorm without learnable scale and shift (its paper's code)
            blocks.append(nn.BatchNorm1d(dims[-1], affine=False))
        super().__init__(*blocks)


class DINOHead(nn.Module):
    """DINO's head (Caron et al. 2021): a GELU MLP of `mlp_layers` linear layers (3 in the paper) to a
    bottleneck, L2-normalised, then a linear layer onto `out_dim` prototypes whose weight rows are normalised
    (weight norm with the gain fixed at 1)."""

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 batch_norm: bool = False, mlp_layers: int = 3):
        super().__init__()
        if mlp_layers < 1:
            raise ValueError(f"DINO head: mlp_layers must be >= 1 (got {mlp_layers})")

        def hidden(d_in: int) -> list[nn.Module]:  # DINO's ResNet-50 runs put BatchNorm in the MLP
            return [nn.Linear(d_in, hidden_dim)] + ([nn.BatchNorm1d(hidden_dim)] if batch_norm else []) + [nn.GELU()]

        widths = [in_dim] + [hidden_dim] * (mlp_layers - 1)
        blocks = [m for d_in in widths[:-1] for m in hidden(d_in)]
        self.mlp = nn.Sequential(*blocks, nn.Linear(widths[-1], bottleneck_dim))
        self.last = nn.Linear(bottleneck_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, freeze_last: bool = False) -> torch.Tensor:
        weight = self.last.weight.detach() if freeze_last else self.last.weight
        return F.linear(F.normalize(self.mlp(x), dim=-1), F.normalize(weight, dim=1))


class Neck(nn.Sequential):
    """Linear + BatchNorm + ReLU blocks after the pooled features: the part of a projection head that is
    kept for deployment (SimCLRv2 probes and fine-tunes from its middle head layer)."""

    def __init__(self, in_dim: int, widths: list[int]):
        blocks: list[nn.Module] = []
        for d_in, d_out in zip([in_dim, *widths[:-1]], widths):
            blocks += [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        super().__init__(*blocks)


class WithNeck(nn.Module):
    """A backbone followed by its neck: the deployed embedding network when a method keeps head layers."""

    def __init__(self, backbone: nn.Module, neck: Neck):
        super().__init__()
        self.backbone, self.neck = backbone, neck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(x))
