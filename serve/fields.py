"""The text fields of the collection endpoints, parsed into what retrieval takes; BadInput (400) on anything else.

    where       /search, /duplicates: a JSON object {"field": "value", ...} (all must hold); "" = no filter
    path_prefix /search, /duplicates: only rows whose indexed path starts with it
    meta        /add: a JSON object (the same fields for every image) or a list of objects, one per image;
                "label" and "path" set the row's label and path, the other names are user fields to filter on
    ids         /remove: row ids, comma-separated ("3,5,8") or a JSON list ([3, 5, 8])

Each is the exact text the client sent (the guard keeps BentoML from decoding it): JSON nested too deep or with a
number too long for Python is a FieldError like any other bad JSON.
"""
from __future__ import annotations

import json
import re
from pathlib import PurePosixPath

from retrieval.filters import MAX_FIELDS, Filter
from retrieval.journal import MAX_ID
from retrieval.text import MAX_TEXT

SCALARS = (str, int, float, bool)
MAX_IDS = 10_000


class FieldError(ValueError):
    """A text field that does not parse (the engine answers it with a 400)."""


def _json(text: str, name: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise FieldError(f"field {name!r} must be JSON (got {text[:40]!r})") from None


def parse_where(where: str, path_prefix: str) -> Filter:
    equals = {}
    if where.strip():
        obj = _json(where, "where")
        if not isinstance(obj, dict) or not all(isinstance(v, SCALARS) for v in obj.values()):
            raise FieldError('field \'where\' takes a JSON object of field: value, e.g. {"label": "cat"}')
        equals = {str(k): _text(v) for k, v in obj.items()}
        if len(equals) > MAX_FIELDS or any(len(k) > MAX_TEXT or len(v) > MAX_TEXT for k, v in equals.items()):
            raise FieldError(f"field 'where': at most {MAX_FIELDS} conditions, names and values of at most "
                             f"{MAX_TEXT:,} characters")
    if len(path_prefix) > MAX_TEXT:
        raise FieldError(f"field 'path_prefix': {len(path_prefix):,} characters; a path has at most {MAX_TEXT:,}")
    return Filter(equals, path_prefix or None)


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def upload_name(name: str, i: int) -> str:
    """A client's file name as a row path: its last component ("upload-I" when it has none)."""
    return PurePosixPath(name.replace("\\", "/")).name or f"upload-{i}"


def parse_meta(meta: str, names: list[str]) -> tuple[list[str], list[str | None], list[dict]]:
    """(paths, labels, user fields) of the uploaded rows. A row's path defaults to the upload's file name."""
    n = len(names)
    obj = _json(meta, "meta") if meta.strip() else {}
    rows = [obj] * n if isinstance(obj, dict) else obj
    if not isinstance(rows, list) or len(rows) != n or not all(isinstance(r, dict) for r in rows):
        raise FieldError(f"field 'meta' takes a JSON object (for every image) or a list of {n} objects (one per "
                         f"image, in upload order)")
    paths, labels, fields = [], [], []
    for i, (row, name) in enumerate(zip(rows, names)):
        if not all(isinstance(v, SCALARS) or v is None for v in row.values()):
            raise FieldError(f"meta of image {i}: values must be text, numbers or true/false")
        row = {str(k): _text(v) for k, v in row.items() if v is not None}
        path = row.pop("path", None) or upload_name(name, i)
        if path.startswith("/") or ".." in PurePosixPath(path).parts:
            raise FieldError(f"meta of image {i}: path {path[:60]!r} must be relative, without '..'")
        paths.append(path)
        labels.append(row.pop("label", None))
        fields.append(row)
    return paths, labels, fields


def parse_ids(ids: str) -> list[int]:
    text = ids.strip()
    if text.startswith("["):
        values = _json(text, "ids")
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise FieldError("field 'ids' takes row ids: 3,5,8 or [3, 5, 8]")
    elif re.fullmatch(r"\s*\d{1,19}(\s*,\s*\d{1,19})*\s*", text):
        values = [int(v) for v in text.split(",")]
    else:
        raise FieldError(f"field 'ids' takes row ids: 3,5,8 or [3, 5, 8] (got {text[:40]!r})")
    if not values or len(values) > MAX_IDS:
        raise FieldError(f"field 'ids': give 1 to {MAX_IDS:,} ids")
    big = next((v for v in values if not 0 <= v <= MAX_ID), None)
    if big is not None:
        raise FieldError(f"field 'ids': {str(big)[:24]} is not a row id (ids are 0 to {MAX_ID})")
    return values
