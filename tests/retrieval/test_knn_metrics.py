
import numpy as np
import pytest

from retrieval import Index
from retrieval.evaluate import drop_self
from retrieval.knn import classify, topk_accuracy
from retrieval.metrics import mean_average_precision, precision_at_k, recall_at_k


def test_classify_toy_set_with_known_answer() -> None:
    # class "a" near +x, class "b" near +y; the query at 45 degrees leans to x, so "a" wins by weight
    bank = np.array([[1, 0.05], [1, -0.05], [0.05, 1], [-0.05, 1], [0.02, 1]], np.float32)
    index = Index.build(bank, list("12345"), ["a", "a", "b", "b", "b"], kind="flat")
    queries = np.array([[1, 0.1], [0.1, 1], [1, 0.9]], np.float32)
    scores, classes = classify(index, queries, k=5, temperature=0.1)
    assert classes == ["a", "b"]
    assert scores.argmax(1).tolist() == [0, 1, 0]
    scores, _ = classify(index, queries, k=5, temperature=10.0)  # flat weights: the majority "b" wins
    assert scores.argmax(1).tolist() == [1, 1, 1]
    assert topk_accuracy(scores, np.array([0, 1, 0]), ks=(1, 2)) == {"top1": pytest.approx(1 / 3), "top2": 1.0}


def test_precision_and_map_by_hand() -> None:
    neighbours = np.array([[1, 0, 1, 1], [2, 2, 0, 0]])
    queries = np.array([1, 0])
    # query 0: relevant at ranks 1, 3, 4 -> P = 1, 2/3, 3/4; R = 5 -> AP = (1 + 2/3 + 3/4) / min(4, 5)
    # query 1: relevant at ranks 3, 4 -> P = 1/3, 2/4; R = 2 -> AP = (1/3 + 1/2) / 2
    assert precision_at_k(neighbours, queries) == pytest.approx((3 / 4 + 2 / 4) / 2)
    ap0, ap1 = (1 + 2 / 3 + 3 / 4) / 4, (1 / 3 + 1 / 2) / 2
    assert mean_average_precision(neighbours, queries, np.array([5, 2])) == pytest.approx((ap0 + ap1) / 2)
    assert mean_average_precision(neighbours, queries, np.array([5, 0])) == pytest.approx(ap0)  # no relevant: out


def test_recall_and_drop_self() -> None:
    assert recall_at_k(np.array([[1, 2, 3], [4, 5, -1]]), np.array([[3, 2, 9], [4, 6, 7]])) == pytest.approx(3 / 6)
    scores = np.array([[0.9, 1.0, 0.5], [0.8, 0.7, 0.6]])
    ids = np.array([[5, 7, 2], [1, 3, 4]])
    s, i = drop_self(scores, ids, np.array([7, 9]), 2)
    assert i.tolist() == [[5, 2], [1, 3]] and s.tolist() == [[0.9, 0.5], [0.8, 0.7]]
