"""Atomic file writes: write to a temporary file in the same folder, fsync, rename.

A process killed at any moment leaves either the previous file or the new one, never half of one. Folders
written as a whole (an index dir) are swapped in with `replace_dir`.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Atomically create `path` with `writer(tmp_path)` (for libraries that write to a path themselves)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def write_text(path: str | Path, text: str, errors: str = "strict") -> None:
    """UTF-8 text; errors="surrogateescape" writes file names that are not UTF-8 as their own bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors=errors)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def save_npy(path: str | Path, array: Any) -> None:
    """An array in .npy format, no pickles (np.save on a path would append ".npy" to the temporary name)."""
    import numpy as np  # here, so that the modules that only write text do not load numpy

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    write_with(path, write)


RENAME_EXCHANGE, AT_FDCWD = 2, -100  # linux/fs.h, fcntl.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    return renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def replace_dir(new: str | Path, path: str | Path) -> None:
    """Put the complete folder `new` (a sibling of `path`) at `path`, dropping what was there.

    Where `path` exists, the two are exchanged in one atomic step, so a reader or a crash sees the old folder or
    the new one and never no folder; where the system has no exchange, the old one is renamed aside first (a
    crash between the two renames leaves it at `.NAME.old-PID`).
    """
    new, path = Path(new), Path(path)
    if path.exists() and _exchange(new, path):
        _fsync_dir(path.parent)
        shutil.rmtree(new, ignore_errors=True)  # now the old folder
        return
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(new, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
