"""Host memory housekeeping for the CPU backend.

XLA:CPU allocates its compiler scratch and the step's buffers with the C
library's ``malloc``. glibc keeps freed heap memory (in particular in the
per-thread arenas the compiler's threads used) instead of returning it to the
OS, so after the train step has compiled, the process keeps the compiler's
peak resident and the step's own buffers come on top of it.
:func:`release_freed_host_memory` asks glibc to give that freed memory back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim`` or None (musl, macOS, Windows: no such function)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def release_freed_host_memory() -> bool:
    """Return the process's freed ``malloc`` memory to the OS (glibc ``malloc_trim(0)``).

    Call it after a large transient allocation has been freed, e.g. once the train
    step has compiled: it lowers the resident set (and so the process's peak RSS
    while training) without touching live buffers, and costs a few milliseconds.
    Returns True if glibc released memory, False if there was nothing to release
    or the C library is not glibc (then it is a no-op).
    """
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
