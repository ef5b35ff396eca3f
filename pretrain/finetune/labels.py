"""Labelled subsets: the 1% / 10% of the labels that fine-tuning and the semi-supervised evaluations train on.

A subset takes the same share of every class (`fraction`: share x class size, rounded half up, at least one) or
the same number from every class (`per_class`). Which images is decided by the seed and the class alone: each
class draws its own permutation from a generator seeded by (seed, class name) and takes its first images, so
the subset of a class does not depend on the other classes, and with one seed the 1% subset lies inside the
10% one. The chosen files keep the folder's order.

A run saves its subset (`subset_record`) and a resumed run reads it back (`read_subset`), so the labelled
images of a run never change under it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from pretrain.data.images import DataError, ImageList
from pretrain.ground.errors import ConfigError

SUBSET_FORMAT = "sslforge-label-subset"


def _class_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}\0{name}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def select_labels(images: ImageList, fraction: float | None = None, per_class: int | None = None,
                  seed: int = 0) -> ImageList:
    """The class-balanced, seeded subset of a labelled ImageList (all of it for fraction 1 or neither option)."""
    if not images.labelled:
        raise DataError(f"{images.root} has no class sub-folders: labelled training and evaluation need them")
    if fraction is not None and per_class is not None:
        raise ConfigError("give a label fraction or a number of labels per class, not both")
    if per_class is None and (fraction is None or fraction >= 1):
        return images
    if fraction is not None and not 0 < fraction <= 1:
        raise ConfigError(f"label fraction must be in (0, 1] (got {fraction})")
    members: dict[int, list[int]] = {}
    for i, label in enumerate(images.labels):
        members.setdefault(label, []).append(i)
    chosen: list[int] = []
    for label, indices in sorted(members.items()):
        name = images.classes[label]
        take = per_class if per_class is not None else max(1, int(fraction * len(indices) + 0.5))
        if take > len(indices):
            raise ConfigError(f"class {name!r} of {images.root} has {len(indices)} images, fewer than the "
                              f"{take} labels per class asked for")
        g = torch.Generator().manual_seed(_class_seed(seed, name))
        chosen += [indices[j] for j in torch.randperm(len(indices), generator=g)[:take].tolist()]
    return images.subset(sorted(chosen))


def class_counts(images: ImageList) -> dict[str, int]:
    counts = dict.fromkeys(images.classes, 0)
    for label in images.labels:
        counts[images.classes[label]] += 1
    return counts


def subset_record(subset: ImageList, fraction: float | None, per_class: int | None, seed: int) -> dict:
    """What a run saves about its labelled images: how they were chosen, how many per class, and every file
    (relative to the folder; names that are not UTF-8 are kept as JSON \\udcXX escapes)."""
    return {"format": SUBSET_FORMAT, "root": str(Path(subset.root).resolve()),
            "label_fraction": None if per_class is not None else (fraction or 1.0),
            "labels_per_class": per_class, "seed": seed, "count": len(subset), "classes": class_counts(subset),
            "files": [p.relative_to(subset.root).as_posix() for p in subset.paths]}


def read_subset(record: dict, images: ImageList, where: str) -> ImageList:
    """The saved subset of `images` (a scan of the same folder); ConfigError when a saved file is gone."""
    if not isinstance(record, dict) or record.get("format") != SUBSET_FORMAT or not isinstance(
            record.get("files"), list):
        raise ConfigError(f"{where}: no readable label subset; start a new --out")
    index = {p.relative_to(images.root).as_posix(): i for i, p in enumerate(images.paths)}
    missing = [f for f in record["files"] if f not in index]
    if missing:
        raise ConfigError(f"{where}: {len(missing)} of the run's labelled images are not readable images of "
                          f"{images.root} any more (first: {str(missing[0])[:200]}); restore them or start a new --out")
    return images.subset(sorted(index[f] for f in record["files"]))
