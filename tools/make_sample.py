"""Build the bundled CIFAR-10 sample (pretrain/assets/cifar10-sample.tar.gz) from the full JPEG archive.

Usage: python tools/make_sample.py CIFAR10_JPG_TAR_GZ [--train-per-class 500] [--test-per-class 100]

The sample keeps the first N files of each class (sorted by name), so it is reproducible. JPEGs are
stored in one gzipped tar: one small file in git instead of thousands (gzip mostly saves the tar padding).
"""
from __future__ import annotations

import argparse
import io
import tarfile
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "pretrain" / "assets" / "cifar10-sample.tar.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", type=Path, help="cifar10-jpg.tar.gz with train/<class>/*.jpg and test/<class>/*.jpg")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args()
    quota = {"train": args.train_per_class, "test": args.test_per_class}

    members: dict[tuple[str, str], list[tuple[str, bytes]]] = defaultdict(list)
    with tarfile.open(args.archive) as src:
        for m in src:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) < 3 or parts[-3] not in quota:
                continue
            split, cls, name = parts[-3], parts[-2], parts[-1]
            members[(split, cls)].append((name, src.extractfile(m).read()))

    OUT.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(OUT, "w:gz", format=tarfile.PAX_FORMAT) as dst:
        for (split, cls), files in sorted(members.items()):
            for name, data in sorted(files)[: quota[split]]:
                info = tarfile.TarInfo(f"{split}/{cls}/{name}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                dst.addfile(info, io.BytesIO(data))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
