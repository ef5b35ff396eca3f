"""A searchable collection: a Faiss index (or, for exact search, the vectors themselves) plus its id table.

    idx/NAME/index.json    format, schema_version, kind, metric, dim, count, params, model_fingerprint,
                           build time, built on cpu/gpu, source embeddings
    idx/NAME/index.faiss   the Faiss index (hnsw, ivf, ivfpq)  |  vectors.npy (flat: the matrix itself,
                           memory-mappable and searchable by Faiss or by the torch fallback)
    idx/NAME/ids.jsonl     row id -> {"path": ..., "label": ...}
    idx/NAME/removed.npy   ids removed since the build; never returned (rebuild to reclaim their space)
    idx/NAME/meta.jsonl    row id -> {user field: value} (only when rows carry fields; filtered search)
    idx/NAME/changes.log   adds and removes since this snapshot (retrieval/journal.py), replayed by `load`

Similarity is cosine: every vector, stored or query, is L2-normalised and compared by inner product.
A saved index dir is replaced as a whole (written to a sibling temporary folder, then swapped in), so a
killed build leaves the previous index readable. Processes that change a live index share it through
retrieval/collection.py (a lock, the change log, `refresh`).
"""
from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.ground.atomic import replace_dir, save_npy, write_json, write_jsonl
from pretrain.ground.knn import l2_normalize
from retrieval.embeddings import read_id_rows
from retrieval.filters import Columns, Filter, check_row_meta, read_meta_rows, search_allowed
from retrieval.indexfiles import check_meta, read_removed
from retrieval.journal import LOG_FILE, apply, read_changes
from retrieval.kinds import REGISTRY, IndexDirError, Kind, check_fingerprint, check_query, choose_kind, kind_of
from retrieval.record import read_record

FORMAT = "sslforge-index"
SCHEMA_VERSION = 1
INDEX_JSON, IDS_FILE, REMOVED_FILE, META_FILE = "index.json", "ids.jsonl", "removed.npy", "meta.jsonl"


