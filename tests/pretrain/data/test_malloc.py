"""Loader workers keep freed blocks in glibc's heap instead of mmapping and unmapping each one."""
from __future__ import annotations

import ctypes.util
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import ctypes, sys, torch
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "tuned":
        from pretrain.data.heap import keep_heap
        assert keep_heap()
    before = libc.mallinfo2().hblks
    block = torch.empty(4 * 2**20)  # 16 MB, past glibc's default mmap threshold
    print(libc.mallinfo2().hblks - before)
""")


def mmapped_blocks(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or "libc.so.6" not in (ctypes.util.find_library("c") or ""),
                    reason="glibc only")
def test_keep_heap_serves_large_blocks_from_the_heap() -> None:
    assert mmapped_blocks("default") == 1  # the control: glibc maps a 16 MB block of its own
    assert mmapped_blocks("tuned") == 0
