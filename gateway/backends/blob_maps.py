"""Memory maps of committed local blobs, kept for the next read of the same blob.

This module owns the local backend's cache of read-only memory maps (:class:`BlobMaps`).
A GET reads a pack in runs of a few MiB (``storage.read_run``). Mapping each run on its own
cost an ``open``, an ``mmap`` and page faults for every run, and once the run was sent an
``munmap``, whose TLB shootdown interrupts the other cores the process runs on. A map of the
whole blob, kept for the runs that follow, pays that once per blob instead: its pages stay
mapped while later runs (of this GET or of others) read them. On 64 MiB GETs of random data
that gave +6% to +11% MB/s and 7-11% less server CPU per MB in alternating rounds, and 4 to 32
kept maps all gained about the same (bench/README.md, run M).

Rules that keep it exact and bounded:
- Only committed blobs are mapped, and those never change: a blob is published once, by a
  rename, and later only deleted. The backend still forgets a blob's map whenever it
  deletes or publishes that name, so a map never outlives the file it shows in this cache.
- The maps kept add up to at most ``max_bytes`` of blob (the least recently used go first).
  A blob larger than that is mapped for its reader but not kept. ``0`` keeps none.
- Dropping a map from the cache never unmaps it under a reader: each view handed out keeps
  its map alive, and the map is unmapped when its last view is released.
- The pages a kept map has touched count in the process's RSS as file pages (``RssFile``,
  not ``RssAnon``): they are the page cache's, shared and reclaimable, and at most
  ``max_bytes`` of them.

Not thread-safe: the backend uses it from the event loop only.
"""

from __future__ import annotations

import collections
import mmap


class BlobMaps:
    """An LRU of read-only maps of whole blobs, by blob name, bounded by their total size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._maps: collections.OrderedDict[str, mmap.mmap] = collections.OrderedDict()
        self._bytes = 0

    @property
    def held_bytes(self) -> int:
        """Total size of the blobs whose maps are kept."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._maps)

    def get(self, name: str) -> mmap.mmap | None:
        """The kept map of ``name`` (now the most recently used), or None."""
        mapped = self._maps.get(name)
        if mapped is not None:
            self._maps.move_to_end(name)
        return mapped

    def keep(self, name: str, mapped: mmap.mmap) -> None:
        """Keep ``mapped`` (the whole of blob ``name``), dropping the least recently used
        maps until the rest fit; a map larger than the whole cache is not kept."""
        self.forget(name)
        if len(mapped) > self.max_bytes:
            return
        while self._maps and self._bytes + len(mapped) > self.max_bytes:
            _, old = self._maps.popitem(last=False)
            self._bytes -= len(old)
        self._maps[name] = mapped
        self._bytes += len(mapped)

    def forget(self, name: str) -> None:
        """Drop the map of ``name``, if one is kept (its readers' views stay valid)."""
        old = self._maps.pop(name, None)
        if old is not None:
            self._bytes -= len(old)

    def clear(self) -> None:
        """Drop every kept map."""
        self._maps.clear()
        self._bytes = 0
