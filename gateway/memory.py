"""Process-wide memory tuning for a long-running, multi-threaded gateway.

glibc gives every thread that allocates its own malloc arena, and each arena keeps freed
multi-MiB buffers around. With a CPU pool, I/O threads and the metadata threads, that
multiplies the resident set far beyond the live data. Capping the arena count keeps RSS
close to what requests actually hold. Call :func:`tune_malloc` before any thread starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

M_ARENA_MAX = -8

log = logging.getLogger(__name__)


def tune_malloc(arena_max: int = 2) -> bool:
    """Cap glibc malloc arenas; returns False where glibc is not the allocator."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_ARENA_MAX, arena_max))
    if not ok:
        log.debug("mallopt(M_ARENA_MAX) was refused")
    return ok
