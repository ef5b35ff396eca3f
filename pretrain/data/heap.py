"""glibc malloc settings for image loader workers.

A view pipeline allocates and frees tensors of a few hundred KB per operation (one 224 px float view is
600 KB). glibc serves blocks above its mmap threshold (128 KB until a large block has been freed)
with a fresh mmap and returns them with munmap on free, so every operation pays page faults on
memory the kernel zeroes again: a hue shift at 224 px took 2.7 ms that way and 0.5 ms from the heap
(docs/benchmarks/training-speed.md). Loader workers therefore keep blocks up to 32 MB (glibc's ceiling) in the heap
and do not give freed memory back until 256 MB sit unused at its top.

Only worker processes are tuned: in the training process the large activations (over 32 MB at
batch 128) are mmapped whatever the threshold, and keeping them instead raised peak memory by 20-30%.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 256 * 2**20


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") else None


def keep_heap(worker_id: int = 0) -> bool:
    """Raise glibc's mmap and trim thresholds in this process (a DataLoader `worker_init_fn`); returns
    whether the settings took effect (False off glibc: macOS, musl, Windows)."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
