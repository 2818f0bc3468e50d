"""lnpo.train.memory: freed heap memory goes back to the OS."""

import ctypes
import platform

import pytest

from lnpo.train import memory


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's; elsewhere a no-op")
def test_freed_heap_is_returned_to_the_os():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block, count = 32 * 1024, 4096  # 128 MiB in blocks below glibc's mmap threshold: ordinary heap
    blocks = [libc.malloc(block) for _ in range(count)]
    assert all(blocks)
    for b in blocks:
        ctypes.memset(b, 1, block)  # touched: resident
    pin = libc.malloc(64)  # allocated last, it keeps free() from shrinking the heap on its own
    for b in blocks:
        libc.free(b)
    before = _rss_mib()
    assert memory.release_freed_host_memory() is True
    after = _rss_mib()
    libc.free(pin)
    assert before - after > 64, (before, after)  # most of the 128 MiB came back
