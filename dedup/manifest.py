"""Object manifests: the ordered list of chunk references that makes up an object's bytes.

A manifest is stored in the metadata store, never in packs. Its binary form is
``MANIFEST_MAGIC (4) | version u8 | reserved u8*3 | count u32 LE`` followed by ``count``
entries of ``chunk_id (32) | plain_len u32 LE``. The object's byte offsets are the running
sum of ``plain_len``.

A tiny object keeps its one sealed record *inline* (version 2): after the single entry come
the DEK wrapped by the KEK (as in a pack header) and ``record_len u32 LE | record`` (a pack
record, see :mod:`dedup.pack`). Its chunk is in no pack and not in the chunk index, so
:attr:`Manifest.indexed_ids` is empty. See docs/format.md.
"""

from __future__ import annotations

import bisect
import itertools
import struct
from dataclasses import dataclass

from crypto.kek import WrappedKey
from dedup.errors import CorruptPackError
from dedup.pack import ByteCursor, encode_wrapped_key, read_wrapped_key

MANIFEST_MAGIC = b"SMF\x00"
MANIFEST_VERSION = 1
INLINE_VERSION = 2  # one entry, then the wrapped DEK and the sealed record
_HEAD = struct.Struct("<4sB3sI")
_ENTRY = struct.Struct("<32sI")
_LEN = struct.Struct("<I")


@dataclass(frozen=True)
class InlineRecord:
    """A tiny object's only chunk, sealed (a pack record) under the DEK ``wrapped_dek`` wraps."""

    wrapped_dek: WrappedKey
    record: bytes


@dataclass(frozen=True)
class Manifest:
    """Chunk ids and plain lengths, in object order, with precomputed start offsets."""

    chunk_ids: tuple[bytes, ...]
    lengths: tuple[int, ...]
    inline: InlineRecord | None = None  # the data itself, for a tiny object (one chunk)

    def __post_init__(self) -> None:
        if self.inline is not None and len(self.chunk_ids) != 1:
            raise ValueError("an inline manifest holds exactly one chunk")

    @property
    def indexed_ids(self) -> tuple[bytes, ...]:
        """Chunk ids that live in packs and the chunk index (none for an inline manifest)."""
        return () if self.inline is not None else self.chunk_ids

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
        version = MANIFEST_VERSION if self.inline is None else INLINE_VERSION
        out = bytearray(_HEAD.pack(MANIFEST_MAGIC, version, bytes(3), len(self.chunk_ids)))
        for cid, length in zip(self.chunk_ids, self.lengths, strict=True):
            out += _ENTRY.pack(cid, length)
        if self.inline is not None:
            out += encode_wrapped_key(self.inline.wrapped_dek)
            out += _LEN.pack(len(self.inline.record))
            out += self.inline.record
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        if len(data) < _HEAD.size:
            raise CorruptPackError("manifest too short")
        magic, version, reserved, count = _HEAD.unpack_from(data)
        if magic != MANIFEST_MAGIC or version not in (MANIFEST_VERSION, INLINE_VERSION) or any(reserved):
            raise CorruptPackError(f"bad manifest magic/version {magic!r}/{version}")
        entries_end = _HEAD.size + count * _ENTRY.size
        inline: InlineRecord | None = None
        if version == INLINE_VERSION:
            if count != 1 or len(data) < entries_end:
                raise CorruptPackError("inline manifest must hold exactly one chunk")
            cur = ByteCursor(memoryview(data), entries_end, len(data), "inline manifest")
            wrapped = read_wrapped_key(cur, "inline manifest")
            (record_len,) = cur.unpack(_LEN)
            record = bytes(cur.take(record_len))
            if cur.pos != len(data):
                raise CorruptPackError("inline manifest has unexpected extra bytes")
            inline = InlineRecord(wrapped, record)
        elif len(data) != entries_end:
            raise CorruptPackError("manifest length does not match its count")
        entries = list(_ENTRY.iter_unpack(memoryview(data)[_HEAD.size : entries_end]))
        return cls(tuple(e[0] for e in entries), tuple(e[1] for e in entries), inline)

    @classmethod
    def concat(cls, parts: list[Manifest]) -> Manifest:
        if any(p.inline is not None for p in parts):
            raise ValueError("inline manifests cannot be concatenated (multipart parts are never inline)")
        return cls(
            tuple(itertools.chain.from_iterable(p.chunk_ids for p in parts)),
            tuple(itertools.chain.from_iterable(p.lengths for p in parts)),
        )


EMPTY_MANIFEST = Manifest((), ())
