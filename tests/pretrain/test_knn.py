"""The ground's numpy kNN: the vote, top-k accuracy, and the L2 normaliser (shared by evaluation and retrieval)."""
import math

import numpy as np
import pytest

from pretrain.ground.knn import knn_vote, topk_accuracy


def test_knn_vote_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(0)
    sims = rng.uniform(-1, 1, (6, 5)).astype(np.float32)
    labels = rng.integers(-1, 4, (6, 5))
    expected = np.zeros((6, 4))
    for q in range(6):
        for j in range(5):
            if labels[q, j] >= 0:
                expected[q, labels[q, j]] += math.exp(sims[q, j] / 0.07)
    np.testing.assert_allclose(knn_vote(sims, labels, 4, 0.07), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        knn_vote(sims, labels, 4, 0.0)


def test_topk_accuracy() -> None:
    scores = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])
    assert topk_accuracy(scores, np.array([1, 2]), ks=(1, 2)) == {"top1": 0.5, "top2": 1.0}
