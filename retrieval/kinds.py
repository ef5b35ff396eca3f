"""The index kinds: which one `--kind auto` picks, their parameters, and the Faiss side of building one.

flat (exact search over the vectors themselves), hnsw (graph), ivf (inverted lists) and ivfpq (inverted
lists of product-quantized codes, optionally re-ranked). IVF kinds train and fill on the GPU when Faiss sees
one (`index_cpu_to_all_gpus`), then come back to the CPU to be saved.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from retrieval.exact import BackendError, faiss_gpus, faiss_or_none

KINDS = ("flat", "hnsw", "ivf", "ivfpq")
AUTO_EXACT_BELOW = 100_000  # below this, exact search answers a query in milliseconds on a CPU
AUTO_HNSW_MAX_BYTES = 8 << 30  # above this much float32 data, compress with IVF-PQ instead of HNSW
BUILD_PARAMS = {"flat": (), "hnsw": ("hnsw_m", "ef_construction", "ef_search"),
                "ivf": ("nlist", "nprobe", "train_size"),
                "ivfpq": ("nlist", "m", "nbits", "nprobe", "refine", "train_size")}
SEARCH_KNOBS = {"flat": (), "hnsw": ("ef_search",), "ivf": ("nprobe",), "ivfpq": ("nprobe", "refine")}
ADD_BATCH = 65536


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
    if kind not in KINDS:
        raise IndexDirError(f"--kind must be one of {', '.join(KINDS)} or auto (got {kind!r})")
    given = {k: v for k, v in given.items() if v is not None}
    unknown = set(given) - set(BUILD_PARAMS[kind])
    if unknown:
        raise IndexDirError(f"--{sorted(unknown)[0].replace('_', '-')} does not apply to a {kind} index "
                            f"(its options: {', '.join(BUILD_PARAMS[kind]) or 'none'})")
    nlist = max(1, min(int(4 * math.sqrt(max(count, 1))), count // 39 or 1))  # faiss wants >= 39 points per list
    m = max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)  # about 8 dimensions per sub-quantizer
    defaults = {"flat": {}, "hnsw": {"hnsw_m": 32, "ef_construction": 200, "ef_search": 128},
                "ivf": {"nlist": nlist, "nprobe": 16, "train_size": 100_000},
                "ivfpq": {"nlist": nlist, "m": m, "nbits": 8, "nprobe": 16, "refine": 0, "train_size": 100_000}}
    params = {**defaults[kind], **given}
    for name, value in params.items():
        if not isinstance(value, int) or value < (0 if name == "refine" else 1):
            raise IndexDirError(f"--{name.replace('_', '-')} must be an integer >= {0 if name == 'refine' else 1} "
                                f"(got {value!r})")
    if kind == "ivfpq":
        if dim % params["m"]:
            raise IndexDirError(f"--m {params['m']} must divide the vector dimension {dim}")
        if not 1 <= params["nbits"] <= 16:
            raise IndexDirError(f"--nbits must be between 1 and 16 (got {params['nbits']})")
    if kind in ("ivf", "ivfpq") and params["nlist"] > count:
        raise IndexDirError(f"--nlist {params['nlist']} exceeds the {count} vectors to index: use fewer lists")
    return params


def require_faiss(kind: str):
    faiss = faiss_or_none()
    if faiss is None:
        raise BackendError(f"a {kind} index needs Faiss: pip install 'sslforge[retrieval]' (faiss-cpu), or use "
                           f"--kind flat, which the torch fallback searches")
    return faiss


def _new_faiss_index(faiss, kind: str, dim: int, p: dict):
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, p["hnsw_m"], ip)
        index.hnsw.efConstruction = p["ef_construction"]
        return index
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, p["nlist"], ip)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, p["nlist"], p["m"], p["nbits"], ip)
    index.own_fields = True
    quantizer.this.disown()  # the IVF index now frees its quantizer
    return index


def gpu_cloner_options(faiss, kind: str):
    co = faiss.GpuMultipleClonerOptions()
    co.useFloat16 = kind == "ivfpq"  # float16 lookup tables: needed by GPU IVF-PQ for m > 48 sub-quantizers
    return co


def build_faiss(kind: str, x: np.ndarray, p: dict, device: str, progress: bool, seed: int) -> tuple[Any, str]:
    """Train (IVF kinds, on a random sample) and fill a Faiss index; on the GPU when Faiss sees one."""
    faiss = require_faiss(kind)
    index = _new_faiss_index(faiss, kind, x.shape[1], p)
    use_gpu = device != "cpu" and kind != "hnsw" and faiss_gpus() > 0
    if device == "gpu" and not use_gpu:
        raise BackendError("Faiss builds HNSW on the CPU only: use --device auto or cpu" if kind == "hnsw" else
                           "Faiss sees no GPU (faiss-cpu installed, or no CUDA device): use --device auto or cpu")
    work = faiss.index_cpu_to_all_gpus(index, co=gpu_cloner_options(faiss, kind)) if use_gpu else index
    if not work.is_trained:
        rng = np.random.default_rng(seed)
        n = min(len(x), p["train_size"])
        sample = x[np.sort(rng.choice(len(x), n, replace=False))]
        if progress:
            print(f"training {kind} on {n:,} sampled vectors ({p['nlist']} lists)", flush=True)
        work.train(sample)
    bar = tqdm(total=len(x), desc=f"adding to {kind}", unit="vec", disable=not progress, leave=False)
    for start in range(0, len(x), ADD_BATCH):
        work.add(x[start:start + ADD_BATCH])
        bar.update(min(ADD_BATCH, len(x) - start))
    bar.close()
    index = faiss.index_gpu_to_cpu(work) if use_gpu else work
    if kind == "ivfpq" and p["refine"]:
        index = faiss.IndexRefineFlat(index, faiss.swig_ptr(x))  # re-rank PQ candidates with the exact vectors
    return index, "gpu" if use_gpu else "cpu"


def check_query(queries, k: int, dim: int, where: str) -> np.ndarray:
    """The queries of a search as a float array (n, dim), k >= 1; one-line errors otherwise (every store)."""
    if k < 1:
        raise IndexDirError(f"k must be >= 1 (got {k})")
    q = np.asarray(queries)
    if q.ndim != 2 or q.shape[1] != dim:
        raise IndexDirError(f"query vectors have shape {tuple(q.shape)}, {where} holds dimension {dim}: embed the "
                            f"queries with the index's model")
    return q


def check_search_knobs(knobs: dict, kind: str) -> dict:
    """The search options that were given (not None); an option the kind has not is a one-line error."""
    given = {n: v for n, v in knobs.items() if v is not None}
    unknown = set(given) - set(SEARCH_KNOBS[kind])
    if unknown:
        raise IndexDirError(f"search option {sorted(unknown)[0]!r} does not apply to a {kind} index")
    return given
