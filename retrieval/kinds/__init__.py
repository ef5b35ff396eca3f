"""The index kinds: which one `--kind auto` picks, the registry of kinds by name, and the kind of a name.

flat (exact search over the vectors themselves), hnsw (graph), ivf (inverted lists) and ivfpq (inverted
lists of product-quantized codes, optionally re-ranked). Each is one module of this package: a class (a
subclass of retrieval/kinds/base.py's Kind) that carries its parameters and defaults, its search options, and
how an index of it is built, searched, filtered, saved and loaded. A new kind is one module here and one
`register` line below; `KINDS`, `--kind` and index.json's checks read the registry.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from retrieval.exact import faiss_or_none  # re-exported (require_faiss reads retrieval.exact's at each call)
from retrieval.kinds import flat, hnsw, ivf, ivfpq
from retrieval.kinds.base import ADD_BATCH, FaissKind, Kind, require_faiss
from retrieval.kinds.errors import IndexDirError, ModelMismatchError, check_fingerprint, check_query

__all__ = ["ADD_BATCH", "AUTO_EXACT_BELOW", "AUTO_HNSW_MAX_BYTES", "BUILD_PARAMS", "KINDS", "REGISTRY", "SEARCH_KNOBS",
           "FaissKind", "IndexDirError", "Kind", "ModelMismatchError", "build_faiss", "check_fingerprint",
           "check_query", "check_search_knobs", "choose_kind", "faiss_or_none", "gpu_cloner_options", "kind_of",
           "register", "require_faiss", "resolve_params"]

AUTO_EXACT_BELOW = 100_000  # below this, exact search answers a query in milliseconds on a CPU
AUTO_HNSW_MAX_BYTES = 8 << 30  # above this much float32 data, compress with IVF-PQ instead of HNSW
REGISTRY: dict[str, Kind] = {}  # name -> kind, in the order --kind lists them


def register(kind: type[Kind]) -> type[Kind]:
    """Add a kind (its class) to the registry under its name; returns the class, so it can be a decorator."""
    if not kind.name or kind.name in (*REGISTRY, "auto"):
        raise ValueError(f"index kind name {kind.name!r} is empty, taken or reserved")
    REGISTRY[kind.name] = kind()
    return kind


register(flat.Flat)
register(hnsw.HNSW)
register(ivf.IVF)
register(ivfpq.IVFPQ)


def __getattr__(name: str) -> Any:
    """KINDS, BUILD_PARAMS and SEARCH_KNOBS, generated from the registry when read (so a kind registered later is
    in them)."""
    if name == "KINDS":
        return tuple(REGISTRY)
    if name == "BUILD_PARAMS":
        return {n: kind.build_params for n, kind in REGISTRY.items()}
    if name == "SEARCH_KNOBS":
        return {n: kind.search_knobs for n, kind in REGISTRY.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def kind_of(name: str) -> Kind:
    """The registered kind called `name`; a one-line IndexDirError for any other name."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise IndexDirError(f"--kind must be one of {', '.join(REGISTRY)} or auto (got {name!r})") from None


def choose_kind(count: int, dim: int) -> tuple[str, str]:
    """The kind `--kind auto` picks for `count` vectors of `dim`, and why."""
    if count < AUTO_EXACT_BELOW:
        return "flat", f"{count:,} vectors < {AUTO_EXACT_BELOW:,}: exact search is fast enough and has recall 1"
    size = count * dim * 4
    if size <= AUTO_HNSW_MAX_BYTES:
        return "hnsw", (f"{count:,} vectors ({size / 2**30:.1f} GiB as float32) fit in memory: HNSW gives the "
                        f"best recall per query time")
    return "ivfpq", (f"{count:,} vectors ({size / 2**30:.1f} GiB as float32) > {AUTO_HNSW_MAX_BYTES / 2**30:.0f} "
                     f"GiB: IVF-PQ compresses them to m bytes each")


def resolve_params(kind: str, count: int, dim: int, given: dict[str, Any]) -> dict[str, Any]:
    """Fill in the defaults of `kind` for `count` vectors of `dim` and check the given values."""
    return kind_of(kind).resolve(count, dim, given)


def check_search_knobs(knobs: dict, kind: str) -> dict:
    """The search options that were given (not None); an option the kind has not is a one-line error."""
    return kind_of(kind).check_knobs(knobs)


def build_faiss(kind: str, x: np.ndarray, p: dict, device: str, progress: bool, seed: int) -> tuple[Any, str]:
    """Train (IVF kinds, on a random sample) and fill a Faiss index; on the GPU when Faiss sees one."""
    return kind_of(kind).build_faiss(x, p, device, progress, seed)


def gpu_cloner_options(faiss, kind: str):
    """The cloner options of a Faiss kind's GPU copy."""
    return kind_of(kind).gpu_options(faiss)
