"""The hnsw kind: Faiss's HNSW graph over the full vectors (IndexHNSWFlat), built on the CPU.

Build params: hnsw_m (links per node), ef_construction (candidate list while building), ef_search (candidate
list per query, the search knob). A filtered search walks the graph keeping only allowed nodes, so its candidate
list is widened by the share of rows the filter leaves out (a selective filter keeps its recall).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from retrieval.kinds.base import FaissKind


class HNSW(FaissKind):
    name = "hnsw"
    summary = "graph"
    build_params = ("hnsw_m", "ef_construction", "ef_search")
    search_knobs = ("ef_search",)
    faiss_types = ("IndexHNSWFlat",)
    cpu_only = "Faiss builds HNSW on the CPU only"

    def defaults(self, count: int, dim: int) -> dict[str, Any]:
        return {"hnsw_m": 32, "ef_construction": 200, "ef_search": 128}

    def new_faiss_index(self, faiss, dim: int, p: dict) -> Any:
        index = faiss.IndexHNSWFlat(dim, p["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p["ef_construction"]
        return index

    def search_cpu(self, faiss, index, q: np.ndarray, k: int, p: dict, extra: dict) -> tuple[np.ndarray, np.ndarray]:
        return index.faiss_index.search(q, k, params=faiss.SearchParametersHNSW(efSearch=p["ef_search"], **extra))

    def widen(self, knobs: dict, params: dict, k: int, total: int, kept: int) -> dict:
        """The walk keeps only allowed nodes: widen it by the share the filter leaves out."""
        ef = knobs.get("ef_search") or params["ef_search"]
        return {**knobs, "ef_search": int(min(total, max(ef, k, ef * total / kept)))}

    def mmap_flag(self, faiss) -> int:
        """IO_FLAG_MMAP_IFC maps HNSW's vector storage (IO_FLAG_MMAP, for inverted lists, does not combine)."""
        return faiss.IO_FLAG_MMAP_IFC
