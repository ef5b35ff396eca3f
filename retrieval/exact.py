"""Exact (brute-force) top-k by inner product, with the backend picked from what is installed.

Order for device "auto": Faiss on the GPU > torch on CUDA > Faiss on the CPU > torch on the CPU.
The torch paths are the fallback when faiss-gpu (or faiss itself) is missing: a batched matmul and a
running top-k over blocks of the database, so memory stays bounded at a million vectors.
"""
from __future__ import annotations

import warnings
from functools import cache

import numpy as np

BACKENDS = ("faiss-gpu", "torch-cuda", "faiss-cpu", "torch-cpu")


class BackendError(RuntimeError):
    """The asked-for search backend (Faiss, faiss-gpu, torch, CUDA) is not available here."""


def faiss_or_none():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


@cache
def faiss_gpus() -> int:
    faiss = faiss_or_none()
    return faiss.get_num_gpus() if faiss is not None and hasattr(faiss, "get_num_gpus") else 0


@cache
def torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _torch_installed() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def exact_backend(device: str = "auto") -> str:
    """The backend exact search uses on `device` ("auto", "cpu" or "gpu"); BackendError when none fits."""
    if device not in ("auto", "cpu", "gpu"):
        raise BackendError(f"device must be auto, cpu or gpu (got {device!r})")
    have_faiss = faiss_or_none() is not None
    candidates = {
        "faiss-gpu": device != "cpu" and faiss_gpus() > 0,
        "torch-cuda": device != "cpu" and torch_cuda(),
        "faiss-cpu": device != "gpu" and have_faiss,
        "torch-cpu": device != "gpu" and _torch_installed(),
    }
    for name in BACKENDS:
        if candidates[name]:
            return name
    if device == "gpu":
        raise BackendError("no GPU search backend: install faiss-gpu (pip install 'sslforge[gpu]') or a CUDA torch")
    raise BackendError("no search backend: install faiss-cpu (pip install 'sslforge[retrieval]') or torch")


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad to k columns with score -inf and id -1 (fewer than k vectors to return)."""
    missing = k - scores.shape[1]
    if missing <= 0:
        return scores, ids
    return (np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf),
            np.pad(ids, ((0, 0), (0, missing)), constant_values=-1))


def _torch_search(db: np.ndarray, queries: np.ndarray, k: int, device: str, query_batch: int,
                  db_batch: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    dev = torch.device(device)
    with warnings.catch_warnings():  # a read-only memory map is fine: torch only reads it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        blocks = [torch.from_numpy(np.asarray(db[s:s + db_batch], dtype=np.float32)).to(dev)
                  for s in range(0, len(db), db_batch)]
    scores, ids = [], []
    with torch.no_grad():
        for qs in range(0, len(queries), query_batch):
            q = torch.from_numpy(np.ascontiguousarray(queries[qs:qs + query_batch], dtype=np.float32)).to(dev)
            best_s = torch.empty(len(q), 0, device=dev)
            best_i = torch.empty(len(q), 0, dtype=torch.int64, device=dev)
            offset = 0
            for block in blocks:
                s, i = (q @ block.T).topk(min(k, len(block)), dim=1)
                best_s, j = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
                best_i = torch.cat([best_i, i + offset], 1).gather(1, j)
                offset += len(block)
            scores.append(best_s.cpu().numpy())
            ids.append(best_i.cpu().numpy())
    return np.concatenate(scores), np.concatenate(ids)


def exact_search(db: np.ndarray, queries: np.ndarray, k: int, *, backend: str | None = None, device: str = "auto",
                 query_batch: int = 1024, db_batch: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of `db` by inner product with each query: (scores float32 (Q, k), ids int64 (Q, k)).

    Rows past the size of `db` come back as score -inf, id -1. `backend` (one of BACKENDS) overrides
    the choice that `device` would make.
    """
    backend = backend or exact_backend(device)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    kk = min(k, len(db))
    if kk == 0 or len(queries) == 0:
        return _pad(np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), k)
    if backend.startswith("faiss"):
        faiss = faiss_or_none()
        xb = db if db.dtype == np.float32 and db.flags.c_contiguous else np.ascontiguousarray(db, dtype=np.float32)
        if backend == "faiss-gpu":
            scores, ids = faiss.knn_gpu(_gpu_resources(), queries, xb, kk, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            scores, ids = faiss.knn(queries, xb, kk, metric=faiss.METRIC_INNER_PRODUCT)
    elif backend in ("torch-cuda", "torch-cpu"):
        scores, ids = _torch_search(db, queries, kk, "cuda" if backend == "torch-cuda" else "cpu", query_batch,
                                    db_batch)
    else:
        raise BackendError(f"unknown exact-search backend {backend!r} (choose from {', '.join(BACKENDS)})")
    return _pad(scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False), k)


@cache
def _gpu_resources():
    return faiss_or_none().StandardGpuResources()
