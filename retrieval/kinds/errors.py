"""The errors of an index dir and the checks every store makes of a search: the model fingerprint and the queries.

Both stores (index dirs and PostgreSQL tables) raise these, so they live apart from the Faiss kinds; import them
from `retrieval.kinds`.
"""
from __future__ import annotations

import numpy as np


class IndexDirError(ValueError):
    """An index dir is missing, of another format or schema version, inconsistent, or used wrongly."""


class ModelMismatchError(IndexDirError):
    """The query vectors come from another model than the indexed ones."""


def check_fingerprint(held: str | None, fingerprint: str | None, where: str) -> None:
    """ModelMismatchError unless the queries' model (`fingerprint`) is the one the collection at `where` was built
    for (`held`); also when only one side records a model, so that the match cannot be checked."""
    if fingerprint == held:
        return
    if held is None:
        raise ModelMismatchError(f"{where} records no model fingerprint, so its vectors cannot be matched to model "
                                 f"{fingerprint}: rebuild it from embeddings written by `sslforge embed`, whose "
                                 f"manifest records the model")
    if fingerprint is None:
        raise ModelMismatchError(f"{where} holds vectors of model {held}, the queries come from no recorded model: "
                                 f"embed them with `sslforge embed` (or search with --model)")
    raise ModelMismatchError(f"{where} holds vectors of model {held}, the queries come from {fingerprint}: embed "
                             f"both with the same model or rebuild the index")


def check_query(queries, k: int, dim: int, where: str) -> np.ndarray:
    """The queries of a search as a float array (n, dim), k >= 1; one-line errors otherwise (every store)."""
    if k < 1:
        raise IndexDirError(f"k must be >= 1 (got {k})")
    q = np.asarray(queries)
    if q.ndim != 2 or q.shape[1] != dim:
        raise IndexDirError(f"query vectors have shape {tuple(q.shape)}, {where} holds dimension {dim}: embed the "
                            f"queries with the index's model")
    return q
