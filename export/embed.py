"""`sslforge embed`: embed every image of a folder (or a file list) into an embeddings dir.

The image list is fixed up front (sorted recursive walk, or the given list) and cut into shards
of `shard_size` consecutive images; a shard is written once all its images are done, then the
manifest. Re-running the same command skips the shards the manifest lists, so a killed job
resumes after its last complete shard and ends with exactly the files an uninterrupted run writes.
Decoding and preprocessing run in DataLoader workers, overlapped with the model; an image that
cannot be decoded is recorded in failed.txt and skipped. `part=(i, n)` embeds the i-th of n
contiguous slices, so several GPUs or machines can split a folder; `merge_parts` joins them.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from export.embedder import Embedder
from export.embeddings import read_failed, read_manifest, write_failed
from export.errors import ExportError
from export.images import find_images, label_of
from pretrain.data.datasets import EvalDataset
from pretrain.data.heap import keep_heap
from pretrain.data.images import ImageList, load_rgb
from pretrain.ground.embeddings import FORMAT, MANIFEST, SCHEMA_VERSION, shard_files, write_manifest, write_shard

DTYPES = ("float32", "float16")
DEFAULT_SHARD_SIZE = 100_000


def parse_part(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n), 0 <= i < n."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ExportError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise ExportError(f"--shard {text}: need 0 <= i < n")
    return i, n


def part_range(total: int, part: tuple[int, int] | None) -> range:
    """The contiguous slice of `total` images that part (i, n) embeds."""
    if part is None:
        return range(total)
    i, n = part
    return range(i * total // n, (i + 1) * total // n)


class _IndexedDataset(EvalDataset):
    """EvalDataset that also returns the sample index, so each row is matched to its path."""

    def __getitem__(self, index: int):
        return (index, *super().__getitem__(index))


class _ShardBatches(Sampler):
    """Batches of consecutive indices that never cross a shard boundary, from shard `first_shard` on."""

    def __init__(self, total: int, shard_size: int, batch_size: int, first_shard: int):
        self.total, self.shard_size, self.batch_size, self.first_shard = total, shard_size, batch_size, first_shard

    def __iter__(self):
        for start in range(self.first_shard * self.shard_size, self.total, self.shard_size):
            end = min(start + self.shard_size, self.total)
            for b in range(start, end, self.batch_size):
                yield list(range(b, min(b + self.batch_size, end)))

    def __len__(self) -> int:
        shard_lengths = [min(self.shard_size, self.total - s)
                         for s in range(self.first_shard * self.shard_size, self.total, self.shard_size)]
        return sum(-(-n // self.batch_size) for n in shard_lengths)


def _decode_error(path: Path) -> str:
    try:
        load_rgb(path)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a reason to report
        return f"{type(e).__name__}: {e}".replace("\t", " ").replace("\n", " ")
    return "failed in a loader worker"


def _check_resumable(manifest: dict, expected: dict, out: Path) -> None:
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise ExportError(f"{out / MANIFEST} was written with {key}={manifest.get(key)!r}, this run has "
                              f"{value!r}: resume with the same options, or pick another --out")


def embed_images(embedder: Embedder, images: str | Path, out: str | Path, *, batch_size: int = 256,
                 workers: int = 2, shard_size: int = DEFAULT_SHARD_SIZE, dtype: str = "float32",
                 part: tuple[int, int] | None = None, progress: bool = True) -> dict:
    """Embed `images` into the embeddings dir `out` (resuming it when it holds an unfinished run); return the
    manifest, with the run's throughput under `throughput` (not stored)."""
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}")
    if batch_size < 1 or shard_size < 1 or workers < 0:
        raise ExportError("--batch-size and --shard-size must be >= 1, --workers >= 0")
    out = Path(out)
    source = find_images(images)
    chosen = part_range(len(source.paths), part)
    paths = source.paths[chosen.start:chosen.stop]
    identity = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "model_fingerprint": embedder.fingerprint,
                "backend": embedder.backend, "dim": embedder.dim, "dtype": dtype, "normalized": True,
                "root": str(source.root), "shard_size": shard_size, "files_sha256": source.digest(),
                "part": None if part is None else {"index": part[0], "count": part[1], "first": chosen.start,
                                                   "total": len(source.paths)}}
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        _check_resumable(manifest, identity, out)
        failed = read_failed(out, manifest["failed"])
    elif out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not an embeddings dir: pick another --out")
    else:
        manifest = {**identity, "model": str(embedder.model.path), "count": 0, "failed": 0, "complete": False,
                    "images": len(paths), "shards": []}
        failed = []
        out.mkdir(parents=True, exist_ok=True)
        write_failed(out, failed)
        write_manifest(out, manifest)
    first_shard = len(manifest["shards"])
    done = min(first_shard * shard_size, len(paths))
    start = time.perf_counter()
    if not manifest["complete"]:
        dataset = _IndexedDataset(ImageList(source.root, paths, None, None), embedder.preprocessing)
        loader = DataLoader(dataset, batch_sampler=_ShardBatches(len(paths), shard_size, batch_size, first_shard),
                            num_workers=workers, pin_memory=embedder.backend != "onnx" and torch.cuda.is_available(),
                            worker_init_fn=keep_heap)
        bar = tqdm(total=len(paths), initial=done, desc=f"embedding -> {out.name}", unit="img", disable=not progress,
                   smoothing=0.1)
        vectors: list[np.ndarray] = []
        ids: list[dict] = []
        shard = first_shard
        for index, x, _, ok in loader:
            if bool(ok.any()):
                vectors.append(embedder.embed_batch(x[ok]).astype(dtype, copy=False))
            for i, good in zip(index.tolist(), ok.tolist()):
                rel = source.relative(paths[i])
                if good:
                    ids.append({"path": rel, "label": label_of(rel)})
                else:
                    failed.append((rel, _decode_error(paths[i])))
            bar.update(len(index))
            last = int(index[-1])
            if last + 1 == min((shard + 1) * shard_size, len(paths)):
                rows = np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim), dtype)
                manifest["shards"].append(write_shard(out, shard, rows, ids))
                manifest["count"] += len(ids)
                manifest["failed"] = len(failed)
                write_failed(out, failed)
                write_manifest(out, manifest)
                vectors, ids, shard = [], [], shard + 1
        bar.close()
        manifest["complete"] = True
        write_manifest(out, manifest)
    elapsed = time.perf_counter() - start
    return {**manifest, "throughput": {"images": len(paths) - done, "seconds": elapsed,
                                       "images_per_s": (len(paths) - done) / elapsed if elapsed > 0 else 0.0}}


