"""Reading records that may come from someone else (model.json, embeddings manifests), field by field.

`read_json` refuses, in one line naming the file, what would otherwise be a traceback or a huge
allocation: a file over MAX_BYTES, text that is not UTF-8, JSON nested deeper than MAX_DEPTH, numbers
Python will not parse. `Fields` checks one JSON object against its schema, each field with its type
and bounds; the first bad field raises the caller's error class with the file, the field and what is
allowed. retrieval reads its records with the same `read_json` (retrieval/record.py).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

MAX_BYTES = 64 << 20  # the largest record sslforge writes is a model.json with ~100k class names
MAX_DEPTH = 32
_MISSING = object()


def depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: a hostile value cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def read_json(path: str | Path, error: type[Exception], what: str = "a record sslforge wrote") -> Any:
    """Parse the JSON file `path`, or raise `error` with one line that names the file and the problem."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise error(f"{path} cannot be read ({e.strerror or e})") from None
    if len(data) > MAX_BYTES:
        raise error(f"{path} is larger than {MAX_BYTES >> 20} MiB: not {what}")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text (bad byte at offset {e.start}): not {what}") from None
    except RecursionError:
        raise error(f"{path} nests deeper than {MAX_DEPTH} levels: not {what}") from None
    except ValueError as e:  # JSONDecodeError, and integers too long to convert
        raise error(f"{path} is not valid JSON ({str(e).splitlines()[0]}): not {what}") from None
    if depth(value) > MAX_DEPTH:
        raise error(f"{path} nests deeper than {MAX_DEPTH} levels: not {what}")
    return value


def kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


class Fields:
    """Typed, bounded access to the fields of one JSON object; `where` names it in errors ("FILE: backbone")."""

    def __init__(self, record: Any, where: str, error: type[Exception], path: str = ""):
        """`path` prefixes field names in messages ("backbone." gives "backbone.name must be ...")."""
        if not isinstance(record, dict):
            raise error(f"{where}: {path.rstrip('.')} must be a JSON object, not {kind(record)}" if path else
                        f"{where} must hold a JSON object, not {kind(record)}")
        self.record, self.where, self.error, self._path = record, where, error, path

    def fail(self, key: str, what: str) -> None:
        raise self.error(f"{self.where}: {self._path}{key} {what}")

    def _get(self, key: str, default: Any) -> Any:
        if key in self.record:
            return self.record[key]
        if default is _MISSING:
            self.fail(key, "is missing")
        return default

    def int(self, key: str, low: int, high: int, default: Any = _MISSING) -> int:
        v = self._get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
            self.fail(key, f"must be an integer from {low} to {high} (got {_short(v)})")
        return v

    def number(self, value: Any, key: str, low: float, high: float) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or \
                not low <= value <= high:
            self.fail(key, f"must be a number from {low} to {high} (got {_short(value)})")
        return float(value)

    def bool(self, key: str, default: Any = _MISSING) -> bool:
        v = self._get(key, default)
        if not isinstance(v, bool):
            self.fail(key, f"must be true or false (got {_short(v)})")
        return v

    def str(self, key: str, *, pattern: str | None = None, choices: tuple[str, ...] | None = None,
            max_len: int = 256, default: Any = _MISSING) -> str:
        v = self._get(key, default)
        if v is None and default is None:
            return v
        if choices is not None and v not in choices:
            self.fail(key, f"must be one of {', '.join(choices)} (got {_short(v)})")
        if not isinstance(v, str) or len(v) > max_len or (pattern and not re.fullmatch(pattern, v)):
            self.fail(key, f"must be a string{f' matching {pattern}' if pattern else ''} of at most {max_len} "
                           f"characters (got {_short(v)})")
        return v

    def obj(self, key: str, default: Any = _MISSING) -> dict | None:
        v = self._get(key, default)
        if v is None and default is None:
            return None
        if not isinstance(v, dict):
            self.fail(key, f"must be a JSON object, not {kind(v)}")
        return v

    def list(self, key: str, max_len: int, default: Any = _MISSING) -> list:
        v = self._get(key, default)
        if not isinstance(v, list) or len(v) > max_len:
            self.fail(key, f"must be a list of at most {max_len:,} items (got {kind(v)}"
                           f"{f' of {len(v):,}' if isinstance(v, list) else ''})")
        return v

    def sub(self, key: str, default: Any = _MISSING) -> Fields | None:
        """The object under `key`, checked in turn (None when absent or null and `default` is None)."""
        v = self.obj(key, default)
        return None if v is None else Fields(v, self.where, self.error, f"{self._path}{key}.")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
