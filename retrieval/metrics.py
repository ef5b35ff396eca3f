"""Retrieval metrics on top-k result lists.

- recall@k: share of the exact top-k ids that the approximate index also returns in its top k.
- precision@k: share of the k results whose label equals the query's.
- AP@k: sum over ranks i <= k of precision@i at each relevant result, divided by min(k, R), where R
  is the number of rows with the query's label in the database (the query itself excluded). With
  k >= the database size this is the usual average precision; mAP@k is its mean over queries.
"""
from __future__ import annotations

import numpy as np


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / |exact top-k| (ids -1 ignored)."""
    hits, total = 0, 0
    for a, e in zip(approx_ids, exact_ids):
        e = e[e >= 0]
        hits += len(np.intersect1d(a[a >= 0], e))
        total += len(e)
    return hits / total if total else float("nan")


def relevance(neighbour_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """(Q, k) bool: the neighbour has the query's label (unknown labels, < 0, are never relevant)."""
    q = np.asarray(query_labels)[:, None]
    return (np.asarray(neighbour_labels) == q) & (q >= 0)


def precision_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray) -> float:
    return float(relevance(neighbour_labels, query_labels).mean())


def mean_average_precision(neighbour_labels: np.ndarray, query_labels: np.ndarray,
                           relevant_counts: np.ndarray) -> float:
    """mAP@k (see the module docstring); queries with no relevant row in the database are left out."""
    rel = relevance(neighbour_labels, query_labels).astype(np.float64)
    k = rel.shape[1]
    precision_at_i = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    counts = np.asarray(relevant_counts)
    keep = counts > 0
    ap = (precision_at_i * rel).sum(axis=1)[keep] / np.minimum(k, counts[keep])
    return float(ap.mean()) if len(ap) else float("nan")
