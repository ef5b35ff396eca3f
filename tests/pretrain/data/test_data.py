import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pretrain.data.datasets import EpochSampler, EvalDataset, ViewsDataset
from pretrain.data.images import DataError, load_rgb, sample_dir, scan_images
from pretrain.ground.preprocess import Preprocessing
from pretrain.views.recipes import build_transform


def add_bad_files(folder: Path) -> Path:
    """A garbage .jpg, a text file, and a truncated JPEG whose header still parses."""
    (folder / "garbage.jpg").write_bytes(b"\x00\x01 definitely not a jpeg" * 10)
    (folder / "notes.txt").write_text("hello")
    good = next(folder.glob("*.jpg"))
    data = good.read_bytes()
    truncated = folder / "zz_truncated.jpg"
    truncated.write_bytes(data[: len(data) * 3 // 4])
    return truncated


def test_image_folder_labels_and_classes(image_folder: Path) -> None:
    images = scan_images(image_folder)
    assert images.classes == ["class_0", "class_1", "class_2"]
    assert len(images) == 24
    assert sorted(set(images.labels)) == [0, 1, 2]
    assert all(images.classes[label] == p.parent.name for p, label in zip(images.paths, images.labels))


def test_flat_folder_is_unlabelled(image_folder: Path) -> None:
    images = scan_images(image_folder / "class_1")
    assert images.labels is None and images.classes is None and len(images) == 8


def test_unreadable_files_are_skipped_and_counted_in_one_warning(image_folder: Path) -> None:
    add_bad_files(image_folder / "class_0")
    with pytest.warns(UserWarning) as record:
        images = scan_images(image_folder)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 2 of 27 files" in message and "\n" not in message
    assert {p.name for p, _ in images.skipped} == {"garbage.jpg", "notes.txt"}
    assert len(images) == 25  # the truncated JPEG passes the header check; decoding catches it later


def test_truncated_image_is_replaced_in_training_and_flagged_in_evaluation(image_folder: Path) -> None:
    truncated = add_bad_files(image_folder / "class_0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = scan_images(image_folder)
    index = images.paths.index(truncated)
    with pytest.raises(OSError):
        load_rgb(truncated)
    views, failures, first = ViewsDataset(images, build_transform("simclr", 32))[(index, 7)]
    assert failures == 1 and first == str(truncated)
    assert len(views) == 2 and views[0].shape == (3, 32, 32)
    x, label, ok = EvalDataset(images, Preprocessing.for_size(32))[index]
    assert not ok and x.shape == (3, 32, 32) and label == 0


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "I;16", "CMYK"])
def test_any_mode_is_converted_to_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "img.png" if mode != "CMYK" else tmp_path / "img.jpg"
    Image.new("RGB", (10, 12), (10, 120, 200)).convert(mode).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (10, 12)


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_rgb(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)


def test_missing_empty_and_junk_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no readable images"):
        scan_images(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_text("nope")
    with pytest.raises(DataError, match="1 files skipped"):
        scan_images(tmp_path / "junk")
    (tmp_path / "file.jpg").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        scan_images(tmp_path / "file.jpg")


def test_bundled_sample_unpacks_to_an_image_folder() -> None:
    root = sample_dir()
    train, test = scan_images(root / "train"), scan_images(root / "test")
    assert (len(train), len(test)) == (5000, 1000)
    assert train.classes == test.classes and len(train.classes) == 10
    assert sample_dir() == root  # second call reuses the unpacked folder
    assert load_rgb(train.paths[0]).size == (32, 32)


def test_sampler_is_seeded_per_epoch_and_resumes_mid_epoch() -> None:
    sampler = EpochSampler(20, 4, seed=3)
    sampler.set_epoch(1)
    full = list(sampler)
    assert len(full) == 20 and len({i for i, _ in full}) == 20
    sampler.set_epoch(1, start_batch=2)
    assert list(sampler) == full[8:]
    sampler.set_epoch(2)
    assert [i for i, _ in sampler] != [i for i, _ in full]
    with pytest.raises(ValueError, match="larger than"):
        EpochSampler(3, 4, 0)


def test_views_do_not_depend_on_the_number_of_workers(image_folder: Path) -> None:
    dataset = ViewsDataset(scan_images(image_folder), build_transform("simclr", 32))
    sampler = EpochSampler(len(dataset), 8, seed=0)
    batches = [next(iter(DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=w))) for w in (0, 2)]
    for a, b in zip(batches[0][0], batches[1][0]):
        assert torch.equal(a, b)
    assert not torch.equal(batches[0][0][0], batches[0][0][1])  # the two views differ
