"""Reading an index dir written by `Index.save`, trusting none of its files: index.json is checked field by
field, index.faiss is read with Faiss's allocations capped (see read_faiss) and must be the kind and
dimension index.json says, the .npy arrays are checked before they are loaded, ids.jsonl row by row.
Every failure is one IndexDirError line naming the file and saying to rebuild."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.record import MAX_DIM, MAX_ROWS, load_npy, need

REDO = "rebuild the index"
INT_MAX = 2**31 - 1  # Faiss stores its parameters as C ints
FINGERPRINT = r"[A-Za-z0-9:_.\-]{1,128}"
OPTIONAL_INFO = {"root": "str", "source": "str", "auto_reason": "str", "built_at": "str", "build_seconds": "number",
                 "built_on": "str", "snapshot": "str"}


def check_meta(meta: dict, file: Path, kinds: Mapping[str, Any], error: type[Exception]) -> None:
    """index.json's fields (the format, version and required keys were checked by read_record); `kinds`: the
    index kinds by name, each with the `file` that holds its data."""
    kind = need(meta, "kind", str(file), error, "str", choices=tuple(kinds))
    need(meta, "metric", str(file), error, "str", choices=("ip",), default="ip")
    need(meta, "dim", str(file), error, "int", low=1, high=MAX_DIM)
    count = need(meta, "count", str(file), error, "int", high=MAX_ROWS)
    need(meta, "live", str(file), error, "int", default=count)
    need(meta, "file", str(file), error, "str", choices=(kinds[kind].file,))
    need(meta, "model_fingerprint", str(file), error, "str", pattern=FINGERPRINT, high=128, default=None)
    params = need(meta, "params", str(file), error, "object")
    for name, value in params.items():
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_MAX:
            raise error(f"{file}: params.{name} must be an integer from 1 to {INT_MAX} (got {value})")
    for key, kind_of in OPTIONAL_INFO.items():
        need(meta, key, str(file), error, kind_of, high=4096 if kind_of == "str" else 1e12, default=None)


def read_faiss(faiss, file: Path, kind: Any, dim: int, mmap: bool, error: type[Exception]) -> Any:
    """The Faiss index in `file`, of the Faiss kind `kind` (retrieval/kinds/base.py: its name, the Faiss classes
    it may hold, its read flag for mapping it from disk). While it is read, no single allocation may exceed twice
    the file's size or 1 GiB, whichever is larger (Faiss's own cap is 1 TiB): a header that lies about a size is
    refused."""
    flags = kind.mmap_flag(faiss) if mmap else 0
    limit = faiss.get_deserialization_vector_byte_limit()
    faiss.set_deserialization_vector_byte_limit(max(2 * file.stat().st_size, 1 << 30))
    try:
        index = faiss.read_index(str(file), flags)
    except (RuntimeError, MemoryError, ValueError) as e:
        reason = " ".join(str(e).split())
        raise error(f"{file} is not a readable Faiss index ({reason[-160:]}): {REDO}") from None
    finally:
        faiss.set_deserialization_vector_byte_limit(limit)
    name = type(index).__name__
    if name not in kind.faiss_types or index.d != dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise error(f"{file} holds a {name} index of dimension {index.d}, index.json says {kind.name} of dimension "
                    f"{dim} (inner product): {REDO}")
    return index


def read_vectors(file: Path, dim: int, mmap: bool, error: type[Exception]) -> np.ndarray:
    """A flat index's matrix: float32 rows of `dim` (its row count is checked with the id table's)."""
    vectors = load_npy(file, error, mmap=True, redo=REDO)
    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[1] != dim:
        raise error(f"{file} holds {vectors.dtype} {tuple(vectors.shape)}, index.json says float32 rows of "
                    f"dimension {dim}: {REDO}")
    return vectors if mmap else np.array(vectors)


def read_removed(file: Path, count: int, error: type[Exception]) -> np.ndarray:
    removed = load_npy(file, error, mmap=False, redo=REDO)
    if removed.ndim != 1 or removed.dtype.kind not in "iu" or (len(removed) and not (
            0 <= removed.min() and removed.max() < count)):
        raise error(f"{file} must hold row ids from 0 to {count - 1} (got {removed.dtype} {tuple(removed.shape)}): "
                    f"{REDO}")
    return removed
