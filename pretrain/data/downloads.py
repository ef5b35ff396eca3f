"""The seed's datasets as train/test class folders: download, verify, extract safely, convert.

Checksums are the published ones: full-file MD5s from torchvision (CIFAR, Imagenette), sizes and
fastai's "MD5 of the first MiB" from fastai's `fastai/data/checks.txt` (ImageWoof has only the
latter). A download goes to NAME.part (resumed with an HTTP Range request when the server allows
it) and is renamed into place only after the size and checksums match. Extraction refuses members
that would land outside the target (absolute paths, `..`, links, devices). CIFAR's pickles are read
with an unpickler that only builds numpy arrays, then written as JPEG class folders.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pretrain.data.images import DataError


class DownloadError(DataError):
    """A download, checksum, archive or dataset layout is wrong; the message names the file."""


@dataclass(frozen=True)
class Archive:
    url: str
    size: int | None = None  # bytes
    md5: str | None = None  # of the whole file
    md5_first_mib: str | None = None  # fastai's check: MD5 of the first 2**20 bytes

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Source:
    archive: Archive
    layout: str  # "folders" (train/ and val/ class folders), "cifar10" or "cifar100" (pickles)
    folder: str  # top folder inside the archive
    test_split: str = "val"


FASTAI = "https://s3.amazonaws.com/fast-ai-imageclas/"
DATASETS: dict[str, Source] = {
    "imagenette": Source(Archive(FASTAI + "imagenette2.tgz", 1557161267, "fe2fc210e6bb7c5664d602c3cd71e612",
                                 "2c774ecb40005b35d7937d50f5d42336"), "folders", "imagenette2"),
    "imagenette-160": Source(Archive(FASTAI + "imagenette2-160.tgz", 99003388, "e793b78cc4c9e9a4ccc0c1155377a412",
                                     "c475f8f7617a200ba35b9facc48443c3"), "folders", "imagenette2-160"),
    "imagewoof": Source(Archive(FASTAI + "imagewoof2.tgz", 1343715595, None, "2cc1c1e36e20cb6fd24ffb978edcb487"),
                        "folders", "imagewoof2"),
    "imagewoof-160": Source(Archive(FASTAI + "imagewoof2-160.tgz", 92612825, None,
                                    "3559b194123981a540b87132dbda412f"), "folders", "imagewoof2-160"),
    "cifar10": Source(Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", 170498071,
                              "c58f30108f718f92721af3b95e74349a"), "cifar10", "cifar-10-batches-py"),
    "cifar100": Source(Archive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", None,
                               "eb9058c3a382ffc7106e4002c42a8d85"), "cifar100", "cifar-100-python"),
}


def download(archive: Archive, dest: Path, *, progress: bool = True) -> Path:
    """Fetch `archive` to dest/filename unless a verified copy is there; resume a .part file if the server
    supports ranges; verify before the final rename, so dest/filename is always complete and checked."""
    path = dest / archive.filename
    if path.is_file():
        verify(path, archive)
        return path
    dest.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(archive.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            resumed = have and getattr(response, "status", 200) == 206
            mode = "ab" if resumed else "wb"
            total = int(response.headers.get("Content-Length") or 0) + (have if resumed else 0) or archive.size
            with open(part, mode) as f, tqdm(total=total, initial=have if resumed else 0, unit="B", unit_scale=True,
                                             desc=archive.filename, disable=not progress) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        raise DownloadError(f"cannot download {archive.url} ({e}); run the command again to resume "
                            f"({part} is kept)") from None
    try:
        verify(part, archive)
    except DownloadError:
        part.unlink()
        raise
    os.replace(part, path)
    return path


def verify(path: Path, archive: Archive) -> None:
    """Check size and every published checksum of `archive` against the file at `path`."""
    if archive.size is not None and path.stat().st_size != archive.size:
        raise DownloadError(f"{path} has {path.stat().st_size} bytes, expected {archive.size}: delete it and "
                            f"download again")
    if archive.md5_first_mib is not None:
        with open(path, "rb") as f:
            head = hashlib.md5(f.read(1 << 20)).hexdigest()
        if head != archive.md5_first_mib:
            raise DownloadError(f"{path}: MD5 of the first MiB is {head}, expected {archive.md5_first_mib}: "
                                f"delete it and download again")
    if archive.md5 is not None:
        h = hashlib.md5()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        if h.hexdigest() != archive.md5:
            raise DownloadError(f"{path}: MD5 is {h.hexdigest()}, expected {archive.md5}: delete it and download "
                                f"again")


def safe_extract(archive_path: Path, dest: Path, *, progress: bool = True) -> None:
    """Extract a tar archive into `dest`, refusing any member that is not a plain file or folder inside it."""
    dest = dest.resolve()
    with tarfile.open(archive_path) as tar:
        members = tar.getmembers()
        for m in members:
            target = (dest / m.name).resolve()
            if not (m.isfile() or m.isdir()) or os.path.isabs(m.name) or not target.is_relative_to(dest):
                raise DownloadError(f"{archive_path}: refusing member {m.name!r} (links, devices and paths outside "
                                    f"the target folder are not extracted)")
        for m in tqdm(members, desc=f"extracting {archive_path.name}", unit="file", disable=not progress):
            tar.extract(m, dest, filter="data")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batches (dicts of bytes, lists and numpy arrays) and nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DownloadError(f"CIFAR pickle refers to {module}.{name}, which a CIFAR batch never does")
        return super().find_class(module, name)


def _load_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise DownloadError(f"{path} is not a readable CIFAR batch ({e})") from None


CIFAR_FILES = {
    "cifar10": {"meta": ("batches.meta", b"label_names"), "labels": b"labels",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    "cifar100": {"meta": ("meta", b"fine_label_names"), "labels": b"fine_labels", "train": ["train"],
                 "test": ["test"]},
}


def cifar_to_folders(batches: Path, out: Path, kind: str, *, quality: int = 95, progress: bool = True) -> None:
    """Write CIFAR pickles as out/{train,test}/CLASS/NNNN.jpg (numbered per class in batch order), the layout
    of the CIFAR-10 JPEG archive the project's sample comes from."""
    files = CIFAR_FILES[kind]
    meta_file, meta_key = files["meta"]
    classes = [c.decode() for c in _load_batch(batches / meta_file)[meta_key]]
    for split in ("train", "test"):
        counts = [0] * len(classes)
        for c in classes:
            (out / split / c).mkdir(parents=True, exist_ok=True)
        for name in files[split]:
            batch = _load_batch(batches / name)
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labels = batch[files["labels"]]
            if len(labels) != len(data):
                raise DownloadError(f"{batches / name}: {len(data)} images but {len(labels)} labels")
            for pixels, label in tqdm(zip(data, labels), total=len(data), desc=f"{split} {name}", unit="img",
                                      disable=not progress):
                path = out / split / classes[label] / f"{counts[label]:04d}.jpg"
                counts[label] += 1
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
                path.write_bytes(buf.getvalue())


