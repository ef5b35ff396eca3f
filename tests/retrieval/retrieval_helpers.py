"""Generated vectors for the retrieval tests: clustered unit vectors with class labels, a numpy reference."""
from __future__ import annotations

import numpy as np


def clustered(n: int, dim: int = 32, clusters: int = 20, spread: float = 0.35, seed: int = 0):
    """n L2-normalised vectors around `clusters` random centres; the label is the centre's number."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, clusters, n)
    x = centres[labels] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def brute_force(db: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-k by cosine in float64 numpy."""
    db = db / np.linalg.norm(db, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ db.astype(np.float64).T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, 1), ids


def collection(n: int = 3000) -> tuple[np.ndarray, list[str], list[str]]:
    """Clustered vectors with one path and one class label per row."""
    x, labels = clustered(n)
    return x, [f"img/{i:05d}.jpg" for i in range(len(x))], [f"c{c}" for c in labels]
