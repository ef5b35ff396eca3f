"""Stored strings (row paths, labels, user fields): what a write may store, and how a stored string is shown.

A live write (`Collection.add`: the service's /add, `sslforge index add`) stores only text that is valid UTF-8
(no lone surrogates, what JSON's "\\udcff" escapes and undecodable file names make), without control characters
(NUL, ESC, newlines: the JSON escapes "\\u0000" and "\\u001b" included) and within a length. Rows already stored
(an index built from a folder whose file names are not clean, an older dir) still load; every place that shows a
stored string goes through `shown` (terminals) or `clean` (JSON answers), so a bad one can neither break an
answer nor drive the terminal.
"""
from __future__ import annotations

import re

MAX_TEXT = 1024  # characters of a row's path, label or user-field value
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL, C1 (ESC-like sequences in some terminals)
SURROGATE = re.compile(r"[\ud800-\udfff]")
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def text_problem(value: str, limit: int = MAX_TEXT) -> str | None:
    """Why `value` may not be stored (None when it may)."""
    if len(value) > limit:
        return f"{len(value):,} characters; the limit is {limit:,}"
    if SURROGATE.search(value):
        return "not valid UTF-8 (a lone surrogate, e.g. a JSON \\udcff escape)"
    if CONTROL.search(value):
        return "a control character (NUL, ESC, a newline, ...)"
    return None


def check_new_rows(paths: list[str], labels: list[str | None], meta: list[dict], error: type[Exception]) -> None:
    """Refuse (`error`, one line) a row whose path, label or user field (name or value) may not be stored."""
    for i, (path, label, fields) in enumerate(zip(paths, labels, meta)):
        items = [("path", path)] + ([("label", label)] if label is not None else [])
        items += [(f"field name {k[:40]!r}", k) for k in fields]
        items += [(f"field {k[:40]!r}", v) for k, v in fields.items()]
        for what, value in items:
            if not isinstance(value, str):
                raise error(f"row {i}: {what} must be text")
            problem = text_problem(value)
            if problem:
                raise error(f"row {i}: {what}: {problem}")


def _escape(match: re.Match) -> str:
    c = ord(match.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def shown(value: object) -> str:
    """`value` as text safe for a terminal: control characters, lone surrogates and bidirectional overrides as
    \\xNN / \\uNNNN escapes (everything else as is)."""
    return UNSAFE.sub(_escape, str(value))


def clean(value: object) -> object:
    """`value` (a JSON-able answer) with every string `shown`: it encodes as UTF-8 and displays harmlessly."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value