def merge_parts(parts: list[str | Path], out: str | Path) -> dict:
    """Join the complete embeddings dirs of parts 0..n-1 of one folder into `out` (shards renumbered in part order)."""
    out = Path(out)
    manifests = [(Path(p), read_manifest(p)) for p in parts]
    if not manifests:
        raise ExportError("give the embeddings dirs of the parts to merge")
    for path, m in manifests:
        if not m.get("complete") or m.get("part") is None:
            raise ExportError(f"{path} is " + ("not finished: run its `sslforge embed` again first"
                                               if not m.get("complete") else "not a part (made without --shard)"))
    manifests.sort(key=lambda pm: pm[1]["part"]["index"])
    count = manifests[0][1]["part"]["count"]
    indices = [m["part"]["index"] for _, m in manifests]
    if indices != list(range(count)):
        raise ExportError(f"parts {indices} given, need each of 0..{count - 1} exactly once")
    same = ("model_fingerprint", "dim", "dtype", "normalized", "root", "files_sha256", "shard_size")
    for path, m in manifests[1:]:
        for key in same:
            if m.get(key) != manifests[0][1].get(key):
                raise ExportError(f"{path} differs from {manifests[0][0]} in {key}: these are not parts of one job")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty: pick another --out")
    out.mkdir(parents=True, exist_ok=True)
    first = manifests[0][1]
    merged = {k: first[k] for k in ("format", "schema_version", "model_fingerprint", "model", "backend", "dim",
                                    "dtype", "normalized", "root", "shard_size", "files_sha256")}
    merged.update(part=None, images=sum(m["images"] for _, m in manifests), count=0, failed=0, complete=False,
                  shards=[])
    failed = []
    for path, m in manifests:
        for shard in m["shards"]:
            vec_name, ids_name = shard_files(len(merged["shards"]))
            for src, dst in ((shard["vectors"], vec_name), (shard["ids"], ids_name)):
                shutil.copyfile(path / src, out / dst)
            merged["shards"].append({"vectors": vec_name, "ids": ids_name, "count": shard["count"]})
            merged["count"] += shard["count"]
        failed += read_failed(path, m["failed"])
    merged["failed"] = len(failed)
    merged["complete"] = True
    write_failed(out, failed)
    write_manifest(out, merged)
    return merged

