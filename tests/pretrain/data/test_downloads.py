"""Dataset helpers on archives built here (no network): verify, safe extraction, CIFAR conversion, NABirds."""
from __future__ import annotations

import hashlib
import io
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretrain.data.downloads import (
    DATASETS,
    Archive,
    DownloadError,
    Source,
    nabirds_to_folders,
    prepare,
    safe_extract,
    verify,
)
from pretrain.data.images import scan_images


def _md5(path: Path, limit: int | None = None) -> str:
    with open(path, "rb") as f:
        return hashlib.md5(f.read(limit) if limit else f.read()).hexdigest()


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _cifar_images(n: int, seed: int) -> np.ndarray:
    """Smooth images (JPEG keeps them within a few levels): a per-image colour plus a gentle ramp."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 40, 32)[None, None, :, None] + np.zeros((1, 1, 1, 1))
    base = rng.integers(30, 180, (n, 1, 1, 3))
    return np.clip(base + ramp, 0, 255).astype(np.uint8).repeat(32, axis=1)  # (n, 32, 32, 3)


def _batch(images: np.ndarray, labels: list[int], key: bytes) -> bytes:
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # CIFAR rows: R plane, G plane, B plane
    return pickle.dumps({b"data": flat, key: labels, b"batch_label": b"x"})


def _fake_cifar10(tmp_path: Path) -> tuple[Source, dict[str, tuple[np.ndarray, list[int]]]]:
    classes = [b"cat", b"dog"]
    members = {"cifar-10-batches-py/batches.meta": pickle.dumps({b"label_names": classes})}
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images, labels = _cifar_images(3, seed=i), [0, 1, 1]
        batches[name] = (images, labels)
        members[f"cifar-10-batches-py/{name}"] = _batch(images, labels, b"labels")
    path = _tar(tmp_path / "cifar-10-python.tar.gz", members)
    archive = Archive(path.as_uri(), path.stat().st_size, _md5(path))
    return Source(archive, "cifar10", "cifar-10-batches-py"), batches


def test_cifar_archive_is_fetched_verified_extracted_and_converted(tmp_path: Path) -> None:
    source, batches = _fake_cifar10(tmp_path / "src")
    root = tmp_path / "data"
    train, test = prepare("cifar10", root, source=source, progress=False)
    assert not (root / "cifar-10-python.tar.gz").exists() and not (root / ".cifar10.extract").exists()
    tr, te = scan_images(train), scan_images(test)
    assert tr.classes == te.classes == ["cat", "dog"]
    assert len(tr) == 15 and len(te) == 3
    assert sorted(p.name for p in (train / "dog").iterdir()) == [f"{i:04d}.jpg" for i in range(10)]
    # test_batch image 1 is the first dog of the test split; its pixels survive the JPEG round trip.
    expected = batches["test_batch"][0][1].astype(float)
    with Image.open(test / "dog" / "0000.jpg") as im:
        assert im.size == (32, 32) and np.abs(np.asarray(im, dtype=float) - expected).mean() < 3
    with Image.open(train / "cat" / "0001.jpg") as im:  # second cat: data_batch_2's first image
        assert np.abs(np.asarray(im, dtype=float) - batches["data_batch_2"][0][0]).mean() < 3
    # Finished: the next call returns at once (the archive's URL is not even read).
    gone = Source(Archive((tmp_path / "nowhere.tar.gz").as_uri(), 1, "0" * 32), "cifar10", "cifar-10-batches-py")
    assert prepare("cifar10", root, source=gone, progress=False) == (train, test)


def test_a_wrong_checksum_keeps_nothing(tmp_path: Path) -> None:
    source, _ = _fake_cifar10(tmp_path / "src")
    bad = Source(Archive(source.archive.url, source.archive.size, "0" * 32), "cifar10", "cifar-10-batches-py")
    with pytest.raises(DownloadError, match="MD5 is .* expected 0{32}"):
        prepare("cifar10", tmp_path / "data", source=bad, progress=False)
    assert not list((tmp_path / "data").iterdir())
    short = Source(Archive(source.archive.url, source.archive.size + 1), "cifar10", "cifar-10-batches-py")
    with pytest.raises(DownloadError, match="bytes, expected"):
        prepare("cifar10", tmp_path / "data", source=short, progress=False)


def test_fastai_first_mib_check(tmp_path: Path) -> None:
    path = tmp_path / "big.tgz"
    data = bytearray(np.random.default_rng(0).integers(0, 256, (1 << 20) + 1000, dtype=np.uint8).tobytes())
    path.write_bytes(bytes(data))
    good = Archive("x", len(data), None, _md5(path, 1 << 20))
    verify(path, good)
    data[-1] ^= 1  # beyond the first MiB: fastai's check cannot see it (the size still matches)
    path.write_bytes(bytes(data))
    verify(path, good)
    data[10] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="first MiB"):
        verify(path, good)


def test_every_registered_dataset_has_a_published_check(tmp_path: Path) -> None:
    import torchvision

    for name, source in DATASETS.items():
        a = source.archive
        assert a.url.startswith("https://") and (a.md5 or a.md5_first_mib), name
        for digest in (a.md5, a.md5_first_mib):
            assert digest is None or re.fullmatch("[0-9a-f]{32}", digest), (name, digest)
    # the CIFAR archives' MD5s are the ones torchvision publishes for the same files
    assert DATASETS["cifar10"].archive.md5 == torchvision.datasets.CIFAR10.tgz_md5
    assert DATASETS["cifar100"].archive.md5 == torchvision.datasets.CIFAR100.tgz_md5
    # and a registered digest is checked as MD5: RFC 1321's test vector for "abc"
    path = tmp_path / "abc.tgz"
    path.write_bytes(b"abc")
    verify(path, Archive("x", 3, "900150983cd24fb0d6963f7d28e17f72"))
    with pytest.raises(DownloadError, match="MD5 is 900150983cd24fb0d6963f7d28e17f72"):
        verify(path, Archive("x", 3, "f96b697d7cb7938d525a2f31aaf161d0"))  # RFC 1321's "message digest"


def test_extraction_refuses_members_outside_the_target(tmp_path: Path) -> None:
    evil = _tar(tmp_path / "evil.tar.gz", {"ok/file.txt": b"x", "../escape.txt": b"boom"})
    with pytest.raises(DownloadError, match="refusing member '../escape.txt'"):
        safe_extract(evil, tmp_path / "out", progress=False)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out" / "ok").exists()
    link = tmp_path / "link.tar.gz"
    with tarfile.open(link, "w:gz") as tar:
        info = tarfile.TarInfo("a/passwd")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DownloadError, match="refusing member 'a/passwd'"):
        safe_extract(link, tmp_path / "out2", progress=False)


def test_a_pickle_that_is_not_a_cifar_batch_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("true",))

    members = {"cifar-10-batches-py/batches.meta": pickle.dumps(Evil())}
    path = _tar(tmp_path / "c.tar.gz", members)
    source = Source(Archive(path.as_uri(), path.stat().st_size, _md5(path)), "cifar10", "cifar-10-batches-py")
    with pytest.raises(DownloadError, match="never does"):
        prepare("cifar10", tmp_path / "data", source=source, progress=False)


def test_image_folder_archives_become_train_and_test(tmp_path: Path) -> None:
    jpg = io.BytesIO()
    Image.new("RGB", (20, 16), (10, 200, 30)).save(jpg, format="JPEG")
    members = {f"imagenette2-160/{split}/{c}/{i}.JPEG": jpg.getvalue()
               for split in ("train", "val") for c in ("n01", "n02") for i in range(2)}
    path = _tar(tmp_path / "imagenette2-160.tgz", members)
    source = Source(Archive(path.as_uri(), path.stat().st_size, _md5(path)), "folders", "imagenette2-160")
    train, test = prepare("imagenette-160", tmp_path / "data", source=source, progress=False, keep_archive=True)
    assert scan_images(train).classes == scan_images(test).classes == ["n01", "n02"]
    assert len(scan_images(test)) == 4 and (tmp_path / "data" / "imagenette2-160.tgz").is_file()


def test_nabirds_layout_becomes_class_folders(tmp_path: Path) -> None:
    src = tmp_path / "nabirds"
    rows = [("a1", "0295/a1.jpg", "295", "1"), ("a2", "0295/a2.jpg", "295", "0"), ("b1", "0313/b1.jpg", "313", "1"),
            ("b2", "0313/b2.jpg", "313", "0")]
    for _, rel, _, _ in rows:
        (src / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (1, 2, 3)).save(src / "images" / rel)
    (src / "images.txt").write_text("".join(f"{i} {rel}\n" for i, rel, _, _ in rows))
    (src / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c, _ in rows))
    (src / "train_test_split.txt").write_text("".join(f"{i} {s}\n" for i, _, _, s in rows))
    (src / "classes.txt").write_text("295 Oak Titmouse\n313 Mallard (Male/Female)\n")
    train, test = nabirds_to_folders(src, tmp_path / "out")
    assert scan_images(train).classes == scan_images(test).classes == ["295 Oak Titmouse", "313 Mallard (Male-Female)"]
    assert (train / "295 Oak Titmouse" / "a1.jpg").resolve() == (src / "images" / "0295" / "a1.jpg").resolve()
    assert [p.name for p in (test / "313 Mallard (Male-Female)").iterdir()] == ["b2.jpg"]
    (src / "train_test_split.txt").unlink()
    with pytest.raises(DownloadError, match="train_test_split.txt is missing"):
        nabirds_to_folders(src, tmp_path / "out2")
