"""Labelled subsets: class-balanced, seeded, nested across fractions, independent across classes, saved, read back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretrain.data.images import DataError, scan_images
from pretrain.finetune.labels import class_counts, read_subset, select_labels, subset_record
from pretrain.ground.errors import ConfigError


def uneven_folder(root: Path, sizes: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, n in sizes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    return uneven_folder(tmp_path_factory.mktemp("uneven"), {"ant": 10, "bee": 20, "cat": 40})


def names(images) -> list[str]:
    return [p.relative_to(images.root).as_posix() for p in images.paths]


def test_a_fraction_takes_the_same_share_of_every_class_and_a_count_the_same_number(uneven: Path) -> None:
    images = scan_images(uneven)
    assert class_counts(select_labels(images, fraction=0.1)) == {"ant": 1, "bee": 2, "cat": 4}
    assert class_counts(select_labels(images, fraction=0.01)) == {"ant": 1, "bee": 1, "cat": 1}  # at least one
    assert class_counts(select_labels(images, per_class=5)) == {"ant": 5, "bee": 5, "cat": 5}
    assert select_labels(images, fraction=1.0) is images and select_labels(images) is images
    subset = select_labels(images, fraction=0.25)
    assert names(subset) == sorted(names(subset))  # folder order
    assert all(images.classes[label] == Path(name).parts[0] for name, label in zip(names(subset), subset.labels))
    with pytest.raises(ConfigError, match="'ant' .* has 10 images, fewer than the 11"):
        select_labels(images, per_class=11)
    with pytest.raises(ConfigError, match="not both"):
        select_labels(images, fraction=0.1, per_class=2)


def test_the_seed_decides_and_subsets_nest_and_classes_do_not_depend_on_each_other(uneven: Path,
                                                                                   tmp_path: Path) -> None:
    images = scan_images(uneven)
    a, b = select_labels(images, fraction=0.2, seed=3), select_labels(images, fraction=0.2, seed=3)
    assert names(a) == names(b)
    assert names(select_labels(images, fraction=0.2, seed=4)) != names(a)
    small = names(select_labels(images, fraction=0.1, seed=3))
    large = names(select_labels(images, fraction=0.5, seed=3))
    assert set(small) < set(large)  # with one seed the 10% subset lies inside the 50% one
    two = scan_images(uneven_folder(tmp_path / "two", {"bee": 20, "cat": 40}))  # the same files, without "ant"
    picked = [n for n in names(select_labels(two, fraction=0.2, seed=3))]
    assert picked == [n for n in names(a) if not n.startswith("ant/")]


def test_the_record_lists_every_file_and_reads_back(uneven: Path, tmp_path: Path) -> None:
    images = scan_images(uneven)
    subset = select_labels(images, per_class=3, seed=1)
    record = subset_record(subset, None, 3, 1)
    assert record["count"] == 9 and record["classes"] == {"ant": 3, "bee": 3, "cat": 3}
    assert record["labels_per_class"] == 3 and record["label_fraction"] is None and record["files"] == names(subset)
    again = read_subset(record, images, "finetune.json")
    assert names(again) == names(subset) and again.labels == subset.labels
    with pytest.raises(ConfigError, match="not readable images of .* any more .*first: ant/"):
        read_subset({**record, "files": ["ant/999.png", *record["files"]]}, images, "finetune.json")
    with pytest.raises(ConfigError, match="no readable label subset"):
        read_subset({"files": "x"}, images, "finetune.json")


def test_a_flat_folder_has_no_labels_to_pick(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        select_labels(scan_images(tmp_path), fraction=0.5)
