"""The change log of a live index dir: adds and removes since its snapshot, one line each, in idx/NAME/changes.log.

    <crc32 of the JSON, 8 hex digits> <JSON>\\n
    {"log": "sslforge-index-log", "version": 1, "snapshot": "<index.json's snapshot>", "count": N}   (first line)
    {"add": FIRST_ID, "rows": [{"path": ..., "label": ..., "meta": {...}}, ...], "vectors": "<base64 float32>"}
    {"remove": [ID, ...]}
    an add may also carry "key": [IDEMPOTENCY_KEY, DIGEST, FIRST_ID, COUNT] (on the last line of a split add)
    {"keys": [[IDEMPOTENCY_KEY, DIGEST, FIRST_ID, COUNT], ...]}   (after the header: the keys a compaction kept)

A change is appended in one write and fsync'd before it is acknowledged, so an acknowledged change survives a
crash. A crash mid-write leaves the last line without its newline: never acknowledged, so readers stop before it
and the next writer cuts it off (`cut_torn`). A bad line anywhere before is corruption, one IndexDirError line.
A well-formed remove of ids the index does not have (no writer of ours makes one) removes the ids it has and is
reported in one warning line naming the line; the log still loads, so no acknowledged change is lost.
`Index.load` replays the log onto the snapshot; `sslforge index compact` folds it into a new snapshot.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.filters import check_row_meta
from retrieval.keys import MAX_KEY_TEXT
from retrieval.kinds import IndexDirError

LOG_FILE = "changes.log"
LOG_FORMAT, LOG_VERSION = "sslforge-index-log", 1
MAX_LINE = 64 * 2**20  # one add of up to a few thousand rows; a longer line is not ours
MAX_ID = 2**63 - 1  # row ids are int64
log = logging.getLogger("sslforge.index")


@dataclass
class Change:
    """One line of the log: rows added (first id, vectors, paths, labels, user fields) or ids removed."""

    first: int | None = None
    vectors: np.ndarray | None = None
    paths: list[str] | None = None
    labels: list[str | None] | None = None
    meta: list[dict] | None = None
    removed: list[int] | None = None
    keys: list[list] | None = None  # idempotency keys: [key, digest, first id, count] each
    at: int = 0  # the line's byte offset in the log


def _line(obj: dict) -> bytes:
    text = json.dumps(obj, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(text), text)


def add_line(first: int, vectors: np.ndarray, paths: list[str], labels: list[str | None], meta: list[dict],
             key: list | None = None) -> bytes:
    rows = [{"path": p, "label": lab, "meta": m} for p, lab, m in zip(paths, labels, meta)]
    data = base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode()
    return _line({"add": int(first), "rows": rows, "vectors": data, **({"key": key} if key else {})})


def keys_line(keys: list[list]) -> bytes:
    return _line({"keys": keys})


def _key(entry) -> bool:
    """[key, digest, first id, count]: two short strings and two row-id numbers."""
    return (isinstance(entry, list) and len(entry) == 4
            and all(isinstance(v, str) and 0 < len(v) <= MAX_KEY_TEXT for v in entry[:2])
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_ID for v in entry[2:]))


def remove_line(ids: np.ndarray) -> bytes:
    return _line({"remove": [int(i) for i in ids]})


def header_line(snapshot: str, count: int) -> bytes:
    return _line({"log": LOG_FORMAT, "version": LOG_VERSION, "snapshot": snapshot, "count": int(count)})


def append(file: Path, line: bytes) -> None:
    """Append one line and make it durable (the file's data, and the folder's entry when the file is new)."""
    new = not file.exists()
    fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        dir_fd = os.open(file.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def cut_torn(file: Path, end: int) -> None:
    """Drop what follows the last complete line (a write a crash cut short: it was never acknowledged)."""
    if file.exists() and file.stat().st_size > end:
        os.truncate(file, end)


def _parse(raw: bytes, where: str) -> dict:
    crc, sep, text = raw.partition(b" ")
    try:
        ok = sep and len(crc) == 8 and int(crc, 16) == zlib.crc32(text)
        obj = json.loads(text) if ok else None
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        raise IndexDirError(f"{where}: a corrupt line (checksum or JSON): the log is damaged; restore the index dir "
                            f"from a backup or rebuild it")
    return obj


def _change(obj: dict, dim: int, where: str) -> Change:
    bad = IndexDirError(f"{where}: not a change this version writes; rebuild the index")
    if set(obj) == {"remove"}:
        ids = obj["remove"]
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise bad
        return Change(removed=ids)
    if set(obj) == {"keys"}:
        if not isinstance(obj["keys"], list) or not all(map(_key, obj["keys"])):
            raise bad
        return Change(keys=obj["keys"])
    if set(obj) - {"key"} != {"add", "rows", "vectors"} or not isinstance(obj["add"], int) \
            or not 0 <= obj["add"] <= MAX_ID or not isinstance(obj["rows"], list) \
            or not isinstance(obj["vectors"], str) or ("key" in obj and not _key(obj["key"])):
        raise bad
    rows = obj["rows"]
    try:
        vectors = np.frombuffer(base64.b64decode(obj["vectors"], validate=True), dtype="<f4")
    except (binascii.Error, ValueError):
        raise bad from None
    if not rows or vectors.size != len(rows) * dim or not np.isfinite(vectors).all():
        raise IndexDirError(f"{where}: {vectors.size} numbers for {len(rows)} rows of dimension {dim}; rebuild the "
                            f"index")
    for row in rows:
        if not (isinstance(row, dict) and set(row) == {"path", "label", "meta"} and isinstance(row["path"], str)
                and (row["label"] is None or isinstance(row["label"], str))):
            raise bad
    meta = check_row_meta([row["meta"] for row in rows], len(rows), IndexDirError)
    return Change(first=obj["add"], vectors=vectors.reshape(len(rows), dim).astype(np.float32),
                  paths=[row["path"] for row in rows], labels=[row["label"] for row in rows], meta=meta,
                  keys=[obj["key"]] if "key" in obj else None)


def read_changes(file: Path, dim: int, snapshot: str, count: int, offset: int = 0) -> tuple[list[Change], int]:
    """The complete changes from byte `offset` on (0: the start, header checked against the snapshot), and the
    offset after the last complete line. A last line without its newline is left for the next read."""
    changes, end = [], offset
    with open(file, "rb") as f:
        f.seek(offset)
        for raw in iter(lambda: f.readline(MAX_LINE), b""):
            if not raw.endswith(b"\n"):
                if len(raw) >= MAX_LINE:
                    raise IndexDirError(f"{file}: a line over {MAX_LINE:,} bytes: the log is damaged; rebuild")
                break  # torn: a write cut short by a crash, never acknowledged
            where = f"{file} at byte {end}"
            obj = _parse(raw[:-1], where)
            if end == 0:
                if obj.get("log") != LOG_FORMAT or obj.get("version") != LOG_VERSION:
                    raise IndexDirError(f"{where}: not an sslforge index log of version {LOG_VERSION}; rebuild the "
                                        f"index")
                if obj.get("snapshot") != snapshot or obj.get("count") != count:
                    raise IndexDirError(f"{file} extends another snapshot ({obj.get('count')} rows) than index.json "
                                        f"({count} rows): the dir was put together from two; rebuild the index")
            else:
                change = _change(obj, dim, where)
                change.at = end
                changes.append(change)
            end += len(raw)
    return changes, end


def apply(index, change: Change, where: Path) -> None:
    """Replay one change onto `index` (its rows must come next, its ids must exist)."""
    if change.removed is not None:
        ids = [i for i in change.removed if 0 <= i < index.ntotal]
        if len(ids) < len(change.removed):
            other = next(i for i in change.removed if not 0 <= i < index.ntotal)
            log.warning("%s at byte %d: a remove of %d ids the index does not have (e.g. %s) was skipped; the "
                        "others are removed", where, change.at, len(change.removed) - len(ids), str(other)[:24])
        index.remove(ids, force=True)
        return
    if change.first is None:  # idempotency keys only: nothing to apply
        return
    if change.first != index.ntotal:
        raise IndexDirError(f"{where}: an add of ids from {change.first}, the index has {index.ntotal} rows: the log "
                            f"does not continue this index; rebuild it")
    index.append_rows(change.vectors, change.paths, change.labels, change.meta)
