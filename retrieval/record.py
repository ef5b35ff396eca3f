"""Reading the files of an embeddings or index dir, which may come from someone else: the JSON record at
its head (checked field by field, with bounds) and its .npy arrays (header checked before any allocation).

Every failure is one line naming the file. The JSON reading rule is pretrain/ground/schema.py's `read_json` (the
model dir's too); this module adds the record's format and version check, field bounds and the .npy checks.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.ground.schema import read_json

MAX_DIM = 65536
MAX_ROWS = 1 << 40
_MISSING = object()


def read_record(file: Path, *, fmt: str, version: int, fields: tuple[str, ...], error: type[Exception],
                missing_hint: str, redo: str) -> dict:
    """Parse `file`; check format, schema version and required fields, each failure one line naming the file."""
    if not file.is_file():
        raise error(f"{file} not found: {missing_hint}")
    record = read_json(file, error)
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise error(f"{file}: format is {record.get('format') if isinstance(record, dict) else None!r}, "
                    f"expected {fmt!r}")
    if record.get("schema_version") != version:
        raise error(f"{file}: schema_version {record.get('schema_version')} is not supported (this sslforge reads "
                    f"{version}); {redo}")
    missing = [k for k in fields if k not in record]
    if missing:
        raise error(f"{file}: field {missing[0]!r} is missing; {redo}")
    return record


def need(record: dict, key: str, where: str, error: type[Exception], kind: str, *, low: float = 0,
         high: float = MAX_ROWS, choices: tuple | None = None, pattern: str | None = None,
         default: Any = _MISSING) -> Any:
    """`record[key]` checked against its kind (int, number, bool, str, object, list) and bounds; `where` names
    the file (and the object inside it) in the error. A missing key gives `default`, or is an error."""
    if key not in record:
        if default is _MISSING:
            raise error(f"{where}: {key} is missing")
        return default
    v = record[key]
    if v is None and default is None:
        return None
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    ok = {"int": number and isinstance(v, int) and low <= v <= high,
          "number": number and math.isfinite(v) and low <= v <= high,
          "bool": isinstance(v, bool), "object": isinstance(v, dict), "list": isinstance(v, list),
          "str": isinstance(v, str) and len(v) <= high and (pattern is None or re.fullmatch(pattern, v) is not None),
          }[kind]
    if choices is not None:
        ok = ok and v in choices
    if not ok:
        what = {"int": f"an integer from {low:g} to {high:g}", "number": f"a number from {low:g} to {high:g}",
                "bool": "true or false", "object": "a JSON object", "list": "a list",
                "str": f"a string{f' matching {pattern}' if pattern else ''} of at most {high:g} characters"}[kind]
        if choices is not None:
            what = f"one of {', '.join(map(str, choices))}"
        raise error(f"{where}: {key} must be {what} (got {str(v)[:40]!r})")
    return v


def load_npy(file: Path, error: type[Exception], *, mmap: bool, redo: str) -> np.ndarray:
    """A .npy array: memory-mapped first, so a header that claims more rows than the file holds is refused
    before any allocation; object arrays (pickles) are refused. Copied into memory unless `mmap`."""
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise error(f"{file} is not a readable .npy array ({str(e).splitlines()[0][:120]}): {redo}") from None
    return array if mmap else np.array(array)
