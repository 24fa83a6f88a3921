"""Keep freed activation buffers in the process instead of giving them back to the kernel.

A CNN forward pass on the CPU frees and re-allocates the same multi-megabyte activations for
every batch. glibc's default serves blocks above its (dynamic) mmap threshold with fresh
``mmap`` calls and unmaps them on ``free``, so every batch page-faults its whole working set
again: on this project's 2-core machine ``tf_efficientnet_lite0`` at batch 32 spent ~1.4 M
minor faults and a third of its time in the kernel per 64 cells. Raising glibc's mmap and trim
thresholds (``mallopt``, the same knobs as the ``MALLOC_MMAP_THRESHOLD_`` environment variable,
but settable after start-up) keeps those blocks on the heap for reuse: zero faults in steady
state. PyTorch's CPU tuning guide recommends the same effect via jemalloc/tcmalloc; this needs
no extra library. Elsewhere than glibc (macOS, musl, Windows) the call does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("mil.allocator")
M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
DEFAULT_BYTES = 1 << 30  # blocks up to 1 GiB stay on the heap; up to 1 GiB of slack kept
_applied: list[int] = []


def keep_freed_memory(limit: int = DEFAULT_BYTES) -> bool:
    """Raise glibc's mmap and trim thresholds to ``limit`` bytes; True when glibc took them.

    Idempotent and process-wide; call it before the first large tensor is allocated.
    """
    if _applied:
        return _applied[0] == limit
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, limit) == 1 and mallopt(M_TRIM_THRESHOLD, limit) == 1
    if ok:
        _applied.append(limit)
        log.debug("glibc mmap/trim thresholds set to %d bytes", limit)
    return ok
