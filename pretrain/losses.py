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


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, stopgrad(z)), averaged over the batch (Chen & He 2021)."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised MSE ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), target z without gradient (Grill et al. 2020)."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins (Zbontar et al. 2021): the cross-correlation C of the batch-normalised embeddings of
    the two views should be the identity: sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2."""

    def __init__(self, lambd: float = 5e-3, eps: float = 1e-5):
        super().__init__()
        self.lambd, self.eps = lambd, eps

    def _standardize(self, z: torch.Tensor) -> torch.Tensor:  # BatchNorm1d(affine=False) in training mode
        z = z.float()
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + self.eps)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        c = self._standardize(z1).T @ self._standardize(z2) / z1.shape[0]
        return (torch.diagonal(c) - 1).pow(2).sum() + self.lambd * _off_diagonal(c).pow(2).sum()


class VICRegLoss(nn.Module):
    """VICReg (Bardes et al. 2022): lambda * invariance + mu * variance + nu * covariance.

    invariance: MSE between the two embeddings; variance: mean over dimensions of relu(gamma - std),
    std = sqrt(var + eps), averaged over both views; covariance: sum of squared off-diagonal entries
    of each view's covariance matrix, divided by the dimension. `terms` returns the three unweighted.
    """

    def __init__(self, lambda_: float = 25.0, mu: float = 25.0, nu: float = 1.0, gamma: float = 1.0,
                 eps: float = 1e-4):
        super().__init__()
        self.lambda_, self.mu, self.nu, self.gamma, self.eps = lambda_, mu, nu, gamma, eps

    def terms(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z1, z2 = z1.float(), z2.float()
        invariance = F.mse_loss(z1, z2)
        variance = covariance = 0.0
        for z in (z1, z2):
            z = z - z.mean(0)
            std = torch.sqrt(z.var(0) + self.eps)
            variance = variance + F.relu(self.gamma - std).mean() / 2
            cov = z.T @ z / (z.shape[0] - 1)
            covariance = covariance + _off_diagonal(cov).pow(2).sum() / z.shape[1]
        return invariance, variance, covariance

    def weighted(self, invariance: torch.Tensor, variance: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
        return self.lambda_ * invariance + self.mu * variance + self.nu * covariance

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return self.weighted(*self.terms(z1, z2))
