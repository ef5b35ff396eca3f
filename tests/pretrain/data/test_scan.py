"""Folder scanning on awkward trees: symbolic links (loops, duplicates) and the layout decision
(class folders or a flat folder) when the folder holds a bit of both."""
import os
import warnings
from pathlib import Path

import pytest
from PIL import Image

from pretrain.data.images import scan_images, walk_files


def images(folder: Path, n: int, prefix: str = "") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{prefix}{i:02d}.png" for i in range(n)]
    for i, p in enumerate(paths):
        Image.new("RGB", (4, 4), (i * 20, 0, 0)).save(p)
    return paths


def scan_quietly(root: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scan_images(root)


def test_a_link_loop_adds_nothing(tmp_path: Path) -> None:
    root = tmp_path / "data"
    images(root / "cat", 4)
    images(root / "dog", 4)
    os.symlink("..", root / "cat" / "loop")  # cat/loop/cat/loop/... : the whole tree again, forever
    os.symlink("../cat", root / "dog" / "also-cat")
    found = scan_quietly(root)
    assert len(found) == 8 and found.classes == ["cat", "dog"]
    assert sorted(p.name for p in walk_files(root)) == sorted(p.name for p in found.paths)


def test_links_are_followed_once_per_real_file_and_folder(tmp_path: Path) -> None:
    outside = images(tmp_path / "elsewhere", 3)
    root = tmp_path / "data"
    images(root / "a", 2)
    os.symlink(tmp_path / "elsewhere", root / "b")  # a class folder that lives elsewhere: followed
    os.symlink(outside[0], root / "a" / "zz-link.png")  # a second name for a file listed under b
    os.symlink(root / "a" / "00.png", root / "a" / "zz-again.png")  # ... and for one listed under a
    found = scan_quietly(root)
    assert found.classes == ["a", "b"]
    assert [p.relative_to(root).as_posix() for p in found.paths] == ["a/00.png", "a/01.png", "a/zz-link.png",
                                                                     "b/01.png", "b/02.png"]


def test_embed_walk_shares_the_rule(tmp_path: Path) -> None:
    from export.images import find_images

    root = tmp_path / "data"
    images(root, 3)
    os.symlink(".", root / "self")
    assert [p.name for p in find_images(root).paths] == ["00.png", "01.png", "02.png"]


def test_a_stray_folder_does_not_make_a_flat_folder_labelled(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    images(root, 6)
    (root / "x.jpg").mkdir()  # a folder with an image's name, and one holding no image
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("nothing to see")
    found = scan_quietly(root)
    assert len(found) == 6 and found.labels is None and found.classes is None
    assert found.layout == "flat folder: 6 unlabelled images"


def test_mixed_folder_follows_where_most_images_are_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    images(root, 6)
    images(root / "extra", 2)
    with pytest.warns(UserWarning, match=r"6 images at the top .* 2 in 1 sub-folder.*flat folder of 8"):
        found = scan_images(root)
    assert len(found) == 8 and found.labels is None
    images(root / "more", 10)
    with pytest.warns(UserWarning, match=r"6 images at the top .* 12 in 2 sub-folders.*class folders.*skipped"):
        found = scan_images(root)
    assert found.classes == ["extra", "more"] and len(found) == 12
    assert found.layout == "2 class folders: 12 images"


def test_class_folders_ignore_folders_without_images(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    images(root / "a", 2)
    images(root / "b", 2)
    (root / "empty").mkdir()
    found = scan_quietly(root)
    assert found.classes == ["a", "b"] and found.labels == [0, 0, 1, 1]


def test_the_run_records_how_its_folder_was_read(tiny_run: Path) -> None:
    import json

    assert json.loads((tiny_run / "model.json").read_text())["training"]["data_layout"] == "3 class folders: 24 images"


def test_a_link_from_one_class_folder_into_another_keeps_the_real_class_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "data"
    cats, dogs = images(root / "cat", 2), images(root / "dog", 3)
    os.symlink("../dog", root / "cat" / "dogs")  # walked before dog/: its images would be listed as cats
    os.symlink(dogs[0], root / "cat" / "zz-one-dog.png")
    with pytest.warns(UserWarning, match=r"3 images reached through links from one class folder into another are "
                                         r"labelled by the class folder they lie in \(first: cat/zz-one-dog.png is in "
                                         r"dog/\)"):
        found = scan_images(root)
    assert found.classes == ["cat", "dog"]
    by_class = {c: sorted(os.path.realpath(p) for p, label in zip(found.paths, found.labels) if found.classes[label]
                          == c) for c in found.classes}
    assert by_class == {"cat": sorted(map(str, cats)), "dog": sorted(map(str, dogs))}
