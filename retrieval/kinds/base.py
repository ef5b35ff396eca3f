"""The base of an index kind: what every kind states and does (its parameters, how it is built, searched, saved
and loaded), and the Faiss side that the Faiss kinds share.

A kind is a small class with no state of its own: the registry (retrieval/kinds/__init__.py) holds one instance
per kind, and `Index` (retrieval/index.py) calls it with itself wherever the kinds differ. `Kind` is what every
kind has; `FaissKind` is a kind held in a Faiss index (index.faiss), built on the GPU when Faiss sees one unless
the kind says why not, trained first when Faiss says the index needs it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pretrain.ground.atomic import atomic_path
from retrieval import exact
from retrieval.exact import BackendError, faiss_gpus
from retrieval.indexfiles import read_faiss
from retrieval.kinds.errors import IndexDirError

ADD_BATCH = 65536


def require_faiss(kind: str):
    """The faiss module, or a one-line BackendError naming `kind` (looked up in retrieval.exact at each call)."""
    faiss = exact.faiss_or_none()
    if faiss is None:
        raise BackendError(f"a {kind} index needs Faiss: pip install 'sslforge[retrieval]' (faiss-cpu), or use "
                           f"--kind flat, which the torch fallback searches")
    return faiss


class Kind(ABC):
    """An index kind: its name, its build parameters (defaults and checks), its search options, and how an index
    of it is built, searched (with or without a filter), grown, read back, saved and loaded.

    The methods that take `index` take the `Index` (retrieval/index.py) they act for, with its `vectors`
    (a matrix, for kinds that hold the vectors themselves) or `faiss_index`, `params`, `device` and `path`.
    """

    name: str = ""  # what --kind and index.json call it
    summary: str = ""  # what it is, in a few words (the `--kind` help)
    build_params: tuple[str, ...] = ()  # its build options, in the order of `defaults` (index.json's params)
    search_knobs: tuple[str, ...] = ()  # the stored params a search may override
    lowest: dict[str, int] = {}  # the smallest value of a build param, where it is not 1
    file: str = ""  # the file of the index dir that holds it
    mmap_adds: bool = False  # rows added since the snapshot can be replayed onto a memory-mapped copy

    # ---- parameters -------------------------------------------------------------------------------
    def defaults(self, count: int, dim: int) -> dict[str, Any]:
        """The build params for `count` vectors of `dim` when none is given (keys: `build_params`, in order)."""
        return {}

    def check(self, params: dict[str, Any], count: int, dim: int) -> None:
        """IndexDirError when params that are each integers in range do not fit together or the data."""
        return None  # most kinds' params fit any data

    def resolve(self, count: int, dim: int, given: dict[str, Any]) -> dict[str, Any]:
        """Fill in the defaults for `count` vectors of `dim` and check the given values."""
        given = {k: v for k, v in given.items() if v is not None}
        unknown = set(given) - set(self.build_params)
        if unknown:
            raise IndexDirError(f"--{sorted(unknown)[0].replace('_', '-')} does not apply to a {self.name} index "
                                f"(its options: {', '.join(self.build_params) or 'none'})")
        params = {**self.defaults(count, dim), **given}
        for name, value in params.items():
            low = self.lowest.get(name, 1)
            if not isinstance(value, int) or value < low:
                raise IndexDirError(f"--{name.replace('_', '-')} must be an integer >= {low} (got {value!r})")
        self.check(params, count, dim)
        return params

    def check_knobs(self, knobs: dict) -> dict:
        """The search options that were given (not None); an option the kind has not is a one-line error."""
        given = {n: v for n, v in knobs.items() if v is not None}
        unknown = set(given) - set(self.search_knobs)
        if unknown:
            raise IndexDirError(f"search option {sorted(unknown)[0]!r} does not apply to a {self.name} index")
        return given

    # ---- an index of the kind -----------------------------------------------------------------------
    @abstractmethod
    def build(self, x: np.ndarray, p: dict, device: str, progress: bool, seed: int) -> tuple[Any, Any, str]:
        """(vectors, faiss_index, built on "cpu" or "gpu") for the normalised rows `x` with params `p`."""

    @abstractmethod
    def search(self, index, q: np.ndarray, k: int, knobs: dict) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k best rows for each normalised query, removed rows included; ids -1 where none."""

    @abstractmethod
    def search_among(self, index, q: np.ndarray, k: int, allowed: np.ndarray, rows: np.ndarray,
                     knobs: dict) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k best of the rows where `allowed` (bool, one per row) is true, which are `rows`
        (at least k of them); the caller checks the ids against `allowed` once more."""

    @abstractmethod
    def add(self, index, x: np.ndarray) -> None:
        """Append the normalised rows `x` to the index's data."""

    @abstractmethod
    def all_vectors(self, index) -> np.ndarray:
        """The (normalised) vectors of every row, as float32 (N, dim)."""

    @abstractmethod
    def save(self, index, folder: Path) -> None:
        """Write the index's data as `folder / self.file`."""

    @abstractmethod
    def load(self, file: Path, dim: int, mmap: bool) -> tuple[Any, Any, int]:
        """(vectors, faiss_index, rows held) read from `file`, checked to hold `dim` (IndexDirError otherwise);
        `mmap` maps it from disk, read-only."""


