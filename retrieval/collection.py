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
dir in one step. Thread-safe within a process: searches run side by side (Faiss releases the GIL), a change or a
catch-up with another process's changes holds the index alone (retrieval/rwlock.py).

An add may carry an idempotency key: it is written in the add's own (last) log line, so the add and its key are
durable together; a later add with the same key, from any process and after a restart, writes nothing and answers
the first add's ids. The MAX_KEYS most recent keys are kept, across compactions too (in the new log's first line).
A compaction also drops the paths, labels and fields of removed rows (their ids stay taken).
"""
from __future__ import annotations

import fcntl
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.ground.knn import l2_normalize
from retrieval.filters import Filter, check_row_meta
from retrieval.index import INDEX_JSON, Index, IndexDirError
from retrieval.journal import (
    LOG_FILE,
    MAX_ID,
    add_line,
    append,
    cut_torn,
    header_line,
    keys_line,
    read_changes,
    remove_line,
)
from retrieval.keys import MAX_KEYS, KeyReused, add_digest, check_key, reused  # noqa: F401 (KeyReused: its API)
from retrieval.rwlock import ReadWriteLock
from retrieval.text import check_new_rows

MAX_ADD_ROWS = 4096  # rows per change line (an add of more is split into several lines)




def lock_file(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


class Collection:
    """An Index kept in step with its dir: see the module docstring."""

    def __init__(self, index: Index, path: Path, device: str = "auto"):
        self.index, self.path, self.device = index, path, device
        self._lock = ReadWriteLock()
        self._stamp = self._index_stamp()
        self.keys: OrderedDict[str, list] = OrderedDict()  # idempotency key -> [key, digest, first id, count]
        self._read_keys()

    @classmethod
    def open(cls, path: str | Path, *, device: str = "auto", model_fingerprint: str | None = None) -> Collection:
        path = Path(path)
        index = Index.load(path, device=device, model_fingerprint=model_fingerprint)
        return cls(index, path, device)

    # ---- sharing the dir ------------------------------------------------------------------------------
    def _read_keys(self) -> None:
        """The idempotency keys in the log (the snapshot's own rows were replayed by Index.load already)."""
        self.keys.clear()
        log = self.path / LOG_FILE
        if self.index.log_end and log.is_file():
            i = self.index
            self._remember(read_changes(log, i.dim, i.snapshot, i.saved_count)[0])

    def _remember(self, changes: list) -> None:
        for change in changes:
            for entry in change.keys or ():
                self.keys.pop(entry[0], None)
                self.keys[entry[0]] = entry
        while len(self.keys) > MAX_KEYS:
            self.keys.popitem(last=False)

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
        with self._lock.write():
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
        with self._lock.write():
            self._refresh()
            return len(self.index)

    def _stale(self) -> bool:
        """Whether another process changed the dir since the last catch-up (two stats, nothing read)."""
        if self._index_stamp() != self._stamp:
            return True
        try:
            return (self.path / LOG_FILE).stat().st_size > self.index.log_end
        except FileNotFoundError:
            return False

    @contextmanager
    def reading(self) -> Iterator[Index]:
        """The current index, caught up with other processes' changes, shared with other reading threads."""
        if self._stale():
            with self._lock.write():
                self._refresh()
        with self._lock.read():
            yield self.index

    def _refresh(self) -> None:
        stamp = self._index_stamp()
        if stamp != self._stamp:  # compacted (or rebuilt) by another process: read it again as a whole
            fingerprint = self.index.model_fingerprint
            index = Index.load(self.path, device=self.device)
            if index.model_fingerprint != fingerprint:
                raise IndexDirError(f"{self.path} was rebuilt with another model ({index.model_fingerprint}): "
                                    f"restart with the model it now holds")
            self.index, self._stamp = index, stamp
            self._read_keys()
            return
        log = self.path / LOG_FILE
        try:
            size = log.stat().st_size
        except FileNotFoundError:
            return
        if size > self.index.log_end:
            i = self.index
            read = read_changes(log, i.dim, i.snapshot, i.saved_count, i.log_end)
            i.replay(read)
            self._remember(read[0])

    def _append(self, line: bytes) -> None:
        """Append a change (under `_writing`), starting the log with its header when it has none."""
        log = self.path / LOG_FILE
        if self.index.log_end == 0:
            append(log, header_line(self.index.snapshot, self.index.saved_count))
            self.index.log_end = log.stat().st_size
        append(log, line)

    # ---- changes ----------------------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, paths: list[str], labels: list[str | None] | None = None,
            meta: list[dict] | None = None, *, key: str | None = None) -> np.ndarray:
        """Append rows; returns their ids once the change is on disk. With an idempotency `key` seen before (for
        the same paths, labels and fields), nothing is written and the first add's ids are returned."""
        x = l2_normalize(np.asarray(vectors, dtype=np.float32))
        labels = [None] * len(paths) if labels is None else list(labels)
        meta = check_row_meta(meta, len(paths), IndexDirError)
        check_new_rows(list(paths), labels, meta, IndexDirError)
        check_key(key)
        digest = add_digest(paths, labels, meta, len(x))
        if x.ndim != 2 or x.shape[1] != self.index.dim or not (len(x) == len(paths) == len(labels)) or not len(x):
            raise IndexDirError(f"add: {len(x)} vectors of shape {tuple(x.shape)[1:]}, {len(paths)} paths, "
                                f"{len(labels)} labels; the index holds dimension {self.index.dim}, one of each a row")
        if not np.isfinite(x).all():
            raise IndexDirError("add: the vectors hold NaN or infinite values")
        with self._writing():
            if key is not None and key in self.keys:
                _, seen, first, count = self.keys[key]
                if seen != digest:
                    raise reused(key)
                return np.arange(first, first + count, dtype=np.int64)
            first = self.index.ntotal
            for start in range(0, len(x), MAX_ADD_ROWS):
                rows = slice(start, start + MAX_ADD_ROWS)
                last = start + MAX_ADD_ROWS >= len(x)
                entry = [key, digest, first, len(x)] if key is not None and last else None
                self._append(add_line(first + start, x[rows], paths[rows], labels[rows], meta[rows], entry))
            self._refresh()  # applies exactly the lines just written (the lock keeps everyone else out)
        return np.arange(first, first + len(x), dtype=np.int64)

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Stop returning these ids (durably); returns how many were live."""
        big = [i for i in np.asarray(ids, dtype=object).ravel() if not -MAX_ID <= int(i) <= MAX_ID]
        if big:
            raise IndexDirError(f"remove: id {str(big[0])[:24]} is not in the index")
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
            ids = np.flatnonzero(where.mask(i.paths, i.labels, i.meta, i.removed, i.columns))
            if len(ids):
                self._append(remove_line(ids))
                self._refresh()
        return len(ids)

    def compact(self) -> Path:
        """Fold the change log into a new snapshot of the dir (swapped in as a whole); ids stay as they are."""
        with self._writing():
            i = self.index
            i.read_only = False
            for row in i.removed.tolist():  # removed rows keep their ids, not their strings
                i.paths[row], i.labels[row], i.meta[row] = "", None, {}
            i.columns.reset()  # rows rewritten in place
            path = i.save(self.path)
            self._stamp = self._index_stamp()
            if self.keys:
                self._append(keys_line(list(self.keys.values())))
                self._refresh()
        return path

    # ---- reading ----------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 10, where: Filter | None = None, **knobs: Any):
        """`Index.search` on the current rows (after catching up with other processes' changes)."""
        with self.reading() as index:
            return index.search(queries, k, where=where, **knobs)

    def pending(self) -> int:
        """Bytes of change log not yet folded into the snapshot (0 after `compact`)."""
        try:
            return (self.path / LOG_FILE).stat().st_size
        except FileNotFoundError:
            return 0
