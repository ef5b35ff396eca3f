"""The flat kind: exact search over the vectors themselves (vectors.npy), by Faiss or by the torch fallback.

It needs no Faiss, has no parameters and recall 1; filtered search is exact over the allowed rows only, so its
result is the true top-k among them. Its matrix is memory-mappable, and rows added since the snapshot are
appended in memory even onto a memory-mapped copy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pretrain.ground.atomic import save_npy
from retrieval.exact import exact_search
from retrieval.indexfiles import read_vectors
from retrieval.kinds.base import Kind
from retrieval.kinds.errors import IndexDirError


class Flat(Kind):
    name = "flat"
    summary = "exact"
    file = "vectors.npy"
    mmap_adds = True

    def build(self, x: np.ndarray, p: dict, device: str, progress: bool, seed: int) -> tuple[Any, Any, str]:
        return x, None, "cpu"

    def search(self, index, q: np.ndarray, k: int, knobs: dict) -> tuple[np.ndarray, np.ndarray]:
        return exact_search(index.vectors, q, k, device=index.device)

    def search_among(self, index, q: np.ndarray, k: int, allowed: np.ndarray, rows: np.ndarray,
                     knobs: dict) -> tuple[np.ndarray, np.ndarray]:
        s, local = exact_search(index.vectors[rows], q, k, device=index.device)
        return s, np.where(local >= 0, rows[np.maximum(local, 0)], -1)

    def add(self, index, x: np.ndarray) -> None:
        """Append to the matrix in amortised constant time (a buffer that doubles), so that many small adds cost
        as much as one big one."""
        n = len(index.vectors)
        store = getattr(index, "_store", None)
        if store is None or store.shape[0] < n + len(x) or not np.shares_memory(store, index.vectors):
            store = np.empty((max(2 * n, n + len(x), 1024), index.dim), np.float32)
            store[:n] = index.vectors
            index._store = store
        store[n:n + len(x)] = x
        index.vectors = store[:n + len(x)]

    def all_vectors(self, index) -> np.ndarray:
        return np.asarray(index.vectors, dtype=np.float32)

    def save(self, index, folder: Path) -> None:
        save_npy(folder / self.file, index.vectors)

    def load(self, file: Path, dim: int, mmap: bool) -> tuple[Any, Any, int]:
        vectors = read_vectors(file, dim, mmap, IndexDirError)
        return vectors, None, len(vectors)
