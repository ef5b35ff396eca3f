"""Collapse monitor: is the backbone still spreading images apart, or mapping them all to one point?

Two statistics of a batch of backbone embeddings, logged every step for every method:
- `emb_std`: the mean per-dimension std of the L2-normalised embeddings, scaled by sqrt(dim) so that
  1 means "spread like random directions" and 0 means complete collapse (SimSiam paper, section 4).
- `eff_rank`: the effective rank (Roy & Vetterli 2007), exp of the entropy of the normalised singular
  values of the centred batch; it falls towards 1 under dimensional collapse.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn


def _std(z: torch.Tensor) -> torch.Tensor:
    z = F.normalize(z.detach().float().flatten(1), dim=1)
    return z.std(dim=0).mean() * z.shape[1] ** 0.5


def _rank(z: torch.Tensor) -> torch.Tensor:
    z = z.detach().double().flatten(1)  # float64: the Gram squares the condition number
    z = z - z.mean(dim=0)
    gram = z @ z.T if z.shape[0] <= z.shape[1] else z.T @ z  # the smaller one: same non-zero spectrum, faster
    s = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    p = s / s.sum().clamp_min(1e-12)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


def embedding_std(z: torch.Tensor) -> float:
    """Mean per-dimension std of the L2-normalised rows, times sqrt(dim): ~1 for spread-out, 0 for collapsed."""
    return float(_std(z))


def effective_rank(z: torch.Tensor) -> float:
    """exp(entropy of the singular-value distribution) of the centred batch: 1 (a line) .. min(batch, dim)."""
    return float(_rank(z))


class CollapseMonitor:
    """Watches the first backbone output of each step (a forward hook, so methods need no code for it).

    `stats()` returns this step's `emb_std`, and `eff_rank` every `rank_every` steps (`capture()` the same
without reading them from the device, for a trainer that reads them every few steps) (an eigen-
    decomposition: cheap, but not free on a CPU); when `emb_std` stays below `threshold` for `patience`
    consecutive steps, it warns once: a collapsed run wastes the rest of its compute.
    """

    def __init__(self, backbone: nn.Module, threshold: float = 0.05, patience: int = 20, rank_every: int = 10):
        self.threshold, self.patience, self.rank_every = threshold, patience, rank_every
        self._batch: torch.Tensor | None = None
        self._low_steps = 0
        self._warned = False
        self._handle = backbone.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self._batch is None and module.training:
            self._batch = output.detach()

    def capture(self, step: int) -> dict[str, torch.Tensor]:
        """This step's statistics as 0-d tensors on the device, not yet read (no host sync); pass the read
        `emb_std` to `observe`. Empty if the backbone did not run since the last call (1-based `step`)."""
        if self._batch is None:
            return {}
        batch, self._batch = self._batch, None
        stats = {"emb_std": _std(batch)}
        if (step - 1) % self.rank_every == 0:
            stats["eff_rank"] = _rank(batch)
        return stats

    def observe(self, step: int, std: float) -> None:
        """Count a step's read `emb_std`; warn once when it stays below the threshold for `patience` steps."""
        self._low_steps = self._low_steps + 1 if std < self.threshold else 0
        if self._low_steps >= self.patience and not self._warned:
            self._warned = True
            warnings.warn(f"step {step}: the embeddings are collapsing (emb_std {std:.3f} below {self.threshold} "
                          f"for {self.patience} steps; 1 = spread out, 0 = one point): lower --lr, or check the "
                          f"method's hyper-parameters and views", stacklevel=3)

    def stats(self, step: int) -> dict[str, float]:
        """`capture` and `observe` at once: the statistics of the batch captured since the last call, read."""
        stats = {k: float(v) for k, v in self.capture(step).items()}
        if stats:
            self.observe(step, stats["emb_std"])
        return stats

    def remove(self) -> None:
        self._handle.remove()
