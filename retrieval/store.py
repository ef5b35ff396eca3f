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
import re
from typing import Any, Protocol, runtime_checkable

import numpy as np

from retrieval.filters import Filter
from retrieval.kinds import IndexDirError

URL_SCHEMES = ("postgresql://", "postgres://")
ENV = "SSLFORGE_INDEX"


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
            meta: list[dict] | None = None) -> np.ndarray: ...
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


def is_database(location: str | os.PathLike | None) -> bool:
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def display(location: str | os.PathLike) -> str:
    """The location as messages show it: a URL's password replaced by ***."""
    text = str(location)
    return re.sub(r"^(postgres(?:ql)?://[^:/@?#]*):[^@/?#]*@", r"\1:***@", text) if is_database(text) else text


def location_or_env(location: str | None, option: str = "--index") -> str:
    """The given location, else $SSLFORGE_INDEX; IndexDirError when neither is set."""
    location = location or os.environ.get(ENV)
    if not location:
        raise IndexDirError(f"no collection given: pass {option} (an index dir or a postgresql:// URL) or set {ENV}")
    return location


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


def sorted_classes(labels: list[str | None], removed: np.ndarray) -> list[str]:
    """Sorted distinct labels of the live rows."""
    live = np.ones(len(labels), bool)
    live[np.asarray(removed, dtype=np.int64)] = False
    return sorted({lab for lab, ok in zip(labels, live) if ok and lab is not None})
