"""A FIFO queue of feature vectors kept as buffers: MoCo's negative keys, NNCLR's support set.

The queue and its write pointer are buffers, so a checkpoint holds them and a resumed run continues exactly.
Under torchrun every process enqueues the same gathered rows, so the queue is the same everywhere (replicated).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureQueue(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1 (got {size})")
        self.register_buffer("vectors", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, rows: torch.Tensor) -> None:
        """Overwrite the oldest entries with `rows` (first in, first out), wrapping around the end."""
        size, ptr = self.vectors.shape[0], int(self.ptr)
        rows = rows[-size:]
        idx = (ptr + torch.arange(rows.shape[0], device=rows.device)) % size
        self.vectors[idx] = rows.to(self.vectors.dtype)
        self.ptr.fill_((ptr + rows.shape[0]) % size)

    @torch.no_grad()
    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """For each row of `x`, the queue's most cosine-similar entry (as stored, L2-normalised)."""
        sims = F.normalize(x.float(), dim=1) @ F.normalize(self.vectors.float(), dim=1).T
        return self.vectors[sims.argmax(dim=1)]
