"""The images a job reads: a folder walked recursively or a text file listing paths, in a fixed order, with the
root their ids are relative to and the class folder each belongs to (used by `sslforge embed` and the INT8
calibration alike)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from export.errors import ExportError
from pretrain.data.images import walk_files


@dataclass
class ImageSource:
    """The images to embed: absolute paths in a fixed order, and the root their ids are relative to."""

    root: Path
    paths: list[Path]

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def digest(self) -> str:
        """Identifies the list, so a resumed job refuses a folder whose content changed."""
        h = hashlib.sha256()
        for p in self.paths:
            h.update(os.fsencode(self.relative(p)) + b"\n")  # any name the filesystem has, UTF-8 or not
        return "sha256:" + h.hexdigest()[:16]


def image_extensions() -> set[str]:
    return {ext.lower() for ext in Image.registered_extensions()}


def find_images(images: str | Path) -> ImageSource:
    """A folder is walked recursively (pretrain.data.walk_files: sorted, hidden entries skipped, links followed
    once per real file; image extensions only); a text file is a list of image paths, one a line, absolute
    or relative to the list's folder."""
    images = Path(images).expanduser()
    if images.is_file():
        base = images.parent.resolve()
        text = images.read_text(errors="surrogateescape")  # names as the filesystem has them
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        paths = [(base / line).resolve() for line in lines]
        if not paths:
            raise ExportError(f"file list {images} is empty")
        return ImageSource(Path(os.path.commonpath([p.parent for p in paths])), paths)
    if not images.is_dir():
        raise ExportError(f"image folder {images} does not exist")
    root = images.resolve()
    extensions = image_extensions()
    paths = [p for p in walk_files(root) if p.suffix.lower() in extensions]  # links: once per real file
    if not paths:
        raise ExportError(f"no image files under {images}")
    return ImageSource(root, paths)


def label_of(relative: str) -> str | None:
    """The class folder: the first path component of an image inside a sub-folder, else None."""
    parts = relative.split("/")
    return parts[0] if len(parts) > 1 else None
