"""The index-dir store: today's live index dir (retrieval/collection.py: Faiss or exact search, the change log, a
file lock for writers) behind the Store interface (retrieval/store.py), with its behaviour unchanged."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.collection import Collection
from retrieval.filters import Filter
from retrieval.index import Index


class DirStore:
    """A Collection seen as a Store; `index` is the live Index (for callers that know they hold a dir)."""

    def __init__(self, collection: Collection):
        self.collection = collection

    @classmethod
    def open(cls, path: str | os.PathLike, *, device: str = "auto", mmap: bool = False) -> DirStore:
        path = Path(path)
        return cls(Collection(Index.load(path, mmap=mmap, device=device), path, device))

    @classmethod
    def create(cls, path: str | os.PathLike, index: Index, source: str | None = None) -> DirStore:
        """Save a built Index as the dir `path` (replaced as a whole) and open it."""
        index.save(path, source=source)
        return cls(Collection(index, Path(path), index.device))

    # ---- what the collection is ---------------------------------------------------------------------------
    @property
    def index(self) -> Index:
        return self.collection.index

    @property
    def location(self) -> str:
        return str(self.collection.path)

    @property
    def path(self) -> Path:
        return self.collection.path

    device = property(lambda self: self.index.device)
    kind = property(lambda self: self.index.kind)
    dim = property(lambda self: self.index.dim)
    params = property(lambda self: self.index.params)
    info = property(lambda self: self.index.info)
    model_fingerprint = property(lambda self: self.index.model_fingerprint)
    ntotal = property(lambda self: self.index.ntotal)
    paths = property(lambda self: self.index.paths)
    labels = property(lambda self: self.index.labels)
    meta = property(lambda self: self.index.meta)
    removed = property(lambda self: self.index.removed)
    classes = property(lambda self: self.index.classes)

    def __len__(self) -> int:
        return len(self.index)

    def check_model(self, fingerprint: str | None) -> None:
        self.index.check_model(fingerprint)

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    # ---- changes ------------------------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, paths: list[str], labels: list[str | None] | None = None,
            meta: list[dict] | None = None, *, key: str | None = None) -> np.ndarray:
        return self.collection.add(vectors, paths, labels, meta, key=key)

    def remove(self, ids: np.ndarray | list[int]) -> int:
        return self.collection.remove(ids)

    def remove_where(self, where: Filter) -> int:
        return self.collection.remove_where(where)

    # ---- reading ------------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 10, where: Filter | None = None, **knobs: Any):
        return self.collection.search(queries, k, where, **knobs)

    def search_ids(self, queries: np.ndarray, k: int = 10, where: Filter | None = None, **knobs: Any):
        with self.collection.reading() as index:
            return index.search_ids(queries, k, where, **knobs)

    def vectors(self) -> np.ndarray:
        return self.index.all_vectors()

    def refresh(self) -> int:
        return self.collection.refresh()

    def sample_paths(self, count: int) -> list[str]:
        step = max(1, self.index.ntotal // max(count, 1))
        return self.index.paths[::step][:count]

    def close(self) -> None:
        pass
