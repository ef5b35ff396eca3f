"""Idempotency keys of adds, what every store shares: the key's form, what a key is bound to, and the error of a
key sent again with another add. A store remembers the MAX_KEYS most recent keys of a collection."""
from __future__ import annotations

import hashlib
import json

from retrieval.kinds import IndexDirError

MAX_KEY_TEXT = 256  # characters of an idempotency key or its digest
MAX_KEYS = 10_000  # idempotency keys remembered per collection (the oldest is forgotten first)


class KeyReused(IndexDirError):
    """An idempotency key sent again with a different add."""


def check_key(key: str | None) -> str | None:
    if key is not None and not (0 < len(key) <= MAX_KEY_TEXT and key.isprintable() and key.isascii()):
        raise IndexDirError(f"an idempotency key must be 1 to {MAX_KEY_TEXT} printable ASCII characters")
    return key


def add_digest(paths: list[str], labels: list[str | None], meta: list[dict], count: int) -> str:
    """What an idempotency key is bound to: the rows' paths, labels, fields and count."""
    return hashlib.sha256(json.dumps([list(paths), labels, meta, count]).encode()).hexdigest()[:32]


def reused(key: str) -> KeyReused:
    return KeyReused(f"the idempotency key {key!r} was used for another add (other images, paths, labels or "
                     f"fields): send a new key for a new add")
