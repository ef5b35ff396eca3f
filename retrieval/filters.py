"""Filtered search: which rows a query may return, by metadata equality and path prefix.

A filter is `field=value` conditions (all must hold; `label`, or a field given when the rows were added)
and an optional path prefix. It becomes a boolean mask over the index's rows (removed rows are never
allowed), which each index kind applies in its own way (`search_among`, retrieval/kinds/):
- flat: exact search over the allowed rows only, so the result is the true top-k among them;
- hnsw, ivf, ivfpq (with or without refine): Faiss's ID selector (a bitmap of the allowed rows) in the search
  parameters: the graph or the lists are walked as usual and only allowed ids are kept (HNSW's candidate list
  widened by the share of rows the filter leaves out, so a selective filter keeps its recall). It runs on the
  CPU index: Faiss's GPU indexes take no
  selector, so a filtered search of a GPU-searched IVF index falls back to its CPU copy.
A filter never returns a row that does not match it (the ids are checked against the mask once more).
"""
from __future__ import annotations

import bisect
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.text import shown

MAX_FIELDS, MAX_KEY, MAX_VALUE = 32, 64, 1024  # per row: user fields, characters of a name, of a value


class FilterError(ValueError):
    """A filter names no field the index has, or is malformed."""


class UnknownField(FilterError):
    """A filter on a field no row has; `field` is its name (the message lists the index's fields: for the operator,
    not for anonymous clients)."""

    def __init__(self, field: str, known: set[str]):
        super().__init__(f"no field {field!r} in this index (fields: {', '.join(sorted(map(shown, known)))})")
        self.field = field


@dataclass(frozen=True)
class Filter:
    equals: dict[str, str] = field(default_factory=dict)  # field -> value; all must match
    path_prefix: str | None = None

    def __bool__(self) -> bool:
        return bool(self.equals) or bool(self.path_prefix)

    @classmethod
    def parse(cls, conditions: list[str] | None = None, path_prefix: str | None = None) -> Filter:
        """From `--where FIELD=VALUE` options (repeatable) and `--path-prefix`."""
        return cls(name_values(conditions, "--where", "FIELD=VALUE"), path_prefix or None)

    def mask(self, paths: list[str], labels: list[str | None], meta: list[dict], removed: np.ndarray,
             columns: Columns | None = None) -> np.ndarray:
        """Boolean (N,): the live rows that match every condition. With `columns` (the rows' fields kept as
        arrays by their index) the mask is a few numpy operations instead of a Python pass over every row."""
        cols = columns if columns is not None else Columns()
        cols.sync(paths, labels, meta)
        allowed = np.ones(len(paths), dtype=bool)
        allowed[np.asarray(removed, dtype=np.int64)] = False
        for name, value in self.equals.items():
            if name not in cols.known:
                raise UnknownField(name, cols.known)
            allowed &= cols.equal(name, value)
        if self.path_prefix:
            allowed &= cols.prefixed(self.path_prefix)
        return allowed

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.equals.items()]
        if self.path_prefix:
            parts.append(f"path starts with {self.path_prefix!r}")
        return " and ".join(parts) or "none"


