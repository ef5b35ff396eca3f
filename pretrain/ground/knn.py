"""kNN on the ground, numpy only: the weighted vote, top-k accuracy, label codes and the L2 normaliser.

The k nearest labelled rows vote with weight exp(similarity / T). Pretraining's kNN evaluation
(pretrain/train/evaluate.py) and retrieval's classification (`sslforge index classify`) both call these, so
the accuracy printed after pretraining and the one an index gives agree; nothing here imports torch.
"""
from __future__ import annotations

import numpy as np


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """A float32, C-contiguous, L2-normalised copy (all-zero rows stay zero)."""
    x = np.array(vectors, dtype=np.float32, order="C", ndmin=2)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def knn_vote(similarities: np.ndarray, neighbour_labels: np.ndarray, num_classes: int,
             temperature: float = 0.1) -> np.ndarray:
    """Class scores (Q, C) float32: sum over the neighbours of exp(similarity / T) into their class.

    similarities and neighbour_labels are (Q, k); a label < 0 (unlabelled or missing neighbour) casts no vote.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    sims = np.asarray(similarities, dtype=np.float32)
    labels = np.asarray(neighbour_labels, dtype=np.int64)
    weights = np.exp(sims / np.float32(temperature))
    rows = np.broadcast_to(np.arange(len(sims))[:, None], labels.shape)
    valid = labels >= 0
    scores = np.zeros((len(sims), num_classes), dtype=np.float32)
    np.add.at(scores, (rows[valid], labels[valid]), weights[valid])
    return scores


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Fraction of rows whose label is among the k highest class scores, for each k (capped at #classes)."""
    labels = np.asarray(labels)
    order = np.argsort(-scores, axis=1, kind="stable")
    return {f"top{k}": float((order[:, :k] == labels[:, None]).any(axis=1).mean()) for k in ks}


def label_codes(labels: list[str | None], classes: list[str]) -> np.ndarray:
    """Class index of each label; -1 for None or a label outside `classes`."""
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup.get(lab, -1) if lab is not None else -1 for lab in labels], dtype=np.int64)
