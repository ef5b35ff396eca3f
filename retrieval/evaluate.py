"""`sslforge index eval`: an index against exact search (recall@k, queries/s, build time, memory) and,
when the rows have labels, retrieval quality (precision@k, mAP@k by class label).
"""
from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

import numpy as np

from pretrain.ground.knn import l2_normalize
from retrieval.index import Index
from retrieval.knn import label_codes
from retrieval.metrics import mean_average_precision, precision_at_k, recall_at_k


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def drop_self(scores: np.ndarray, ids: np.ndarray, self_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From k+1 results per query, drop the query's own row (or the last result when it is absent)."""
    is_self = ids == self_ids[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    keep[np.cumsum(is_self, axis=1) > 1] = True  # only the first self-match goes
    return scores[keep].reshape(len(ids), k), ids[keep].reshape(len(ids), k)


def timed_search(index, queries: np.ndarray, k: int, **knobs: Any) -> tuple[np.ndarray, np.ndarray, float]:
    start = time.perf_counter()
    scores, ids = index.search_ids(queries, k, **knobs)
    return scores, ids, time.perf_counter() - start


def evaluate_index(index, reference: np.ndarray, queries: np.ndarray, *, k: int = 10,
                   query_ids: np.ndarray | None = None, query_labels: list[str | None] | None = None,
                   **knobs: Any) -> dict[str, Any]:
    """Compare `index` (an Index or a Store) with exact search over `reference` (the indexed vectors, row order)
    on `queries`.

    `query_ids`: the queries are these rows of the index, so each one's own row is left out of its results.
    """
    exact = Index(kind="flat", dim=index.dim, params={}, paths=index.paths, labels=index.labels,
                  vectors=l2_normalize(reference), removed=index.removed,
                  device=getattr(index, "device", "auto"))
    fetch = k + (query_ids is not None)
    a_scores, a_ids, a_time = timed_search(index, queries, fetch, **knobs)
    e_scores, e_ids, e_time = timed_search(exact, queries, fetch)
    if query_ids is not None:
        a_scores, a_ids = drop_self(a_scores, a_ids, query_ids, k)
        e_scores, e_ids = drop_self(e_scores, e_ids, query_ids, k)
    result: dict[str, Any] = {
        "kind": index.kind, "params": {**index.params, **{n: v for n, v in knobs.items() if v is not None}},
        "rows": len(index), "queries": len(queries), "k": k,
        f"recall@{k}": recall_at_k(a_ids, e_ids),
        "queries_per_s": len(queries) / a_time, "exact_queries_per_s": len(queries) / e_time,
        "build_seconds": index.info.get("build_seconds"),
    }
    result["speedup_vs_exact"] = result["queries_per_s"] / result["exact_queries_per_s"]
    if hasattr(index, "size_bytes"):  # a store: the index dir's files, or the table with its indexes
        result["index_bytes"] = index.size_bytes()
    elif index.path is not None:
        result["index_bytes"] = sum(f.stat().st_size for f in index.path.iterdir() if f.is_file())
    if query_labels is not None and index.classes:
        classes = index.classes
        db_codes = np.append(label_codes(index.labels, classes), -1)
        q_codes = label_codes(query_labels, classes)
        live = np.ones(index.ntotal, bool)
        live[index.removed] = False
        counts = Counter(c for c, ok in zip(db_codes[:-1], live) if ok and c >= 0)
        relevant = np.array([counts.get(c, 0) - (query_ids is not None) for c in q_codes]) * (q_codes >= 0)
        result[f"precision@{k}"] = precision_at_k(db_codes[a_ids], q_codes)
        result[f"mAP@{k}"] = mean_average_precision(db_codes[a_ids], q_codes, relevant)
        result[f"exact_precision@{k}"] = precision_at_k(db_codes[e_ids], q_codes)
        result["per_class_precision"] = {
            c: precision_at_k(db_codes[a_ids[q_codes == i]], q_codes[q_codes == i])
            for i, c in enumerate(classes) if (q_codes == i).any()}
    return result
