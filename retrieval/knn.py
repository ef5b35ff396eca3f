"""Weighted kNN classification against an index: the k nearest labelled rows vote with weight exp(similarity / T).

The vote, the top-k accuracy and the label codes are pretrain's ground module `pretrain.ground.knn`, which the kNN
evaluation after pretraining uses too, so `sslforge eval knn` and `sslforge index classify` agree.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pretrain.ground.knn import knn_vote, label_codes, topk_accuracy
from retrieval.index import IndexDirError

__all__ = ["classify", "knn_vote", "label_codes", "topk_accuracy"]


def classify(index: Any, queries: np.ndarray, *, k: int = 200, temperature: float = 0.1,
             **knobs: Any) -> tuple[np.ndarray, list[str]]:
    """kNN class scores (Q, C) of `queries` against a `retrieval.Index`, and the class names (columns)."""
    classes = index.classes
    if not classes:
        raise IndexDirError(f"{index.path or 'the index'} has no labelled rows: kNN classification needs labels")
    sims, ids = index.search_ids(queries, k, **knobs)
    codes = np.append(label_codes(index.labels, classes), -1)  # id -1 (no neighbour) -> code -1
    return knn_vote(sims, codes[ids], len(classes), temperature), classes
