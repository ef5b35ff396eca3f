"""Image collections on disk: scanning folders, decoding robustly, and the bundled CIFAR-10 sample.

Two layouts are read, decided from where the images are: an ImageFolder (one sub-folder per class;
labels are only used for evaluation) and a flat folder of unlabelled images. Symbolic links are
followed once per real folder and file (`walk_files`), so a link loop cannot multiply the images.
Files that are not readable images are skipped and counted at scan time; an image that decodes badly
later (a truncated JPEG) is replaced and counted by the datasets, so one bad file in a million never
stops a run.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

SAMPLE_ARCHIVE = "cifar10-sample.tar.gz"
SAMPLE_VERSION = "v1"


# What decoding a bad file raises: truncated or corrupt data, unknown formats, and decompression bombs
# (PIL's DecompressionBombError derives from Exception only). Every stage catches exactly these.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class DataError(ValueError):
    """The image folder cannot be used (missing, empty, unreadable); the message says which and why."""


@dataclass
class ImageList:
    """The readable images of a folder, with class labels when the folder has class sub-folders."""

    root: Path
    paths: list[Path]
    labels: list[int] | None
    classes: list[str] | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    layout: str = ""  # what scan_images decided, e.g. "10 class folders: 5,000 images"

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def subset(self, indices: list[int]) -> "ImageList":
        return ImageList(self.root, [self.paths[i] for i in indices],
                         None if self.labels is None else [self.labels[i] for i in indices],
                         self.classes, self.skipped, self.layout)

    def random_subset(self, n: int | None, seed: int) -> "ImageList":
        """A fixed random subset of `n` images (in folder order); all of them when n is None or too large."""
        if n is None or n >= len(self):
            return self
        import torch

        g = torch.Generator().manual_seed(seed)
        return self.subset(sorted(torch.randperm(len(self), generator=g)[:n].tolist()))


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image fully and return it upright (EXIF orientation applied) as RGB; transparent pixels
    become white. The one image loader of every stage (training, evaluation, embedding, serving).

    Raises one of DECODE_ERRORS on unreadable, truncated or oversized (decompression bomb) files.
    """
    with Image.open(path) as im:
        im.load()
        if im.mode == "RGB":
            rgb = im.copy()
        elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            rgb = Image.new("RGB", rgba.size, (255, 255, 255))
            rgb.paste(rgba, mask=rgba.getchannel("A"))
        else:
            rgb = im.convert("RGB")
        orientation = im.getexif().get(ORIENTATION, 1)
    if isinstance(orientation, int) and orientation in _UPRIGHT:  # a phone photo stored sideways: turn it upright
        rgb = rgb.transpose(_UPRIGHT[orientation])
    return rgb


ORIENTATION = 0x0112  # EXIF tag
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def _probe(path: Path) -> str | None:
    """Return None when `path` looks like an image (header parses), else the reason it does not."""
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - parsing the header is the check
        return None
    except UnidentifiedImageError:
        return "not an image"
    except Image.DecompressionBombError as e:
        return f"too large ({e})"
    except (OSError, ValueError, SyntaxError) as e:
        return str(e) or type(e).__name__


def walk_files(folder: str | os.PathLike) -> list[Path]:
    """The regular files under `folder`, in sorted walk order (a folder's files, then its sub-folders);
    hidden entries skipped.

    Symbolic links are followed, but each real folder is walked once and each real file is listed once,
    under the first path that reaches it: a link loop, or a second link to a folder or file already seen,
    adds nothing. (Links to folders elsewhere, e.g. class folders on another disk, keep working.)
    """
    folder = Path(folder)
    out: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    try:
        st = folder.stat()
    except OSError:
        return out
    stack = [(folder, (st.st_dev, st.st_ino))]
    while stack:
        path, key = stack.pop()
        if key in seen_dirs:
            continue
        seen_dirs.add(key)
        try:
            with os.scandir(path) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            try:
                if entry.is_dir():
                    real = entry.stat()
                    subdirs.append((Path(entry.path), (real.st_dev, real.st_ino)))
                elif entry.is_file():  # regular files only: no FIFOs, sockets or devices
                    if entry.is_symlink():
                        real = entry.stat()
                        real_key = (real.st_dev, real.st_ino)
                    else:  # the inode comes with the directory listing: no system call per file
                        real_key = (key[0], entry.inode())
                    if real_key not in seen_files:
                        seen_files.add(real_key)
                        out.append(Path(entry.path))
            except OSError:  # vanished, or a broken link
                continue
        stack.extend(reversed(subdirs))
    return out


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _real_classes(root: Path, grouped: list[Path], warn: bool) -> tuple[list[tuple[Path, str]], list[str]]:
    """(image, class folder) for images in class folders, and the class names. An image reached through a link
    from one class folder into another (cat/dogs -> ../dog) is labelled by the class folder it really lies in,
    said in one warning line: the link would otherwise relabel it silently."""
    real_root = root.resolve()
    out, moved = [], []
    for p in grouped:
        listed = real = p.relative_to(root).parts[0]
        try:
            parts = Path(os.path.realpath(p)).relative_to(real_root).parts
            if len(parts) > 1 and parts[0] != listed and (root / parts[0]).is_dir():
                real = parts[0]
        except ValueError:  # a link out of the folder: the class folder it was listed under
            pass
        if real != listed:
            moved.append((p, real))
        out.append((p, real))
    if moved and warn:
        first, real = moved[0]
        warnings.warn(f"{root}: {_plural(len(moved), 'image')} reached through links from one class folder into "
                      f"another are labelled by the class folder they lie in (first: {first.relative_to(root)} is in "
                      f"{real}/); remove the links to silence this", stacklevel=3)
    return out, sorted({c for _, c in out})


