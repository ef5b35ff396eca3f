"""Reader of the embeddings dir that `sslforge embed` writes (its format is declared in pretrain/ground/embeddings.py).

    emb/NAME/manifest.json        format, schema_version, model_fingerprint, dim, dtype, count, shards, ...
    emb/NAME/vectors-00000.npy    float32 or float16 rows, [n_rows, dim]
    emb/NAME/ids-00000.jsonl      one {"path": ..., "label": ... | null} per row, same order

Row ids are global row numbers in shard order. retrieval reads the format itself (nothing of export, the
stage that writes it); `write_embeddings`, re-exported here from the ground, writes a whole dir from numpy vectors
(tests, benchmarks).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretrain.ground.embeddings import FORMAT, MANIFEST, SCHEMA_VERSION, write_embeddings
from retrieval.record import MAX_DIM, load_npy, need, read_record

__all__ = ["Embeddings", "EmbeddingsError", "read_embeddings", "read_id_rows", "write_embeddings"]


class EmbeddingsError(ValueError):
    """An embeddings dir is missing, of another format or schema version, incomplete, or inconsistent."""


@dataclass
class Embeddings:
    """A read embeddings dir: float32 vectors (N, D) and, per row, the image path and label."""

    path: Path
    manifest: dict
    vectors: np.ndarray
    paths: list[str]
    labels: list[str | None]

    @property
    def model_fingerprint(self) -> str | None:
        return self.manifest.get("model_fingerprint")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.paths)


def _read_manifest(path: Path) -> dict:
    file = path / MANIFEST
    manifest = read_record(file, fmt=FORMAT, version=SCHEMA_VERSION, fields=("dim", "count", "shards"),
                           error=EmbeddingsError, missing_hint="point --embeddings at a folder written by "
                                                               "`sslforge embed`", redo="embed the images again")
    where, E = str(file), EmbeddingsError
    need(manifest, "dim", where, E, "int", low=1, high=MAX_DIM)
    need(manifest, "count", where, E, "int")
    need(manifest, "dtype", where, E, "str", choices=("float32", "float16"), default="float32")
    need(manifest, "model_fingerprint", where, E, "str", pattern=r"[A-Za-z0-9:_.\-]{1,128}", high=128, default=None)
    need(manifest, "root", where, E, "str", high=4096, default="")
    if not need(manifest, "complete", where, E, "bool", default=False):
        raise EmbeddingsError(f"{file}: the embedding job is unfinished (complete: false); "
                              f"run `sslforge embed` again to resume it")
    for i, shard in enumerate(need(manifest, "shards", where, E, "list")):
        if not isinstance(shard, dict):
            raise EmbeddingsError(f"{file}: shards[{i}] must be a JSON object")
        need(shard, "vectors", f"{file}: shards[{i}]", E, "str", pattern=r"vectors-\d{5}\.npy", high=32)
        need(shard, "ids", f"{file}: shards[{i}]", E, "str", pattern=r"ids-\d{5}\.jsonl", high=32)
        need(shard, "count", f"{file}: shards[{i}]", E, "int")
    return manifest


def read_id_rows(file: Path, error: type[Exception], hint: str = "") -> tuple[list[str], list[str | None]]:
    """The id table shared by embeddings and index dirs: one JSON object per row, {"path": str, "label": str|null}.

    Paths read back exactly as written, names that are not UTF-8 included (JSON \\u escapes of os.fsdecode's
    surrogates); anything else on a line (bad bytes, another shape, deep nesting) is an error naming the line."""
    paths, labels = [], []
    with open(file, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line.decode("utf-8"))
                path, label = row["path"], row.get("label")
                if not isinstance(path, str) or not (label is None or isinstance(label, str)):
                    raise TypeError
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                raise error(f"{file}:{n}: expected {{\"path\": ..., \"label\": ...}}{hint}") from None
            paths.append(path)
            labels.append(label)
    return paths, labels


def _read_ids(file: Path, expected: int) -> tuple[list[str], list[str | None]]:
    paths, labels = read_id_rows(file, EmbeddingsError)
    if len(paths) != expected:
        raise EmbeddingsError(f"{file} has {len(paths)} rows, the manifest says {expected}")
    return paths, labels


def read_embeddings(path: str | Path) -> Embeddings:
    """Read every shard; check format, schema version, completeness, shard files and row counts."""
    path = Path(path)
    manifest = _read_manifest(path)
    dim = int(manifest["dim"])
    blocks, paths, labels = [], [], []
    for shard in manifest["shards"]:
        vfile, ifile, count = path / shard["vectors"], path / shard["ids"], int(shard["count"])
        for f in (vfile, ifile):
            if not f.is_file():
                raise EmbeddingsError(f"{f} is listed in {path / MANIFEST} but missing")
        v = load_npy(vfile, EmbeddingsError, mmap=True, redo="embed the images again")
        if v.ndim != 2 or v.shape != (count, dim) or v.dtype not in (np.float32, np.float16):
            raise EmbeddingsError(f"{vfile} has shape {tuple(v.shape)} ({v.dtype}), the manifest says ({count}, "
                                  f"{dim}) float32 or float16")
        blocks.append(v)
        p, lab = _read_ids(ifile, count)
        paths += p
        labels += lab
    if len(paths) != int(manifest["count"]):
        raise EmbeddingsError(f"{path / MANIFEST}: count is {manifest['count']} but the shards hold {len(paths)} rows")
    if len(blocks) == 1 and blocks[0].dtype == np.float32:
        vectors = blocks[0]  # memory-mapped, no copy
    else:
        vectors = np.concatenate(blocks).astype(np.float32, copy=False) if blocks else np.zeros((0, dim), np.float32)
    return Embeddings(path, manifest, vectors, paths, labels)
