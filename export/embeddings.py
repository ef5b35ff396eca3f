"""The embeddings dir as `sslforge embed` keeps it: failed.txt, and the manifest checks that resuming and merging
rely on. The format itself (names, schema version, the shard and manifest writer) is declared once, in
pretrain/ground/embeddings.py:

    manifest.json       format, schema version, model fingerprint, backend, dim, dtype, count, shards, ...
    vectors-00000.npy   float32/float16 (rows, dim), rows L2-normalised
    ids-00000.jsonl     one {"path": relative path, "label": class folder or null} per row, same order
    failed.txt          "path<TAB>reason" of every image that could not be decoded

Shard files are written atomically, then failed.txt, then the manifest (atomically, last): the
manifest only ever lists complete shards, which is what makes an interrupted job resumable.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from export.errors import ExportError
from pretrain.ground.atomic import write_text
from pretrain.ground.embeddings import FAILED, FORMAT, MANIFEST, SCHEMA_VERSION
from pretrain.ground.schema import Fields, read_json


def write_failed(out: Path, failed: list[tuple[str, str]]) -> None:
    """failed.txt holds names as the filesystem has them (bytes that are not UTF-8 included), one a line; tabs
    and line breaks inside a name are written as \\t, \\n, \\r."""
    write_text(out / FAILED, "".join(f"{_one_line(path)}\t{reason}\n" for path, reason in failed),
               errors="surrogateescape")


def _one_line(name: str) -> str:
    return name.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def read_failed(out: Path, count: int) -> list[tuple[str, str]]:
    """The first `count` entries of failed.txt (the ones the manifest vouches for)."""
    path = out / FAILED
    lines = path.read_text(errors="surrogateescape").split("\n")[:-1] if path.is_file() else []
    if len(lines) < count:
        raise ExportError(f"{path} lists {len(lines)} failed images, the manifest says {count}: delete {out} "
                          f"and embed again")
    return [tuple(line.split("\t", 1)) if "\t" in line else (line, "") for line in lines[:count]]


def read_manifest(out: str | Path, *, check_files: bool = True) -> dict:
    """Read and check a manifest: format, schema version, every field's type and bounds, and every listed shard
    file with its row count."""
    out = Path(out)
    path = out / MANIFEST
    if not path.is_file():
        raise ExportError(f"{out} is not an embeddings dir: it has no {MANIFEST}")
    manifest = read_json(path, ExportError, "an embeddings manifest")
    f = Fields(manifest, str(path), ExportError)
    if manifest.get("format") != FORMAT:
        raise ExportError(f"{path} is not an sslforge embeddings manifest (format {manifest.get('format')!r})")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ExportError(f"{path} has embeddings schema version {manifest.get('schema_version')}; this sslforge "
                          f"reads version {SCHEMA_VERSION}: embed the images again")
    _check_fields(f)
    if check_files:
        for shard in manifest["shards"]:
            vectors = out / shard["vectors"]
            if not vectors.is_file() or not (out / shard["ids"]).is_file():
                raise ExportError(f"{out}: shard {shard['vectors']} / {shard['ids']} listed in {MANIFEST} is missing")
            try:
                rows = np.load(vectors, mmap_mode="r").shape
            except (ValueError, OSError, EOFError) as e:
                raise ExportError(f"{vectors} is not a readable .npy array ({str(e).splitlines()[0][:120]}): "
                                  f"delete {out} and embed again") from None
            if rows != (shard["count"], manifest["dim"]):
                raise ExportError(f"{vectors} has shape {rows}, the manifest says ({shard['count']}, "
                                  f"{manifest['dim']})")
    return manifest


def _check_fields(f: Fields) -> None:
    rows = 1 << 40
    f.int("dim", 1, 65536)
    f.str("dtype", choices=("float32", "float16"))
    for key in ("count", "failed", "images"):
        f.int(key, 0, rows, default=0)
    f.int("shard_size", 1, rows, default=1)
    f.bool("complete", default=False)
    f.bool("normalized", default=True)
    f.str("root", max_len=4096, default="")
    for key in ("model_fingerprint", "model", "backend", "files_sha256"):
        f.str(key, max_len=4096, default=None)
    part = f.sub("part", default=None)
    if part is not None:
        count = part.int("count", 1, rows)
        part.int("index", 0, count - 1)
        part.int("first", 0, rows)
        part.int("total", 0, rows)
    for i, shard in enumerate(f.list("shards", 1 << 24)):
        s = Fields(shard, f.where, ExportError, f"shards[{i}].")
        s.str("vectors", pattern=r"vectors-\d{5}\.npy")
        s.str("ids", pattern=r"ids-\d{5}\.jsonl")
        s.int("count", 0, rows)


def load_embeddings(out: str | Path) -> tuple[np.ndarray, list[dict], dict]:
    """All vectors (count, dim), their id rows and the manifest (small collections, tests, merging)."""
    out = Path(out)
    manifest = read_manifest(out)
    vectors = [np.load(out / s["vectors"]) for s in manifest["shards"]]
    ids = [json.loads(line) for s in manifest["shards"] for line in (out / s["ids"]).read_text().splitlines()]
    dtype = np.dtype(manifest["dtype"])
    return (np.concatenate(vectors) if vectors else np.zeros((0, manifest["dim"]), dtype)), ids, manifest
