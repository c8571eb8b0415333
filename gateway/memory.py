"""Process-wide memory tuning for a long-running, multi-threaded gateway.

glibc gives every thread that allocates its own malloc arena, and each arena keeps freed
multi-MiB buffers around. With a CPU pool, I/O threads and the metadata threads, that
multiplies the resident set far beyond the live data. Capping the arena count keeps RSS
close to what requests actually hold. Call :func:`tune_malloc` before any thread starts.

Uploads allocate and free a few MiB per batch (batch buffers, sealed records). By default
glibc returns freed memory at the top of a heap to the kernel once it exceeds a small,
moving threshold, and serves buffers above another moving threshold with fresh ``mmap``\\ s:
either way the next buffer page-faults on every 4 KiB. Measured with four concurrent 64 MiB
PUTs, that was 80,000-110,000 page faults per GB stored (about 1.5 µs each on this kind
of VM) and 9% more server CPU per GB than with the settings below, for no gain in peak RSS
(16 concurrent uploads peaked the same either way): the memory is needed
again a few milliseconds later. So the thresholds are fixed: buffers below
``mmap_threshold`` come from the heap, a heap grows by ``top_pad`` more than it needs
(address space: untouched pages cost no RSS), and it is trimmed only when more than
``trim_threshold`` is free at its top. That leaves 7,000-14,000 faults per GB. :func:`trim`
gives all free memory back, and :func:`trim_when_idle` does so once the gateway goes idle.

Fixed thresholds have a price after a burst: freed buffers stay inside the heap, between
chunks still in use, where the top-of-heap trim never reaches them. After 16 concurrent
1 GiB GETs the server kept ~390 MiB of anonymous memory for as long as it stayed idle; a
``malloc_trim`` brought it to ~150 MiB. So a serving process watches for idleness (no
request in flight for ``server.idle_trim_seconds``) and, if its anonymous memory grew since
it last trimmed, drops the GET path's recycled buffers and trims.

The cyclic garbage collector is the other process-wide cost. Importing the gateway and its
libraries (aiohttp, aioboto3, botocore, cryptography...) leaves ~80,000 container objects
that live as long as the process, and every full collection walks all of them: during 11 s
of 4 KiB PUTs at concurrency 32, three full collections stopped the event loop for ~35 ms
each (0.105 s in all, about as much as the 325 younger-generation collections together).
:func:`freeze_startup_heap`
moves everything alive once the server is up into the collector's permanent generation,
which it never scans: the same run's full collections then took ~1 ms each. Cycles made
later are still collected as before, and the thresholds stay at Python's defaults, so a
cycle holding a large buffer is not kept longer. The price: a frozen object that later
becomes unreachable only through a cycle is never freed. What is alive at that point (the
runtime, the app, its pools and background tasks) lives as long as the process, so at
worst that is part of the startup heap, once.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from collections.abc import Callable

from gateway.libc import function

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MiB = 1024 * 1024
TRIM_GROWTH = 16 * MiB  # anonymous memory grown since the last trim that is worth a trim

log = logging.getLogger(__name__)


def tune_malloc(
    arena_max: int = 2,
    mmap_threshold: int = 32 * MiB,
    trim_threshold: int = 16 * MiB,
    top_pad: int = 16 * MiB,
) -> bool:
    """Cap glibc malloc arenas and fix the mmap/trim thresholds (see the module docstring);
    returns False where glibc is not the allocator."""
    mallopt = function("mallopt", [ctypes.c_int, ctypes.c_int])
    if mallopt is None:
        return False
    ok = True
    for param, value in (
        (M_ARENA_MAX, arena_max),
        (M_MMAP_THRESHOLD, mmap_threshold),
        (M_TRIM_THRESHOLD, trim_threshold),
        (M_TOP_PAD, top_pad),
    ):
        if not mallopt(param, value):
            log.debug("mallopt(%d, %d) was refused", param, value)
            ok = False
    return ok


def freeze_startup_heap() -> int:
    """Collect once, then move every object still alive into the collector's permanent
    generation (``gc.freeze``): call when the server is up, before it takes requests.
    Returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def trim() -> bool:
    """Return the free memory of every malloc arena to the kernel (glibc ``malloc_trim``).
    Costs page faults when that memory is needed again: call it when idle, not per request."""
    malloc_trim = function("malloc_trim", [ctypes.c_size_t])
    return bool(malloc_trim is not None and malloc_trim(0))


def status_bytes(field: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field of a process's ``/proc/PID/status`` (Linux: ``RssAnon``, ``VmHWM``...)
    in bytes, or None where ``/proc`` does not say."""
    prefix = f"{field}:".encode()
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(prefix):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def anonymous_rss() -> int | None:
    """This process's resident anonymous memory in bytes (``RssAnon``), or None."""
    return status_bytes("RssAnon")


async def trim_when_idle(
    busy: Callable[[], bool],
    release: Callable[[], object],
    idle_seconds: float,
    *,
    rss: Callable[[], int | None] = anonymous_rss,
    give_back: Callable[[], object] = trim,
    growth: int = TRIM_GROWTH,
    clock: Callable[[], float] = time.monotonic,
    on_trim: Callable[[int], object] = lambda freed: None,
) -> None:
    """Run forever: once ``busy()`` has been false for ``idle_seconds`` and the anonymous
    RSS has grown by ``growth`` bytes since the last trim (or since the start), call
    ``release()`` (on this loop: drop buffers kept for reuse), then ``give_back()`` (in a
    thread: ``malloc_trim`` walks every heap), then ``on_trim`` with the bytes given back.
    Busy is sampled a few times per period, so a burst shorter than a sample still counts
    through the RSS it leaves behind."""
    tick = max(idle_seconds / 4, 0.01)
    baseline = rss()
    idle_since: float | None = None
    while True:
        await asyncio.sleep(tick)
        if busy():
            idle_since = None
            continue
        now = clock()
        if idle_since is None:
            idle_since = now
        if now - idle_since < idle_seconds:
            continue
        current = rss()
        if current is not None and baseline is not None and current - baseline < growth:
            continue
        release()
        await asyncio.to_thread(give_back)
        after = rss()
        freed = current - after if current is not None and after is not None else 0
        log.debug("idle: gave %.1f MiB back to the kernel", freed / MiB)
        on_trim(freed)
        baseline, idle_since = after, None
