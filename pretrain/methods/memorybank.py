"""A memory bank (Wu et al. 2018): one L2-normalised embedding per training image, a moving average of the
embeddings the network gave that image, sampled as negatives for contrastive losses (NPID, PIRL).

    bank = MemoryBank(num_images, dim, momentum=0.5)
    positives = bank.vectors[indices]                 # the images' own entries (no gradient)
    negatives = bank.sample(n, exclude=indices)       # n random entries of other images
    bank.update(indices, new_embeddings)              # v <- normalise(m v + (1 - m) new), after the step

`BankNegatives` is the switch any contrastive method turns on (`bank_negatives=N` of simclr and simclr2): N
bank entries of other images join the batch's negatives, and the batch's views move their images' entries.

The entries are a buffer, so a checkpoint holds them and a resumed run continues exactly; the sampling draws
from torch's global generator, which the trainer seeds and checkpoints. Under torchrun every process applies
the same gathered update and draws with the same seed, so the bank is replicated (the same everywhere).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MemoryBank(nn.Module):
    def __init__(self, size: int, dim: int, momentum: float = 0.5):
        super().__init__()
        if size < 2:
            raise ValueError(f"a memory bank needs at least 2 images (got {size})")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory bank momentum must be in [0, 1) (got {momentum})")
        self.momentum = momentum
        self.register_buffer("vectors", F.normalize(torch.randn(size, dim), dim=1))

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @torch.no_grad()
    def update(self, indices: torch.Tensor, new: torch.Tensor) -> None:
        """Move the entries of `indices` towards `new` (momentum), renormalised. A repeated index takes its
        last row."""
        new = F.normalize(new.detach().float(), dim=1).to(self.vectors.dtype)
        mixed = self.momentum * self.vectors[indices] + (1 - self.momentum) * new
        self.vectors[indices] = F.normalize(mixed, dim=1)

    @torch.no_grad()
    def sample(self, count: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """`count` entries drawn uniformly (with replacement) from the images not in `exclude`."""
        n = len(self)
        if exclude is None or not len(exclude):
            return self.vectors[torch.randint(n, (count,), device=self.vectors.device)]
        banned = torch.zeros(n, dtype=torch.bool, device=self.vectors.device)
        banned[exclude] = True
        allowed = (~banned).nonzero().squeeze(1)
        if not len(allowed):
            raise ValueError("every image of the bank is excluded: the batch is the whole dataset")
        return self.vectors[allowed[torch.randint(len(allowed), (count,), device=allowed.device)]]


class BankNegatives(nn.Module):
    """Memory-bank negatives for a contrastive method: `negatives(index, *views)` draws `count` entries of images
    not in the (global) batch `index`, then, in training, moves the batch's entries towards the mean of its
    L2-normalised views. The method asks for `"index"` in its `needs` while the switch is on."""

    def __init__(self, num_images: int | None, dim: int, count: int, momentum: float = 0.5):
        super().__init__()
        if num_images is None:
            raise ValueError("memory-bank negatives keep one entry per image: build the method with num_images")
        if count < 1:
            raise ValueError(f"the number of bank negatives must be >= 1 (got {count})")
        self.bank, self.count = MemoryBank(num_images, dim, momentum), count

    def negatives(self, index: torch.Tensor, *views: torch.Tensor) -> torch.Tensor:
        drawn = self.bank.sample(self.count, exclude=index)
        if self.training:
            self.bank.update(index, sum(F.normalize(v.detach().float(), dim=1) for v in views))
        return drawn
