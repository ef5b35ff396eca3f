"""A live index dir: rows added and removed while it is searched, by any number of processes, crash-safe.

    col = Collection.open("idx/NAME")           # loads the snapshot and replays its change log
    ids = col.add(vectors, paths, labels, meta)  # durable when it returns
    col.remove(ids); col.search(queries, k, where)
    col.compact()                                # folds the log into a new snapshot (`sslforge index compact`)

One writer at a time: every change takes an exclusive lock on a file beside the dir (idx/.NAME.lock), first
catches up with what others appended (`refresh`), so ids never collide, then appends its line to the change log
(retrieval/journal.py) and fsyncs it before it is applied and returned. Readers call `refresh` before they
search: it stats the log and index.json, reads only the new lines, and reloads after another process compacted.
A kill -9 at any moment loses no change that was returned and leaves a dir that loads: the log's torn last line
(a write never acknowledged) is ignored by readers and cut off by the next writer; a compaction swaps the whole
dir in one step. Thread-safe within a process (one lock around every call).
"""
from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.knn import l2_normalize
from retrieval.filters import Filter, check_row_meta
from retrieval.index import INDEX_JSON, Index, IndexDirError
from retrieval.journal import LOG_FILE, add_line, append, cut_torn, header_line, read_changes, remove_line

MAX_ADD_ROWS = 4096  # rows per change line (an add of more is split into several lines)


def lock_file(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


class Collection:
    """An Index kept in step with its dir: see the module docstring."""

    def __init__(self, index: Index, path: Path, device: str = "auto"):
        self.index, self.path, self.device = index, path, device
        self._mutex = threading.RLock()
        self._stamp = self._index_stamp()

    @classmethod
    def open(cls, path: str | Path, *, device: str = "auto", model_fingerprint: str | None = None) -> Collection:
        path = Path(path)
        index = Index.load(path, device=device, model_fingerprint=model_fingerprint)
        return cls(index, path, device)

    # ---- sharing the dir ------------------------------------------------------------------------------
    def _index_stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.path / INDEX_JSON).stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The exclusive lock across processes (and threads), with the index caught up and the log's torn tail
        (a crashed writer's) cut off."""
        with self._mutex:
            fd = os.open(lock_file(self.path), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._refresh()
                cut_torn(self.path / LOG_FILE, self.index.log_end)
                yield
            finally:
                os.close(fd)  # closing releases the lock

    def refresh(self) -> int:
        """Apply what other processes changed since the last call; returns the number of live rows."""
        with self._mutex:
            self._refresh()
            return len(self.index)

    def _refresh(self) -> None:
        stamp = self._index_stamp()
        if stamp != self._stamp:  # compacted (or rebuilt) by another process: read it again as a whole
            fingerprint = self.index.model_fingerprint
            index = Index.load(self.path, device=self.device)
            if index.model_fingerprint != fingerprint:
                raise IndexDirError(f"{self.path} was rebuilt with another model ({index.model_fingerprint}): "
                                    f"restart with the model it now holds")
            self.index, self._stamp = index, stamp
            return
        log = self.path / LOG_FILE
        try:
            size = log.stat().st_size
        except FileNotFoundError:
            return
        if size > self.index.log_end:
            i = self.index
            i.replay(read_changes(log, i.dim, i.snapshot, i.saved_count, i.log_end))

    def _append(self, line: bytes) -> None:
        """Append a change (under `_writing`), starting the log with its header when it has none."""
        log = self.path / LOG_FILE
        if self.index.log_end == 0:
            append(log, header_line(self.index.snapshot, self.index.saved_count))
            self.index.log_end = log.stat().st_size
        append(log, line)

    # ---- changes ----------------------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, paths: list[str], labels: list[str | None] | None = None,
            meta: list[dict] | None = None) -> np.ndarray:
        """Append rows; returns their ids once the change is on disk."""
        x = l2_normalize(np.asarray(vectors, dtype=np.float32))
        labels = [None] * len(paths) if labels is None else list(labels)
        meta = check_row_meta(meta, len(paths), IndexDirError)
        if x.ndim != 2 or x.shape[1] != self.index.dim or not (len(x) == len(paths) == len(labels)) or not len(x):
            raise IndexDirError(f"add: {len(x)} vectors of shape {tuple(x.shape)[1:]}, {len(paths)} paths, "
                                f"{len(labels)} labels; the index holds dimension {self.index.dim}, one of each a row")
        if not np.isfinite(x).all():
            raise IndexDirError("add: the vectors hold NaN or infinite values")
        with self._writing():
            first = self.index.ntotal
            for start in range(0, len(x), MAX_ADD_ROWS):
                rows = slice(start, start + MAX_ADD_ROWS)
                self._append(add_line(first + start, x[rows], paths[rows], labels[rows], meta[rows]))
            self._refresh()  # applies exactly the lines just written (the lock keeps everyone else out)
        return np.arange(first, first + len(x), dtype=np.int64)

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Stop returning these ids (durably); returns how many were live."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        with self._writing():
            bad = ids[(ids < 0) | (ids >= self.index.ntotal)]
            if len(bad):
                raise IndexDirError(f"remove: id {bad[0]} is not in the index (ids are 0..{self.index.ntotal - 1})")
            live = int(len(ids) - np.isin(ids, self.index.removed).sum())
            if live:
                self._append(remove_line(ids))
                self._refresh()
        return live

    def remove_where(self, where: Filter) -> int:
        """Stop returning every live row that matches `where` (durably); returns how many."""
        with self._writing():
            i = self.index
            ids = np.flatnonzero(where.mask(i.paths, i.labels, i.meta, i.removed))
            if len(ids):
                self._append(remove_line(ids))
                self._refresh()
        return len(ids)

    def compact(self) -> Path:
        """Fold the change log into a new snapshot of the dir (swapped in as a whole); ids stay as they are."""
        with self._writing():
            self.index.read_only = False
            path = self.index.save(self.path)
            self._stamp = self._index_stamp()
        return path

    # ---- reading ----------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 10, where: Filter | None = None, **knobs: Any):
        """`Index.search` on the current rows (after catching up with other processes' changes)."""
        with self._mutex:
            self._refresh()
            return self.index.search(queries, k, where=where, **knobs)

    def pending(self) -> int:
        """Bytes of change log not yet folded into the snapshot (0 after `compact`)."""
        try:
            return (self.path / LOG_FILE).stat().st_size
        except FileNotFoundError:
            return 0
