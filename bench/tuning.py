"""glibc malloc tuning for the benchmark's own processes (client workers, no-op server).

This module owns one thing: making freed multi-MiB buffers stay in the heap instead of
going back to the kernel. A receive loop that allocates a fresh ``bytes`` per socket read
otherwise pays a page fault per 4 KiB every time (tens of thousands per 256 MiB), which
can cost a benchmark client as much CPU as the copy itself. Raising the trim threshold, the
top pad and the mmap threshold (what ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_`` /
``MALLOC_MMAP_THRESHOLD_`` do) keeps those pages mapped. A no-op where glibc is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

_MiB = 1024 * 1024


def keep_freed_memory(
    trim_threshold: int = 512 * _MiB, top_pad: int = 64 * _MiB, mmap_threshold: int = 32 * _MiB
) -> bool:
    """Apply the settings to this process; returns False where mallopt is unavailable."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold))
    ok = bool(mallopt(M_TRIM_THRESHOLD, trim_threshold)) and ok
    return bool(mallopt(M_TOP_PAD, top_pad)) and ok
