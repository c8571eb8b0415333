"""How much of what the local backend writes stays in the page cache: a window of recent blobs.

This module owns one policy. Every committed local blob joins a window of the most recently
written bytes (``storage.write_cache_window``); once the window is over its size, the oldest
blobs leave it and their clean pages are dropped from the page cache
(``POSIX_FADV_DONTNEED``). The kernel then hands those pages to the next blobs written.

Why: the kernel keeps everything written in the page cache for as long as memory is free,
so a steady upload stream makes the cache grow by every byte written. On VMs that give free
guest memory back to the host (free page reporting, DAMON reclaim), every page the cache
grows into has to be touched afresh. Writing a pack there costs several times the CPU of
writing into pages freed a moment earlier (session 7 and run I in bench/README.md).
Dropping blobs that left the window keeps the cache recycling warm pages. What was written
recently, and is the most likely to be read soon, stays cached. Reads are never limited: a
blob read after it left the window comes from the disk once and is cached again, and the
kernel decides from then on.

Dropping is advice. A page mapped by a reader, or not yet written back, is not dropped, and
a blob deleted meanwhile is skipped.
"""

from __future__ import annotations

import collections
import os
import threading
from pathlib import Path

_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)


class RecentWrites:
    """The window: blobs in the order they were written, and their total size. Thread-safe
    (blob-I/O threads commit concurrently). ``window`` 0 keeps everything (no dropping)."""

    def __init__(self, window: int) -> None:
        self.window = max(0, window)
        self._blobs: collections.deque[tuple[Path, int]] = collections.deque()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Bytes of the blobs in the window."""
        return self._bytes

    def add(self, path: Path, size: int) -> list[Path]:
        """Record a blob just written; return the blobs that left the window, oldest first
        (the new one too, if it alone is larger than the window)."""
        if not self.window:
            return []
        out: list[Path] = []
        with self._lock:
            self._blobs.append((path, size))
            self._bytes += size
            while self._bytes > self.window:
                old, n = self._blobs.popleft()
                self._bytes -= n
                out.append(old)
        return out


def drop_cached(path: Path) -> bool:
    """Ask the kernel to drop the clean cached pages of ``path``; False where it cannot
    (no ``posix_fadvise``, or the file is gone)."""
    if _DONTNEED is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        os.posix_fadvise(fd, 0, 0, _DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