class FaissKind(Kind):
    """A kind held in a Faiss index (inner product), in index.faiss."""

    file = "index.faiss"
    faiss_types: tuple[str, ...] = ()  # the Faiss classes its index.faiss may hold
    cpu_only: str | None = None  # why Faiss builds it on the CPU only; None: on the GPU when Faiss sees one
    gpu_float16 = False  # the GPU copy uses float16 lookup tables

    @abstractmethod
    def new_faiss_index(self, faiss, dim: int, p: dict) -> Any:
        """An empty Faiss index of the kind (inner product) for vectors of `dim`."""

    @abstractmethod
    def search_cpu(self, faiss, index, q: np.ndarray, k: int, p: dict, extra: dict) -> tuple[np.ndarray, np.ndarray]:
        """Search the CPU Faiss index with the params `p`; `extra` goes into Faiss's search parameters (`sel`)."""

    # ---- building -----------------------------------------------------------------------------------
    def gpu_options(self, faiss):
        """The cloner options of its GPU copy (`index_cpu_to_all_gpus`)."""
        co = faiss.GpuMultipleClonerOptions()
        co.useFloat16 = self.gpu_float16
        return co

    def train(self, work, x: np.ndarray, p: dict, progress: bool, seed: int) -> None:
        """Train `work`, which Faiss says needs it, on the rows `x`."""
        raise NotImplementedError(f"a {self.name} index cannot be trained")

    def finish(self, faiss, index, x: np.ndarray, p: dict) -> Any:
        """The built (and filled) CPU index as it is kept."""
        return index

    def build(self, x: np.ndarray, p: dict, device: str, progress: bool, seed: int) -> tuple[Any, Any, str]:
        index, built_on = self.build_faiss(x, p, device, progress, seed)
        return None, index, built_on

    def build_faiss(self, x: np.ndarray, p: dict, device: str, progress: bool, seed: int) -> tuple[Any, str]:
        """Train (when Faiss says the index needs it) and fill a Faiss index; on the GPU when Faiss sees one."""
        faiss = require_faiss(self.name)
        index = self.new_faiss_index(faiss, x.shape[1], p)
        use_gpu = device != "cpu" and self.cpu_only is None and faiss_gpus() > 0
        if device == "gpu" and not use_gpu:
            raise BackendError(f"{self.cpu_only}: use --device auto or cpu" if self.cpu_only is not None else
                               "Faiss sees no GPU (faiss-cpu installed, or no CUDA device): use --device auto or cpu")
        work = faiss.index_cpu_to_all_gpus(index, co=self.gpu_options(faiss)) if use_gpu else index
        if not work.is_trained:
            self.train(work, x, p, progress, seed)
        bar = tqdm(total=len(x), desc=f"adding to {self.name}", unit="vec", disable=not progress, leave=False)
        for start in range(0, len(x), ADD_BATCH):
            work.add(x[start:start + ADD_BATCH])
            bar.update(min(ADD_BATCH, len(x) - start))
        bar.close()
        index = faiss.index_gpu_to_cpu(work) if use_gpu else work
        return self.finish(faiss, index, x, p), "gpu" if use_gpu else "cpu"

    # ---- searching ----------------------------------------------------------------------------------
    def search_values(self, index, knobs: dict) -> dict:
        """The index's stored params overridden by the given knobs (checked)."""
        return {**index.params, **self.check_knobs(knobs)}

    def gpu_copy(self, index, faiss) -> Any:
        """The GPU copy of the index to search (made once, kept on the index), or None to search the CPU one."""
        return None

    def search_gpu(self, faiss, gpu, q: np.ndarray, k: int, p: dict) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError(f"a {self.name} index is searched on the CPU")

    def search(self, index, q: np.ndarray, k: int, knobs: dict, sel=None) -> tuple[np.ndarray, np.ndarray]:
        """Faiss search with the stored parameters and `knobs`; `sel` (a Faiss ID selector) keeps only the ids it
        selects, on the CPU index (Faiss's GPU indexes take no selector)."""
        faiss = require_faiss(self.name)
        p = self.search_values(index, knobs)
        gpu = self.gpu_copy(index, faiss) if sel is None else None
        if gpu is not None:
            return self.search_gpu(faiss, gpu, q, k, p)
        return self.search_cpu(faiss, index, q, k, p, {"sel": sel} if sel is not None else {})

    def widen(self, knobs: dict, params: dict, k: int, total: int, kept: int) -> dict:
        """The knobs of a search that a filter narrows from `total` rows to `kept` (as given, unless the kind
        walks further to keep its recall)."""
        return knobs

    def search_among(self, index, q: np.ndarray, k: int, allowed: np.ndarray, rows: np.ndarray,
                     knobs: dict) -> tuple[np.ndarray, np.ndarray]:
        """Faiss's ID selector (a bitmap of the allowed rows) in the search parameters, on the CPU index."""
        faiss = require_faiss(self.name)
        knobs = self.widen(knobs, index.params, k, len(allowed), len(rows))
        bits = np.packbits(allowed, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        s, found = self.search(index, q, k, knobs, sel=selector)
        del selector, bits  # the selector points into bits: both live until the search returned
        return s, found

    # ---- rows and files -----------------------------------------------------------------------------
    def add(self, index, x: np.ndarray) -> None:
        for start in range(0, len(x), ADD_BATCH):
            index.faiss_index.add(x[start:start + ADD_BATCH])
        index._gpu_index = None

    def all_vectors(self, index) -> np.ndarray:
        require_faiss(self.name)
        return index.faiss_index.reconstruct_n(0, index.ntotal)

    def save(self, index, folder: Path) -> None:
        faiss = require_faiss(self.name)
        with atomic_path(folder / self.file) as f:
            faiss.write_index(index.faiss_index, str(f))

    def mmap_flag(self, faiss) -> int:
        """Faiss's read flag that maps the index from disk (IO_FLAG_MMAP maps IVF inverted lists)."""
        return faiss.IO_FLAG_MMAP

    def load(self, file: Path, dim: int, mmap: bool) -> tuple[Any, Any, int]:
        index = read_faiss(require_faiss(self.name), file, self, dim, mmap, IndexDirError)
        return None, index, index.ntotal