class Index:
    """Cosine-similarity search over L2-normalised vectors, with row ids mapped to (path, label).

    Build with `Index.build(vectors, paths, labels, kind=...)`, or read one with `Index.load(dir)`.
    `search` returns (scores (Q, k) float32, ids (Q, k) int64, metadata); missing results are id -1.
    """

    def __init__(self, *, kind: str, dim: int, params: dict, paths: list[str], labels: list[str | None],
                 vectors: np.ndarray | None = None, faiss_index: Any = None, removed: np.ndarray | None = None,
                 model_fingerprint: str | None = None, info: dict | None = None, path: Path | None = None,
                 device: str = "auto", read_only: bool = False, meta: list[dict] | None = None) -> None:
        self.kind, self.dim, self.params = kind, dim, params
        self.paths, self.labels = paths, labels
        self.meta = meta if meta is not None else [{} for _ in paths]  # per row: user fields (str -> str)
        self.vectors, self.faiss_index = vectors, faiss_index
        self.removed = np.unique(np.asarray(removed if removed is not None else [], dtype=np.int64))
        self.model_fingerprint, self.info = model_fingerprint, dict(info or {})
        self.path, self.device, self.read_only = path, device, read_only
        self.columns = Columns()  # the rows' fields as arrays for filtered searches (retrieval/filters.py)
        self.saved_count = 0  # rows of the snapshot on disk, which the change log extends
        self.log_end = 0  # bytes of the change log replayed (see retrieval/collection.py)

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: np.ndarray, paths: list[str], labels: list[str | None] | None = None, *,
              kind: str = "flat", model_fingerprint: str | None = None, device: str = "auto",
              progress: bool = True, seed: int = 0, meta: list[dict] | None = None, **params: Any) -> Index:
        """Index `vectors` (normalised here). kind "auto" picks by size (see `choose_kind`). `meta`: per row, the
        user fields filtered search can match (str -> str)."""
        x = l2_normalize(vectors)
        labels = [None] * len(paths) if labels is None else list(labels)
        meta = check_row_meta(meta, len(paths), IndexDirError)
        if not (len(x) == len(paths) == len(labels)):
            raise IndexDirError(f"{len(x)} vectors, {len(paths)} paths and {len(labels)} labels: one each per row")
        if len(x) == 0:
            raise IndexDirError("no vectors to index")
        info: dict[str, Any] = {}
        if kind == "auto":
            kind, info["auto_reason"] = choose_kind(len(x), x.shape[1])
        kind_obj = kind_of(kind)
        params = kind_obj.resolve(len(x), x.shape[1], params)
        start = time.perf_counter()
        vectors, faiss_index, built_on = kind_obj.build(x, params, device, progress, seed)
        index = cls(kind=kind, dim=x.shape[1], params=params, paths=list(paths), labels=labels, vectors=vectors,
                    faiss_index=faiss_index)
        index.model_fingerprint, index.device, index.meta = model_fingerprint, device, meta
        index.info = {**info, "build_seconds": round(time.perf_counter() - start, 3), "built_on": built_on,
                      "built_at": datetime.now(UTC).isoformat(timespec="seconds")}
        return index

    # ---- properties ---------------------------------------------------------------------------------
    @property
    def kind_obj(self) -> Kind:
        """The kind (retrieval/kinds/) that builds, searches, grows, saves and loads this index."""
        return kind_of(self.kind)

    @property
    def ntotal(self) -> int:
        """Rows ever added (ids 0 .. ntotal-1), removed ones included."""
        return len(self.paths)

    def __len__(self) -> int:
        """Rows that searches can return."""
        return self.ntotal - len(self.removed)

    @property
    def classes(self) -> list[str]:
        """Sorted distinct labels of the live rows (the kNN classifier's classes)."""
        live = np.ones(self.ntotal, bool)
        live[self.removed] = False
        return sorted({lab for lab, ok in zip(self.labels, live) if ok and lab is not None})

    def check_model(self, fingerprint: str | None) -> None:
        """Raise ModelMismatchError when `fingerprint` (the query model's) differs from the index's, or when
        only one side records a model, so that the match cannot be checked."""
        check_fingerprint(self.model_fingerprint, fingerprint, str(self.path or "the index"))

    # ---- search -------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 10, where: Filter | None = None,
               **knobs: Any) -> tuple[np.ndarray, np.ndarray, list]:
        """The k most cosine-similar live rows of each query (among those matching `where`): (scores, ids, metadata).

        metadata[q][j] is {"id", "path", "label", "score", **user fields} or None where fewer than k rows exist.
        Knobs override the stored search parameters: ef_search (hnsw), nprobe and refine (ivf, ivfpq).
        """
        scores, ids = self.search_ids(queries, k, where, **knobs)
        metadata = [[None if i < 0 else {**self.meta[i], "id": int(i), "path": self.paths[i],
                                         "label": self.labels[i], "score": float(s)} for s, i in zip(srow, irow)]
                    for srow, irow in zip(scores, ids)]
        return scores, ids, metadata

    def search_ids(self, queries: np.ndarray, k: int = 10, where: Filter | None = None,
                   **knobs: Any) -> tuple[np.ndarray, np.ndarray]:
        """`search` without the metadata (what benchmarks time)."""
        q = l2_normalize(check_query(queries, k, self.dim, str(self.path or "the index")))
        if where:
            allowed = where.mask(self.paths, self.labels, self.meta, self.removed, self.columns)
            return search_allowed(self, q, k, allowed, knobs)
        fetch = min(k + len(self.removed), self.ntotal)
        scores, ids = self.kind_obj.search(self, q, fetch, knobs)
        if len(self.removed):
            dead = (ids < 0) | np.isin(ids, self.removed)
            order = np.argsort(dead, axis=1, kind="stable")
            scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
            dead = np.take_along_axis(dead, order, 1)
            scores[dead], ids[dead] = -np.inf, -1
        scores, ids = scores[:, :k], ids[:, :k]
        if ids.shape[1] < k:
            scores = np.pad(scores, ((0, 0), (0, k - ids.shape[1])), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, k - ids.shape[1])), constant_values=-1)
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def all_vectors(self) -> np.ndarray:
        """The (normalised) vectors of every row: the matrix of a flat index, else read back from Faiss (IVF-PQ's
        are its compressed approximations)."""
        return self.kind_obj.all_vectors(self)

    # ---- changes ------------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise IndexDirError(f"{self.path} was loaded memory-mapped (read-only): load it with mmap=False "
                                f"to add, remove or save")

    def add(self, vectors: np.ndarray, paths: list[str], labels: list[str | None] | None = None,
            meta: list[dict] | None = None) -> np.ndarray:
        """Append rows (normalised here), with their user fields; returns their new ids."""
        self._check_writable()
        return self.append_rows(vectors, paths, labels, meta)

    def append_rows(self, vectors: np.ndarray, paths: list[str], labels: list[str | None] | None = None,
                    meta: list[dict] | None = None) -> np.ndarray:
        """`add` without the read-only check (replaying the change log onto a memory-mapped flat index)."""
        x = l2_normalize(vectors)
        labels = [None] * len(paths) if labels is None else list(labels)
        meta = check_row_meta(meta, len(paths), IndexDirError)
        if x.shape[1] != self.dim or not (len(x) == len(paths) == len(labels)):
            raise IndexDirError(f"add: got {len(x)} vectors of dimension {x.shape[1]}, {len(paths)} paths and "
                                f"{len(labels)} labels; the index needs dimension {self.dim} and one of each per row")
        ids = np.arange(self.ntotal, self.ntotal + len(x), dtype=np.int64)
        self.kind_obj.add(self, x)
        self.paths += list(paths)
        self.labels += labels
        self.meta += meta
        return ids

    def remove(self, ids: np.ndarray | list[int], *, force: bool = False) -> int:
        """Stop returning these ids; returns how many were live. Their space is reclaimed by a rebuild.
        `force`: also on a memory-mapped index (the removed set lives in memory)."""
        if not force:
            self._check_writable()
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        bad = ids[(ids < 0) | (ids >= self.ntotal)]
        if len(bad):
            raise IndexDirError(f"remove: id {bad[0]} is not in the index (ids are 0..{self.ntotal - 1})")
        before = len(self.removed)
        self.removed = np.union1d(self.removed, ids)
        return len(self.removed) - before

    # ---- disk ---------------------------------------------------------------------------------------
    @property
    def snapshot(self) -> str:
        """The id of the saved state this index was loaded from (a change log names it); "" before the first save."""
        return str(self.info.get("snapshot") or "")

    def replay(self, read: tuple[list, int]) -> None:
        """Apply changes read from this dir's change log (`journal.read_changes`) and advance `log_end`."""
        changes, end = read
        if self.read_only and not self.kind_obj.mmap_adds and any(c.vectors is not None for c in changes):
            raise IndexDirError(f"{self.path / LOG_FILE} holds added rows, which a memory-mapped {self.kind} index "
                                f"cannot take: run `sslforge index compact --index {self.path}` or load without --mmap")
        for change in changes:
            apply(self, change, self.path / LOG_FILE)
        self.log_end = end

    def save(self, path: str | Path, *, source: str | None = None) -> Path:
        """Write the index dir as a whole: into a sibling temporary folder, then renamed over `path`."""
        self._check_writable()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            self.kind_obj.save(self, tmp)
            write_jsonl(tmp / IDS_FILE, [{"path": p, "label": lab} for p, lab in zip(self.paths, self.labels)])
            save_npy(tmp / REMOVED_FILE, self.removed)
            if any(self.meta):
                write_jsonl(tmp / META_FILE, self.meta)
            if source is not None:
                self.info["source"] = source
            self.info["snapshot"] = uuid.uuid4().hex  # what a change log names as the snapshot it extends
            write_json(tmp / INDEX_JSON, {
                "format": FORMAT, "schema_version": SCHEMA_VERSION, "kind": self.kind, "metric": "ip",
                "dim": self.dim, "count": self.ntotal, "live": len(self), "params": self.params,
                "model_fingerprint": self.model_fingerprint, "file": self.kind_obj.file,
                **self.info})
            replace_dir(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.path, self.saved_count, self.log_end = path, self.ntotal, 0
        return path

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = False, model_fingerprint: str | None = None,
             device: str = "auto") -> Index:
        """Read an index dir; `mmap` maps the vectors / inverted lists from disk (read-only, little RAM).

        When `model_fingerprint` is given, it must match the index's (ModelMismatchError otherwise).
        """
        path = Path(path)
        meta = read_record(path / INDEX_JSON, fmt=FORMAT, version=SCHEMA_VERSION,
                           fields=("kind", "dim", "count", "params", "file"), error=IndexDirError,
                           missing_hint=f"build one with `sslforge index build --embeddings DIR --out {path}`",
                           redo="rebuild the index")
        check_meta(meta, path / INDEX_JSON, REGISTRY, IndexDirError)
        kind, dim, count = meta["kind"], meta["dim"], meta["count"]
        kind_obj = kind_of(kind)
        try:
            params = kind_obj.resolve(count, dim, meta["params"])
        except IndexDirError as e:
            raise IndexDirError(f"{path / INDEX_JSON}: params: {e}; rebuild the index") from None
        for name in (meta["file"], IDS_FILE, REMOVED_FILE):
            if not (path / name).is_file():
                raise IndexDirError(f"{path / name} is missing: rebuild the index")
        paths, labels = read_id_rows(path / IDS_FILE, IndexDirError, "; rebuild the index")
        vectors, faiss_index, stored = kind_obj.load(path / kind_obj.file, dim, mmap)
        if not (stored == len(paths) == count):
            raise IndexDirError(f"{path}: {meta['file']} holds {stored} rows, {IDS_FILE} {len(paths)}, {INDEX_JSON} "
                                f"says {count}: the dir is inconsistent, rebuild it")
        keys = ("format", "schema_version", "kind", "metric", "dim", "count", "live", "params", "model_fingerprint",
                "file")
        index = cls(kind=kind, dim=dim, params=params, paths=paths, labels=labels, vectors=vectors,
                    faiss_index=faiss_index, removed=read_removed(path / REMOVED_FILE, count, IndexDirError),
                    model_fingerprint=meta.get("model_fingerprint"),
                    info={k: v for k, v in meta.items() if k not in keys}, path=path, device=device, read_only=mmap)
        if (path / META_FILE).is_file():
            index.meta = read_meta_rows(path / META_FILE, count, IndexDirError)
        index.saved_count = count
        if (path / LOG_FILE).is_file():
            index.replay(read_changes(path / LOG_FILE, dim, index.snapshot, count))
        if model_fingerprint is not None:
            index.check_model(model_fingerprint)
        return index
