"""The validation split of the equal-time comparison: 5,000 CIFAR-10 train images (500 a class), none of them
among the 5,000 training images of the bundled sample (`sslforge sample`, built by tools/make_sample.py from the
first 500 train files of each class), by file name or by content.

    python bench/cifar_val.py CIFAR10_JPG_TAR_GZ OUT      # -> OUT/val/<class>/*.jpg and OUT/val-manifest.txt

Every recipe choice is made on this split (`bench/equal_time_knn.py --eval val`); the CIFAR-10 test set is scored
once per final recipe. The pick is fixed: per class the first 500 train files, sorted by name, that are not in the
sample. OUT/val-manifest.txt lists them (class/name and SHA-256 of the bytes) and ends with the digest of that
list, which the command prints: the same archive gives the same digest on every machine.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tarfile
from collections import defaultdict
from importlib import resources
from pathlib import Path

PER_CLASS = 500


def _members(archive: str | os.PathLike, split: str) -> dict[str, dict[str, bytes]]:
    """{class: {file name: bytes}} of `split`/<class>/<file> in a .tar.gz."""
    out: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(archive) as tar:
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 3 and parts[-3] == split:
                out[parts[-2]][parts[-1]] = tar.extractfile(m).read()
    return out


def _bundled_sample() -> Path:
    from pretrain.data.images import SAMPLE_ARCHIVE

    return Path(str(resources.files("pretrain") / "assets" / SAMPLE_ARCHIVE))


def pick(archive: str | os.PathLike, per_class: int = PER_CLASS,
         sample: str | os.PathLike | None = None) -> dict[str, list[tuple[str, bytes]]]:
    """{class: [(name, bytes), ...]}: per class the first `per_class` train files of `archive` by name that are
    neither named like nor byte-identical to a training image of `sample` (default: the bundled sample)."""
    train = _members(archive, "train")
    if not train:
        raise SystemExit(f"{archive}: no train/<class>/<file> inside; pass the CIFAR-10 JPEG archive")
    held = _members(sample or _bundled_sample(), "train")
    held_digests = {hashlib.sha256(b).digest() for files in held.values() for b in files.values()}
    out = {}
    for cls in sorted(train):
        free = [(n, b) for n, b in sorted(train[cls].items())
                if n not in held.get(cls, {}) and hashlib.sha256(b).digest() not in held_digests]
        if len(free) < per_class:
            raise SystemExit(f"{archive}: class {cls} has {len(free)} train images outside the sample, fewer than "
                             f"{per_class}")
        out[cls] = free[:per_class]
    return out


def manifest(picked: dict[str, list[tuple[str, bytes]]]) -> tuple[str, str]:
    """(the manifest's text, the SHA-256 of its lines): one `class/name sha256` line per image."""
    lines = [f"{cls}/{name} {hashlib.sha256(data).hexdigest()}" for cls in sorted(picked) for name, data in
             picked[cls]]
    body = "\n".join(lines) + "\n"
    return body, hashlib.sha256(body.encode()).hexdigest()


def write(picked: dict[str, list[tuple[str, bytes]]], out: str | os.PathLike) -> str:
    """Write OUT/val/<class>/<name> and OUT/val-manifest.txt (into a temporary folder renamed into place);
    return the manifest digest."""
    out = Path(out)
    body, digest = manifest(picked)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".val.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for cls, files in picked.items():
        (tmp / cls).mkdir(parents=True)
        for name, data in files:
            (tmp / cls / name).write_bytes(data)
    shutil.rmtree(out / "val", ignore_errors=True)
    os.replace(tmp, out / "val")
    (out / ".val-manifest.tmp").write_text(body + f"# sha256 of the lines above: {digest}\n")
    os.replace(out / ".val-manifest.tmp", out / "val-manifest.txt")
    return digest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("archive", help="the CIFAR-10 JPEG archive (train/<class>/*.jpg, test/<class>/*.jpg)")
    p.add_argument("out", help="folder to write val/<class>/ and val-manifest.txt into")
    p.add_argument("--per-class", type=int, default=PER_CLASS, help=f"images per class (default: {PER_CLASS})")
    p.add_argument("--sample", help="the training set to stay out of, as a .tar.gz with train/<class>/ (default: "
                                    "the sample bundled with sslforge)")
    args = p.parse_args()
    if not Path(args.archive).is_file():
        p.error(f"{args.archive}: no such file")
    try:
        tarfile.open(args.archive).close()
    except (tarfile.TarError, OSError) as e:
        p.error(f"{args.archive}: not a readable .tar.gz ({e})")
    digest = write(pick(args.archive, args.per_class, args.sample), args.out)
    print(f"{Path(args.out) / 'val'}: {args.per_class} images a class; manifest sha256 {digest}")


if __name__ == "__main__":
    main()
