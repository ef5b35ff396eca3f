"""Filtered search: which rows a query may return, by metadata equality and path prefix.

A filter is `field=value` conditions (all must hold; `label`, or a field given when the rows were added)
and an optional path prefix. It becomes a boolean mask over the index's rows (removed rows are never
allowed), which each index kind applies in its own way (retrieval/index.py):
- flat: exact search over the allowed rows only, so the result is the true top-k among them;
- hnsw, ivf, ivfpq without refine: Faiss's ID selector in the search parameters (the graph or the lists are
  walked as usual and only allowed ids are kept), on the CPU index (Faiss's GPU indexes take no selector);
- ivfpq with refine (no selector through IndexRefine): over-fetch and keep the allowed rows.
A filter never returns a row that does not match it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class FilterError(ValueError):
    """A filter names no field the index has, or is malformed."""


@dataclass(frozen=True)
class Filter:
    equals: dict[str, str] = field(default_factory=dict)  # field -> value; all must match
    path_prefix: str | None = None

    def __bool__(self) -> bool:
        return bool(self.equals) or bool(self.path_prefix)

    @classmethod
    def parse(cls, conditions: list[str] | None = None, path_prefix: str | None = None) -> Filter:
        """From `--where FIELD=VALUE` options (repeatable) and `--path-prefix`."""
        equals = {}
        for text in conditions or []:
            name, sep, value = text.partition("=")
            if not sep or not name.strip():
                raise FilterError(f"--where takes FIELD=VALUE (got {text!r})")
            equals[name.strip()] = value
        return cls(equals, path_prefix or None)

    def mask(self, paths: list[str], labels: list[str | None], meta: list[dict], removed: np.ndarray) -> np.ndarray:
        """Boolean (N,): the live rows that match every condition."""
        n = len(paths)
        allowed = np.ones(n, dtype=bool)
        allowed[np.asarray(removed, dtype=np.int64)] = False
        known = {"label"} | {k for row in meta for k in row}
        for name, value in self.equals.items():
            if name not in known:
                raise FilterError(f"no field {name!r} in this index (fields: {', '.join(sorted(known))})")
            column = labels if name == "label" else [row.get(name) for row in meta]
            allowed &= np.fromiter((str(v) == value if v is not None else False for v in column), bool, n)
        if self.path_prefix:
            allowed &= np.fromiter((p.startswith(self.path_prefix) for p in paths), bool, n)
        return allowed

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.equals.items()]
        if self.path_prefix:
            parts.append(f"path starts with {self.path_prefix!r}")
        return " and ".join(parts) or "none"
