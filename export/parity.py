"""Parity harness: does an exported runtime reproduce the PyTorch embeddings?

Both sides get the same preprocessed batches (random pixels and real images); their outputs are
L2-normalised and compared by max abs difference and cosine similarity. FP32 must match to 1e-4;
FP16 graphs are judged by cosine similarity, since elementwise equality is not what FP16 promises.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.errors import ParityError
from pretrain.data.images import load_rgb
from pretrain.ground.knn import l2_normalize
from pretrain.ground.preprocess import Preprocessing

Runner = Callable[[np.ndarray], np.ndarray]  # (n, 3, H, W) float32 -> (n, D) float32 raw features

TOLERANCES = {"fp32": {"max_abs": 1e-4, "min_cosine": 0.9999}, "fp16": {"max_abs": 5e-2, "min_cosine": 0.995},
              "int8": {"max_abs": 0.25, "min_cosine": 0.99}}  # int8: judged by cosine (and kNN, export/quantize.py)


@dataclass
class ParityReport:
    """Worst-case differences over all compared rows, after L2-normalisation."""

    rows: int
    max_abs: float
    min_cosine: float
    precision: str

    @property
    def ok(self) -> bool:
        tol = TOLERANCES[self.precision]
        return self.max_abs < tol["max_abs"] and self.min_cosine >= tol["min_cosine"]

    def line(self, name: str) -> str:
        tol = TOLERANCES[self.precision]
        return (f"parity {name} vs PyTorch ({self.precision}, {self.rows} images): max abs diff {self.max_abs:.2e} "
                f"(limit {tol['max_abs']:.0e}), min cosine {self.min_cosine:.6f} (limit {tol['min_cosine']})")


def compare(reference: np.ndarray, candidate: np.ndarray, precision: str = "fp32") -> ParityReport:
    """Compare two (n, D) feature batches row by row after L2-normalisation."""
    if reference.shape != candidate.shape:
        raise ParityError(f"output shapes differ: PyTorch {reference.shape}, exported {candidate.shape}")
    a, b = l2_normalize(reference), l2_normalize(candidate)
    finite = bool(np.isfinite(b).all())
    return ParityReport(rows=len(a), max_abs=float(np.abs(a - b).max()) if finite else float("inf"),
                        min_cosine=float((a * b).sum(axis=1).min()) if finite else -1.0, precision=precision)


def parity_batches(preprocessing: Preprocessing, images: Sequence[str | Path] = (), *, random_sizes=(1, 3),
                   seed: int = 0) -> list[np.ndarray]:
    """Preprocessed test batches: random-pixel images in batches of `random_sizes` (so a dynamic batch axis
    is exercised) plus one batch of real `images`."""
    rng = np.random.default_rng(seed)
    size = preprocessing.crop
    batches = []
    for n in random_sizes:
        pixels = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        from PIL import Image

        batches.append(torch.stack([preprocessing(Image.fromarray(p)) for p in pixels]).numpy())
    if images:
        batches.append(torch.stack([preprocessing(load_rgb(p)) for p in images]).numpy())
    return batches


def check_parity(reference: Runner, candidate: Runner, batches: Sequence[np.ndarray], *, precision: str = "fp32",
                 name: str = "exported model") -> ParityReport:
    """Run both runners on every batch and raise ParityError (with the measured figures) when out of tolerance."""
    ref = np.concatenate([reference(b) for b in batches])
    out = np.concatenate([candidate(b) for b in batches])
    report = compare(ref, out, precision)
    if not report.ok:
        raise ParityError(report.line(name) + ": FAILED, the exported model does not reproduce PyTorch")
    return report