def scan_images(root: str | os.PathLike, *, warn: bool = True, threads: int = 16) -> ImageList:
    """List the readable images under `root`, and decide its layout from them (`ImageList.layout` says which).

    Sub-folders that hold images are class folders (an ImageFolder: sorted class names, images found
    recursively inside each) when no image lies directly in `root`; with loose images and none in
    sub-folders, `root` is a flat folder of unlabelled images. Sub-folders without images never count,
    so a stray folder cannot turn a flat folder into classes. When both hold images, the side with more
    images wins (a tie: flat) and one warning line says what was decided. Files whose header does not
    parse as an image are skipped and reported in one warning line.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: pass a folder of images (or of class sub-folders)")
    candidates = walk_files(root)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        probes = pool.map(_probe, candidates)
        reasons = list(tqdm(probes, total=len(candidates), desc=f"scanning {root.name}", unit="file", leave=False,
                            disable=len(candidates) < 20_000))
    skipped = [(p, r) for p, r in zip(candidates, reasons) if r is not None]
    readable = [p for p, r in zip(candidates, reasons) if r is None]
    loose = [p for p in readable if p.parent == root]
    grouped = [p for p in readable if p.parent != root]
    folders = sorted({p.relative_to(root).parts[0] for p in grouped})
    labelled = len(grouped) > len(loose)
    if loose and grouped and warn:
        where = (f"{root}: {_plural(len(loose), 'image')} at the top level and {len(grouped):,} in "
                 f"{_plural(len(folders), 'sub-folder')}: ")
        warnings.warn(where + (f"read as {len(folders)} class folders; the {len(loose):,} top-level images are "
                               f"skipped (move them into a class folder to use them)" if labelled else
                               f"read as a flat folder of {len(readable):,} unlabelled images (to use class "
                               f"labels, move the top-level images into class folders)"), stacklevel=2)
    if labelled:
        grouped, folders = _real_classes(root, grouped, warn)
        classes: list[str] | None = folders
        index = {c: i for i, c in enumerate(folders)}
        kept = [(p, index[c]) for p, c in grouped]
        skipped += [(p, "outside the class sub-folders") for p in loose]
        layout = f"{len(folders)} class folders: {len(kept):,} images"
    else:
        classes = None
        kept = [(p, -1) for p in readable]
        layout = f"flat folder: {_plural(len(kept), 'unlabelled image')}"
    if not kept:
        detail = f" ({len(skipped)} files skipped, e.g. {skipped[0][0].name}: {skipped[0][1]})" if skipped else ""
        raise DataError(f"no readable images in {root}{detail}")
    unreadable = [(p, r) for p, r in skipped if r != "outside the class sub-folders"]
    if warn and unreadable:
        first, reason = unreadable[0]
        warnings.warn(f"{root}: skipped {len(unreadable)} of {len(candidates)} files that are not "
                      f"readable images (first: {first}: {reason})", stacklevel=2)
    paths = [p for p, _ in kept]
    labels = [label for _, label in kept] if classes is not None else None
    return ImageList(root, paths, labels, classes, skipped, layout)


def typical_size(images: ImageList, probes: int = 32) -> int:
    """Median short side of up to `probes` evenly spaced images (headers only): 32 for CIFAR, 500 for photos."""
    step = max(1, len(images) // probes)
    sides = []
    for path in images.paths[::step][:probes]:
        with Image.open(path) as im:
            sides.append(min(im.size))
    return sorted(sides)[len(sides) // 2]


def cache_dir() -> Path:
    """Where sslforge keeps unpacked data: $SSLFORGE_CACHE, else $XDG_CACHE_HOME/sslforge, else ~/.cache/sslforge."""
    if "SSLFORGE_CACHE" in os.environ:
        return Path(os.environ["SSLFORGE_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "sslforge"


def sample_dir() -> Path:
    """Unpack the bundled CIFAR-10 sample (5,000 train / 1,000 test JPEGs, 32 px) once and return its folder.

    The folder holds `train/<class>/` and `test/<class>/`. Unpacking goes to a temporary folder that
    is renamed into place, so an interrupted unpack is never mistaken for a complete one.
    """
    target = cache_dir() / f"cifar10-sample-{SAMPLE_VERSION}"
    if (target / "train").is_dir() and (target / "test").is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
    archive = resources.files("pretrain") / "assets" / SAMPLE_ARCHIVE
    with resources.as_file(archive) as path, tarfile.open(path) as tar:
        tar.extractall(tmp, filter="data")
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target
