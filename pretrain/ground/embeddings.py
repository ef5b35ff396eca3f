"""The embeddings dir, declared once: its format name, schema version and file names, and its writer.

    manifest.json       format, schema version, model fingerprint, backend, dim, dtype, count, shards, ...
    vectors-00000.npy   float32/float16 (rows, dim), rows L2-normalised
    ids-00000.jsonl     one {"path": relative path, "label": class folder or null} per row, same order
    failed.txt          "path<TAB>reason" of every image that could not be decoded

`sslforge embed` (export/embed.py) writes it shard by shard, retrieval reads it (retrieval/embeddings.py);
`write_embeddings` writes a whole dir from numpy (tests, benchmarks). Shard files are written atomically, the
manifest atomically and last: it only ever lists complete shards. Numpy only.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pretrain.ground.atomic import save_npy, write_json, write_text

FORMAT = "sslforge-embeddings"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
FAILED = "failed.txt"


def shard_files(index: int) -> tuple[str, str]:
    return f"vectors-{index:05d}.npy", f"ids-{index:05d}.jsonl"


def write_shard(out: Path, index: int, vectors: np.ndarray, ids: list[dict]) -> dict:
    """Write one shard's two files atomically; return its manifest entry."""
    if len(vectors) != len(ids):
        raise ValueError(f"shard {index}: {len(vectors)} vectors for {len(ids)} ids")
    vec_name, ids_name = shard_files(index)
    array = np.ascontiguousarray(vectors)
    save_npy(out / vec_name, array)
    write_text(out / ids_name, "".join(id_line(row) for row in ids))
    return {"vectors": vec_name, "ids": ids_name, "count": len(ids)}


def id_line(row: dict) -> str:
    """One id-table line. Names stay readable UTF-8; a file name that is not UTF-8 (os.fsdecode maps its bytes
    to lone surrogates) is written with JSON \\u escapes, which json.loads turns back into the same str, so
    os.fsencode(path) gives back the exact bytes of the name."""
    line = json.dumps(row, ensure_ascii=False)
    try:
        line.encode()
    except UnicodeEncodeError:
        line = json.dumps(row)
    return line + "\n"


def write_manifest(out: Path, manifest: dict) -> None:
    write_json(out / MANIFEST, manifest)


def write_embeddings(path: str | Path, vectors: np.ndarray, paths: list[str], labels: list[str | None] | None = None,
                     *, model_fingerprint: str | None = None, model: str = "", backend: str = "numpy", root: str = "",
                     shard_size: int = 100_000, dtype: str = "float32") -> Path:
    """Write a whole embeddings dir from numpy (shards first, manifest last; every file atomically)."""
    path = Path(path)
    vectors = np.asarray(vectors)
    labels = [None] * len(paths) if labels is None else labels
    if not (len(vectors) == len(paths) == len(labels)):
        raise ValueError(f"{path}: {len(vectors)} vectors, {len(paths)} paths and {len(labels)} labels differ")
    norms = np.linalg.norm(vectors, axis=1) if len(vectors) else np.ones(0)
    shards = []
    for i, start in enumerate(range(0, len(vectors), shard_size)):
        end = min(start + shard_size, len(vectors))
        rows = np.ascontiguousarray(vectors[start:end], dtype=dtype)
        shards.append(write_shard(path, i, rows, [{"path": p, "label": lab}
                                                  for p, lab in zip(paths[start:end], labels[start:end])]))
    write_manifest(path, {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "model_fingerprint": model_fingerprint, "model": model,
        "backend": backend, "dim": int(vectors.shape[1]), "dtype": dtype,
        "normalized": bool(np.allclose(norms, 1.0, atol=1e-3)), "root": root, "count": len(vectors), "failed": 0,
        "complete": True, "shards": shards,
    })
    return path
