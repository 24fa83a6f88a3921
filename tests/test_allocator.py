"""glibc keeps freed activation buffers: re-allocating them no longer page-faults."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import torch
from mil.allocator import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "1" else False
for _ in range(8):  # warm: the heap grows to its steady size
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
# a 64 MiB activation (above glibc's 32 MiB dynamic mmap cap), freed and re-allocated as in
# every forward pass
for _ in range(20):
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(tuned: bool) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, "1" if tuned else "0"], check=True,
                         capture_output=True, text=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_refaulting() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    flag, default = _faults(tuned=False)
    tuned_flag, tuned = _faults(tuned=True)
    assert tuned_flag == "True"
    assert default > 20 * 8000  # each 64 MiB block mapped afresh: ~16,384 pages, every time
    assert tuned < default / 20


def test_keep_freed_memory_is_idempotent() -> None:
    from mil.allocator import keep_freed_memory

    first = keep_freed_memory()
    assert keep_freed_memory() is first


TRIM_PROBE = """
import numpy as np
from mil.allocator import keep_freed_memory, trim_freed_memory
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) >> 10
keep_freed_memory()  # every block on the heap, as a streamed epoch's bag reads end up
blocks = [np.ones(1 << 20, np.uint8) for _ in range(300)]  # 300 MiB of 1 MiB reads
keep = blocks[-1]
del blocks  # freed, but held by the heap (the last block pins its top)
held = rss()
released = trim_freed_memory()
print(released, held, rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_freed_memory_gives_freed_heap_pages_back() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], check=True, capture_output=True,
                         text=True).stdout.split()
    released, held, after = out[0], int(out[1]), int(out[2])
    assert released == "True" and held - after > 250  # MiB back to the kernel
