"""Self-supervised losses as small, pure modules: no model code, each checked against a plain reference."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NTXentLoss(nn.Module):
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020).

    For 2N embeddings of N images (two views each), the positive of each embedding is the other
    view of its image and the 2N-2 embeddings of other images are its negatives:
    l(i, j) = -log exp(s_ij / t) / sum_{k != i} exp(s_ik / t), with s the cosine similarity,
    averaged over all 2N anchors. Symmetric in the two views.
    """

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive (got {temperature})")
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        logits = z @ z.T / self.temperature
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(logits, targets)
