"""The GET path's chunk cache: decoded chunk plaintext by chunk id, bounded in bytes, and
the single-flight table that lets concurrent GETs of one chunk share one fetch and decode.

Chunk ids are keyed per tenant (keyed BLAKE3), and a reader only asks for ids named by a
manifest the requester may read, so one tenant's request can never be answered from
another tenant's chunk. A chunk's plaintext never changes under its id (repacking moves
records, key rotation re-seals them, gc deletes them; none of that changes what an id
decodes to), so entries need no invalidation: they only age out.

What is cached is the reader's choice (:class:`gateway.readpath.ChunkReader`): zstd chunks,
whose decode is the expensive part of a GET, and, on backends without memory maps (remote
S3), every chunk, since there each read is a request to the backend.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass
class CacheStats:
    """Counters since start (exported as ``chunk_cache_*`` metrics)."""

    hits: int = 0  # chunks answered from the cache
    misses: int = 0  # cacheable chunks that had to be fetched and decoded
    shared: int = 0  # chunks another request was already decoding (single-flight joins)


class ChunkCache:
    """A byte-bounded LRU of chunk id -> immutable plaintext. Not thread-safe: event loop only.

    ``capacity`` 0 turns it off. A chunk larger than an eighth of the capacity is not kept,
    so one big chunk cannot flush everything else.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._max_item = self.capacity // 8
        self._items: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._bytes = 0
        self.stats = CacheStats()

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, chunk_id: bytes) -> bytes | None:
        plain = self._items.get(chunk_id)
        if plain is not None:
            self._items.move_to_end(chunk_id)
        return plain

    def put(self, chunk_id: bytes, plain: bytes) -> None:
        if not 0 < len(plain) <= self._max_item or chunk_id in self._items:
            return
        self._items[chunk_id] = plain
        self._bytes += len(plain)
        while self._bytes > self.capacity:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old)
