"""The ivfpq kind: Faiss's inverted lists of product-quantized codes (IndexIVFPQ), optionally re-ranked with the
exact vectors (IndexRefineFlat).

Build params: those of ivf, plus m (sub-quantizers, must divide the dimension; default about dim / 8), nbits
(bits per code, 1-16) and refine (re-rank refine x k PQ candidates with the exact vectors; 0 = off), which with
nprobe is a search knob. Its GPU copy uses float16 lookup tables (GPU IVF-PQ needs them for m > 48); a refined
index is searched on the CPU.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from retrieval.kinds.base import FaissKind
from retrieval.kinds.errors import IndexDirError
from retrieval.kinds.ivf import IVF, default_nlist


class IVFPQ(IVF):
    name = "ivfpq"
    summary = "inverted lists with compressed codes"
    build_params = ("nlist", "m", "nbits", "nprobe", "refine", "train_size")
    search_knobs = ("nprobe", "refine")
    lowest = {"refine": 0}
    faiss_types = ("IndexIVFPQ", "IndexRefineFlat")
    gpu_float16 = True  # float16 lookup tables: needed by GPU IVF-PQ for m > 48 sub-quantizers

    def defaults(self, count: int, dim: int) -> dict[str, Any]:
        m = max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)  # about 8 dimensions per sub-quantizer
        return {"nlist": default_nlist(count), "m": m, "nbits": 8, "nprobe": 16, "refine": 0, "train_size": 100_000}

    def check(self, params: dict[str, Any], count: int, dim: int) -> None:
        if dim % params["m"]:
            raise IndexDirError(f"--m {params['m']} must divide the vector dimension {dim}")
        if not 1 <= params["nbits"] <= 16:
            raise IndexDirError(f"--nbits must be between 1 and 16 (got {params['nbits']})")
        super().check(params, count, dim)

    def new_ivf(self, faiss, quantizer, dim: int, p: dict) -> Any:
        return faiss.IndexIVFPQ(quantizer, dim, p["nlist"], p["m"], p["nbits"], faiss.METRIC_INNER_PRODUCT)

    def finish(self, faiss, index, x: np.ndarray, p: dict) -> Any:
        if p["refine"]:
            index = faiss.IndexRefineFlat(index, faiss.swig_ptr(x))  # re-rank PQ candidates with the exact vectors
        return index

    def search_values(self, index, knobs: dict) -> dict:
        p = super().search_values(index, knobs)
        if knobs.get("refine") and not index.params.get("refine"):
            raise IndexDirError(f"{index.path or 'the index'} was built without --refine: rebuild it with one")
        return p

    def gpu_copy(self, index, faiss) -> Any:
        return None if index.params.get("refine") else super().gpu_copy(index, faiss)

    def search_cpu(self, faiss, index, q: np.ndarray, k: int, p: dict, extra: dict) -> tuple[np.ndarray, np.ndarray]:
        if not index.params["refine"]:
            return super().search_cpu(faiss, index, q, k, p, extra)
        ivf = faiss.SearchParametersIVF(nprobe=p["nprobe"], **extra)
        return index.faiss_index.search(q, k, params=faiss.IndexRefineSearchParameters(
            k_factor=float(p["refine"]), base_index_params=ivf))

    def all_vectors(self, index) -> np.ndarray:
        """Read back with no direct map."""
        return FaissKind.all_vectors(self, index)