def prepare(name: str, root: str | os.PathLike, *, progress: bool = True, keep_archive: bool = False,
            source: Source | None = None) -> tuple[Path, Path]:
    """Download (or reuse), verify, extract and lay out dataset `name` under root/name; return (train, test).

    A finished dataset (marked by root/name/.complete) is returned at once.
    """
    source = source or DATASETS[name]
    target = Path(root) / name
    train, test = target / "train", target / "test"
    if (target / ".complete").is_file():
        return train, test
    archive_path = download(source.archive, Path(root), progress=progress)
    work = target.with_name(f".{name}.extract")
    shutil.rmtree(work, ignore_errors=True)
    safe_extract(archive_path, work, progress=progress)
    top = work / source.folder
    if not top.is_dir():
        raise DownloadError(f"{archive_path} has no folder {source.folder}/: not the expected archive")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    if source.layout == "folders":
        for split, found in (("train", "train"), ("test", source.test_split)):
            if not (top / found).is_dir():
                raise DownloadError(f"{archive_path}: {source.folder}/{found}/ is missing")
            os.replace(top / found, target / split)
    else:
        cifar_to_folders(top, target, source.layout, progress=progress)
    shutil.rmtree(work)
    (target / ".complete").write_text(source.archive.url + "\n")
    if not keep_archive:
        archive_path.unlink()
    return train, test


def nabirds_to_folders(source: str | os.PathLike, out: str | os.PathLike, *, copy: bool = False) -> tuple[Path, Path]:
    """NABirds' layout -> out/train/CLASS/ and out/test/CLASS/ (links, or copies with `copy`).

    NABirds ships images/<class id>/<file>.jpg plus text tables, one record a line:
    images.txt "<image id> <relative path>", image_class_labels.txt "<image id> <class id>",
    train_test_split.txt "<image id> <1 train | 0 test>", classes.txt "<class id> <class name>".
    A class folder is named "<class id> <class name>" with '/' replaced, so names stay unique.
    """
    src, out = Path(source), Path(out)

    def table(name: str) -> dict[str, str]:
        path = src / name
        if not path.is_file():
            raise DownloadError(f"{path} is missing: is {src} an unpacked NABirds folder?")
        rows = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                key, sep, value = line.strip().partition(" ")
                if not sep:
                    raise DownloadError(f"{path}:{n}: expected '<id> <value>' (got {line!r})")
                rows[key] = value.strip()
        return rows

    images, labels, split, classes = (table(n) for n in ("images.txt", "image_class_labels.txt",
                                                         "train_test_split.txt", "classes.txt"))
    for image_id, rel in images.items():
        if image_id not in labels or image_id not in split:
            raise DownloadError(f"image {image_id} ({rel}) has no class label or split in {src}")
        path = (src / "images" / rel).resolve()
        if not path.is_file():
            raise DownloadError(f"{path} (image {image_id} in images.txt) does not exist")
        class_id = labels[image_id]
        folder = f"{class_id} {classes.get(class_id, '')}".strip().replace("/", "-")
        dest = out / ("train" if split[image_id] == "1" else "test") / folder / Path(rel).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        if copy:
            shutil.copy2(path, dest)
        else:
            dest.symlink_to(path)
    return out / "train", out / "test"