class Columns:
    """The rows' label, user fields and paths as arrays, built on the first filtered search and extended as rows
    are added (an index's lists only grow; `reset` after rows are rewritten in place): a field is its values'
    codes (int32, -1 where a row has no value), a path prefix is a range of the sorted paths."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # searches of one index may run in several threads
        self.reset()

    def reset(self) -> None:
        self._source: tuple = ()
        self._rows = 0
        self.known: set[str] = {"label"}
        self._codes: dict[str, np.ndarray] = {}
        self._vocab: dict[str, dict[str, int]] = {}
        self._sorted: tuple[list[str], np.ndarray] | None = None

    def sync(self, paths: list[str], labels: list[str | None], meta: list[dict]) -> None:
        with self._lock:
            self._sync(paths, labels, meta)

    def _sync(self, paths: list[str], labels: list[str | None], meta: list[dict]) -> None:
        source = (id(paths), id(labels), id(meta))
        if source != self._source or len(paths) < self._rows:
            self.reset()
            self._source = source
        start, n = self._rows, len(paths)
        if start == n:
            return
        new: dict[str, list] = {"label": labels[start:n]}
        for i, row in enumerate(meta[start:n]):
            for key, value in row.items():
                if key not in new:
                    new[key] = [None] * (n - start)
                new[key][i] = value
        self.known |= set(new)
        for name in self.known:
            vocab = self._vocab.setdefault(name, {})
            values = new.get(name)
            codes = np.full(n - start, -1, np.int32) if values is None else np.fromiter(
                (-1 if v is None else vocab.setdefault(str(v), len(vocab)) for v in values), np.int32, n - start)
            self._codes[name] = np.concatenate([self._codes.get(name, np.full(start, -1, np.int32)), codes])
        self._rows = n
        self._paths = paths

    def equal(self, name: str, value: str) -> np.ndarray:
        code = self._vocab.get(name, {}).get(value)
        return np.zeros(self._rows, bool) if code is None else self._codes[name] == code

    def prefixed(self, prefix: str) -> np.ndarray:
        with self._lock:
            return self._prefixed(prefix)

    def _prefixed(self, prefix: str) -> np.ndarray:
        # rows added since the sort are checked one by one until they are an eighth of the sorted ones
        if self._sorted is None or self._rows - len(self._sorted[0]) > max(4096, len(self._sorted[0]) // 8):
            order = sorted(range(self._rows), key=self._paths.__getitem__)
            self._sorted = ([self._paths[i] for i in order], np.asarray(order, dtype=np.int64))
        ordered, order = self._sorted
        lo = bisect.bisect_left(ordered, prefix)
        # the paths with this prefix run from the prefix to its successor (the last character raised by one)
        stem = prefix.rstrip(chr(0x10FFFF))
        hi = bisect.bisect_left(ordered, stem[:-1] + chr(ord(stem[-1]) + 1), lo=lo) if stem else len(ordered)
        out = np.zeros(self._rows, bool)
        out[order[lo:hi]] = True
        for i in range(len(ordered), self._rows):
            out[i] = self._paths[i].startswith(prefix)
        return out


def name_values(texts: list[str] | None, option: str, form: str = "NAME=VALUE") -> dict[str, str]:
    """Repeated `NAME=VALUE` options (`--where`, `index add --field`) as a dict; FilterError on a malformed one."""
    pairs = {}
    for text in texts or []:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise FilterError(f"{option} takes {form} (got {text!r})")
        pairs[name.strip()] = value
    return pairs


def check_row_meta(meta: list[dict] | None, rows: int, error: type[Exception]) -> list[dict]:
    """Per-row user fields: `rows` dicts of str -> str within the bounds (names not `id`, `path`, `label`, `score`)."""
    if meta is None:
        return [{} for _ in range(rows)]
    if len(meta) != rows:
        raise error(f"{len(meta)} metadata rows for {rows} vectors: one per row")
    for i, row in enumerate(meta):
        if not isinstance(row, dict) or len(row) > MAX_FIELDS:
            raise error(f"metadata row {i}: expected an object of at most {MAX_FIELDS} fields")
        for key, value in row.items():
            if not (isinstance(key, str) and isinstance(value, str)) or not 0 < len(key) <= MAX_KEY \
                    or len(value) > MAX_VALUE or key in ("id", "path", "label", "score"):
                raise error(f"metadata row {i}: field {str(key)[:40]!r} must be a name of 1-{MAX_KEY} characters "
                            f"(not id, path, label or score) with a text value of at most {MAX_VALUE}")
    return [dict(row) for row in meta]


def read_meta_rows(file: Path, rows: int, error: type[Exception]) -> list[dict]:
    """meta.jsonl of an index dir: one object per row, checked like `check_row_meta`."""
    meta = []
    with open(file, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                meta.append(json.loads(line.decode("utf-8")))
            except (ValueError, RecursionError):
                raise error(f"{file}:{n}: not a JSON object; rebuild the index") from None
    try:
        return check_row_meta(meta, rows, error)
    except error as e:
        raise error(f"{file}: {e}; rebuild the index") from None


def search_allowed(index, q: np.ndarray, k: int, allowed: np.ndarray, knobs: dict) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each (normalised) query among the rows where `allowed` is true: (scores, ids), padded with -inf/-1."""
    rows = np.flatnonzero(allowed)
    scores = np.full((len(q), k), -np.inf, np.float32)
    ids = np.full((len(q), k), -1, np.int64)
    if len(rows) == 0:
        return scores, ids
    kk = min(k, len(rows))
    s, found = index.kind_obj.search_among(index, q, kk, allowed, rows, knobs)
    found = np.where((found >= 0) & allowed[np.maximum(found, 0)], found, -1)
    s = np.where(found >= 0, s, -np.inf)
    order = np.argsort(found < 0, axis=1, kind="stable")  # misses (none expected) to the end
    scores[:, :kk], ids[:, :kk] = np.take_along_axis(s, order, 1), np.take_along_axis(found, order, 1)
    return scores, ids
