"""Object manifests: the ordered list of chunk references that makes up an object's bytes.

A manifest is stored in the metadata store, never in packs. Its binary form is
``MANIFEST_MAGIC (4) | version u8 | reserved u8*3 | count u32 LE`` followed by ``count``
entries of ``chunk_id (32) | plain_len u32 LE``. The object's byte offsets are the running
sum of ``plain_len``. See docs/format.md.
"""

from __future__ import annotations

import bisect
import itertools
import struct
from dataclasses import dataclass

from dedup.errors import CorruptPackError

MANIFEST_MAGIC = b"SMF\x00"
MANIFEST_VERSION = 1
_HEAD = struct.Struct("<4sB3xI")
_ENTRY = struct.Struct("<32sI")


@dataclass(frozen=True)
class Manifest:
    """Chunk ids and plain lengths, in object order, with precomputed start offsets."""

    chunk_ids: tuple[bytes, ...]
    lengths: tuple[int, ...]

    @property
    def size(self) -> int:
        return sum(self.lengths)

    def offsets(self) -> list[int]:
        """Start offset of each chunk within the object."""
        return [0, *itertools.accumulate(self.lengths)][:-1]

    def span(self, start: int, end: int) -> tuple[int, int, int]:
        """Chunks covering object bytes [start, end): (first index, last index + 1, first chunk's offset)."""
        offsets = self.offsets()
        first = bisect.bisect_right(offsets, start) - 1
        last = bisect.bisect_left(offsets, end)
        return first, last, offsets[first]

    def encode(self) -> bytes:
        out = bytearray(_HEAD.pack(MANIFEST_MAGIC, MANIFEST_VERSION, len(self.chunk_ids)))
        for cid, length in zip(self.chunk_ids, self.lengths, strict=True):
            out += _ENTRY.pack(cid, length)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        if len(data) < _HEAD.size:
            raise CorruptPackError("manifest too short")
        magic, version, count = _HEAD.unpack_from(data)
        if magic != MANIFEST_MAGIC or version != MANIFEST_VERSION:
            raise CorruptPackError(f"bad manifest magic/version {magic!r}/{version}")
        if len(data) != _HEAD.size + count * _ENTRY.size:
            raise CorruptPackError("manifest length does not match its count")
        entries = list(_ENTRY.iter_unpack(memoryview(data)[_HEAD.size :]))
        return cls(tuple(e[0] for e in entries), tuple(e[1] for e in entries))

    @classmethod
    def concat(cls, parts: list[Manifest]) -> Manifest:
        return cls(
            tuple(itertools.chain.from_iterable(p.chunk_ids for p in parts)),
            tuple(itertools.chain.from_iterable(p.lengths for p in parts)),
        )


EMPTY_MANIFEST = Manifest((), ())
