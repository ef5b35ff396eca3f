"""The collection behind one interface: an index dir (Faiss + change log, the embedded default) or a PostgreSQL
table with pgvector. Every caller (the CLI, the service, the demo) opens a location and talks to a `Store`.

    store = open_store("idx/photos")                                     # an index dir (retrieval/store_dir.py)
    store = open_store("postgresql://me@db:5432/app?table=photos")       # pgvector (retrieval/store_pg.py)
    ids = store.add(vectors, paths, labels, meta)        # durable (committed) when it returns
    store.remove(ids) / store.remove_where(Filter(...))  # returns how many live rows went
    scores, ids, hits = store.search(queries, k, where)  # like Index.search; ids -1 / hits None past the matches
    len(store), store.dim, store.model_fingerprint, store.check_model(fp), store.close()

A location is a path (an index dir) or a `postgresql://` (or `postgres://`) URL whose `table` parameter names the
collection; user, password, host, port and database come from the URL or from libpq's PG* environment variables.
Passwords are never printed: `display(location)` is what every message shows.

Reading every row (`paths`, `labels`, `meta`, `removed`, `ntotal`, `vectors()`) is for whole-collection work
(kNN classification, evaluation, dedup, copy); a row's id indexes those lists (ids never issued or removed are in
`removed`). Searches of a database store see every committed change at once; `refresh` lets an index dir catch up
with other processes (a database store has nothing to catch up).
"""
from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import numpy as np

from retrieval.filters import Filter
from retrieval.kinds import IndexDirError
from retrieval.location import ENV, display, is_database, location_or_env

__all__ = ["ENV", "Store", "build_store", "display", "is_database", "live_mask", "location_or_env", "open_store"]


@runtime_checkable
class Store(Protocol):
    """What every store answers (see the module docstring)."""

    kind: str  # flat | hnsw | ivf | ivfpq
    dim: int
    model_fingerprint: str | None
    params: dict
    info: dict  # root (the images' folder), source, build time, ...

    @property
    def location(self) -> str: ...  # for messages: the dir, or the URL without its password
    @property
    def ntotal(self) -> int: ...  # ids ever issued: 0 .. ntotal-1
    @property
    def paths(self) -> list[str]: ...
    @property
    def labels(self) -> list[str | None]: ...
    @property
    def meta(self) -> list[dict]: ...
    @property
    def removed(self) -> np.ndarray: ...
    @property
    def classes(self) -> list[str]: ...

    def __len__(self) -> int: ...
    def check_model(self, fingerprint: str | None) -> None: ...
    def add(self, vectors: np.ndarray, paths: list[str], labels: list[str | None] | None = None,
            meta: list[dict] | None = None, *, key: str | None = None) -> np.ndarray: ...
    def remove(self, ids: np.ndarray | list[int]) -> int: ...
    def remove_where(self, where: Filter) -> int: ...
    def search(self, queries: np.ndarray, k: int = 10, where: Filter | None = None,
               **knobs: Any) -> tuple[np.ndarray, np.ndarray, list]: ...
    def search_ids(self, queries: np.ndarray, k: int = 10, where: Filter | None = None,
                   **knobs: Any) -> tuple[np.ndarray, np.ndarray]: ...
    def vectors(self) -> np.ndarray: ...  # (ntotal, dim) float32, normalised; zero rows where removed
    def refresh(self) -> int: ...
    def sample_paths(self, count: int) -> list[str]: ...
    def close(self) -> None: ...


def open_store(location: str | os.PathLike, *, device: str = "auto", mmap: bool = False,
               model_fingerprint: str | None = None, pool_size: int = 4) -> Store:
    """The store at `location` (see the module docstring). `model_fingerprint`, when given, must match the
    store's (ModelMismatchError). `mmap` (index dirs): map the vectors from disk; `pool_size` (databases):
    connections this process keeps open."""
    if is_database(location):
        from retrieval.store_pg import PgStore

        store: Store = PgStore.open(str(location), pool_size=pool_size)
    else:
        from retrieval.store_dir import DirStore

        store = DirStore.open(location, device=device, mmap=mmap)
    if model_fingerprint is not None:
        try:
            store.check_model(model_fingerprint)
        except IndexDirError:
            store.close()
            raise
    return store


def live_mask(store: Store) -> np.ndarray:
    live = np.ones(store.ntotal, bool)
    live[store.removed] = False
    return live


def build_store(location: str | os.PathLike, vectors: np.ndarray, paths: list[str], labels: list[str | None], *,
                kind: str, model_fingerprint: str | None, meta: list[dict] | None = None,
                ids: np.ndarray | None = None, total: int | None = None, info: dict | None = None,
                source: str | None = None, dtype: str | None = None, device: str = "auto", progress: bool = True,
                seed: int = 0, preprocessing: dict | None = None, **params: Any) -> Store:
    """Build a collection at `location` from these rows, replacing what is there as a whole.

    `ids` (default 0..n-1): keep these row ids; `total`: ids issued so far (default: the largest + 1), so that
    the next add continues after them. `dtype` float16: a database stores halfvec (index dirs store float32).
    `preprocessing`: how the vectors were made (model dir, backend), recorded beside the fingerprint (databases)."""
    info = {**(info or {}), **({"source": source} if source else {})}
    if is_database(location):
        from retrieval.store_pg import PgStore

        return PgStore.create(str(location), dim=int(np.shape(vectors)[1]), kind=kind, params=params,
                              model_fingerprint=model_fingerprint, dtype=dtype or "float32", info=info, ids=ids,
                              total=total, vectors=vectors, paths=paths, labels=labels, meta=meta, progress=progress,
                              preprocessing=preprocessing)
    from retrieval.index import Index
    from retrieval.store_dir import DirStore

    if dtype not in (None, "float32"):
        raise IndexDirError(f"--dtype {dtype} applies to a database collection; an index dir stores float32")
    removed = None
    if ids is not None:  # ids with gaps (removed rows of the source): the gaps become removed rows of zeros
        ids = np.asarray(ids, dtype=np.int64)
        n = max(int(total or 0), int(ids.max()) + 1 if len(ids) else 0)
        x = np.zeros((n, np.shape(vectors)[1]), np.float32)
        x[ids] = vectors
        full_paths, full_labels, full_meta = [""] * n, [None] * n, [{} for _ in range(n)]
        for j, i in enumerate(ids.tolist()):
            full_paths[i], full_labels[i] = paths[j], labels[j]
            if meta is not None:
                full_meta[i] = meta[j]
        live = np.zeros(n, bool)
        live[ids] = True
        vectors, paths, labels, meta, removed = x, full_paths, full_labels, full_meta, np.flatnonzero(~live)
    index = Index.build(vectors, paths, labels, kind=kind, model_fingerprint=model_fingerprint, device=device,
                        progress=progress, seed=seed, meta=meta, **params)
    if removed is not None:
        index.removed = removed
    index.info.update({k: v for k, v in info.items() if k in ("root", "source")})
    return DirStore.create(location, index, source=info.get("source"))
