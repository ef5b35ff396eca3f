"""The ivf kind: Faiss's inverted lists of full vectors (IndexIVFFlat), trained on a random sample.

Build params: nlist (lists, default 4 x sqrt(rows), at least 39 rows each), nprobe (lists visited per query, the
search knob), train_size (rows sampled to train the coarse quantizer). Trained and filled on the GPU when Faiss
sees one, then brought back to the CPU to be saved; searched on a GPU copy when Faiss sees a GPU (a filtered
search uses the CPU index: Faiss's GPU indexes take no ID selector).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from retrieval.exact import BackendError, faiss_gpus
from retrieval.kinds.base import FaissKind, require_faiss
from retrieval.kinds.errors import IndexDirError


def default_nlist(count: int) -> int:
    """Inverted lists for `count` rows: 4 x sqrt(count), at most count / 39 (Faiss wants >= 39 points per list)."""
    return max(1, min(int(4 * math.sqrt(max(count, 1))), count // 39 or 1))


class IVF(FaissKind):
    name = "ivf"
    summary = "inverted lists"
    build_params = ("nlist", "nprobe", "train_size")
    search_knobs = ("nprobe",)
    faiss_types = ("IndexIVFFlat",)

    def defaults(self, count: int, dim: int) -> dict[str, Any]:
        return {"nlist": default_nlist(count), "nprobe": 16, "train_size": 100_000}

    def check(self, params: dict[str, Any], count: int, dim: int) -> None:
        if params["nlist"] > count:
            raise IndexDirError(f"--nlist {params['nlist']} exceeds the {count} vectors to index: use fewer lists")

    def new_ivf(self, faiss, quantizer, dim: int, p: dict) -> Any:
        return faiss.IndexIVFFlat(quantizer, dim, p["nlist"], faiss.METRIC_INNER_PRODUCT)

    def new_faiss_index(self, faiss, dim: int, p: dict) -> Any:
        quantizer = faiss.IndexFlatIP(dim)
        index = self.new_ivf(faiss, quantizer, dim, p)
        index.own_fields = True
        quantizer.this.disown()  # the IVF index now frees its quantizer
        return index

    def train(self, work, x: np.ndarray, p: dict, progress: bool, seed: int) -> None:
        """On a random sample of train_size rows."""
        rng = np.random.default_rng(seed)
        n = min(len(x), p["train_size"])
        sample = x[np.sort(rng.choice(len(x), n, replace=False))]
        if progress:
            print(f"training {self.name} on {n:,} sampled vectors ({p['nlist']} lists)", flush=True)
        work.train(sample)

    def gpu_copy(self, index, faiss) -> Any:
        """A GPU copy for searching, made once, when Faiss sees a GPU and the index's device allows."""
        if index.device == "cpu":
            return None
        if faiss_gpus() == 0:
            if index.device == "gpu":
                raise BackendError("Faiss sees no GPU (faiss-cpu installed, or no CUDA device): use device auto/cpu")
            return None
        if index._gpu_index is None:
            index._gpu_index = faiss.index_cpu_to_all_gpus(index.faiss_index, co=self.gpu_options(faiss))
        return index._gpu_index

    def search_gpu(self, faiss, gpu, q: np.ndarray, k: int, p: dict) -> tuple[np.ndarray, np.ndarray]:
        faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", p["nprobe"])
        return gpu.search(q, k)

    def search_cpu(self, faiss, index, q: np.ndarray, k: int, p: dict, extra: dict) -> tuple[np.ndarray, np.ndarray]:
        return index.faiss_index.search(q, k, params=faiss.SearchParametersIVF(nprobe=p["nprobe"], **extra))

    def all_vectors(self, index) -> np.ndarray:
        """Read back through the direct map (made here)."""
        faiss = require_faiss(self.name)
        ivf = faiss.try_extract_index_ivf(index.faiss_index)
        if ivf is not None:
            ivf.make_direct_map()
        return index.faiss_index.reconstruct_n(0, index.ntotal)
