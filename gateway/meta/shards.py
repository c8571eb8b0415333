"""Shard placement for the sharded PostgreSQL metadata store (pure: no I/O).

* :class:`HashRing`: a consistent-hash ring with virtual nodes over shards ``0..N-1``. Each
  shard owns ``vnodes`` points on a 64-bit circle; a key belongs to the owner of the first
  point at or after the key's hash (wrapping around). Growing the ring from N to N+1 shards
  moves only the keys that the new shard's points capture (about 1/(N+1) of them); every
  other key keeps its shard.
* Placement rules on the ring: a new bucket's shard (recorded explicitly in the catalog, so
  the ring only proposes; the catalog decides), a chunk id's shard (the chunk index) and a
  pack id's shard (pack records). Each rule hashes under its own namespace, so the three
  spread independently.

The chunk index has no explicit map: its rows are found by recomputing the ring, so the
shard count of a deployment is fixed (the schema records it and the store refuses another).
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field

DEFAULT_VNODES = 128


def ring_hash(data: bytes) -> int:
    """A stable, well-spread 64-bit point on the ring for ``data``."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _vnode_points(shards: int, vnodes: int) -> list[tuple[int, int]]:
    """Every (point, shard) of the ring, sorted by point (ties go to the lower shard)."""
    return sorted((ring_hash(f"shard-{s}#{v}".encode()), s) for s in range(shards) for v in range(vnodes))


@dataclass(frozen=True)
class HashRing:
    """Consistent hashing of keys onto ``shards`` shards with ``vnodes`` virtual nodes each."""

    shards: int
    vnodes: int = DEFAULT_VNODES
    _points: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _owners: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"a ring needs at least one shard, not {self.shards}")
        if self.vnodes < 1:
            raise ValueError(f"a ring needs at least one virtual node per shard, not {self.vnodes}")
        pairs = _vnode_points(self.shards, self.vnodes)
        object.__setattr__(self, "_points", tuple(p for p, _ in pairs))
        object.__setattr__(self, "_owners", tuple(s for _, s in pairs))

    def shard_of(self, key: bytes) -> int:
        """The shard owning ``key``: the owner of the first point at or after its hash."""
        if self.shards == 1:
            return 0
        i = bisect.bisect_left(self._points, ring_hash(key))
        return self._owners[i % len(self._points)]

    # -- placement rules ----------------------------------------------------------------
    def bucket_shard(self, bucket: str) -> int:
        """Where a new bucket is placed (the catalog records the answer)."""
        return self.shard_of(b"bucket\0" + bucket.encode("utf-8", "surrogatepass"))

    def chunk_shard(self, chunk_id: bytes) -> int:
        """The shard holding ``chunk_id``'s chunk index row."""
        return self.shard_of(b"chunk\0" + chunk_id)

    def pack_shard(self, pack_id: str) -> int:
        """The shard holding ``pack_id``'s pack record."""
        return self.shard_of(b"pack\0" + pack_id.encode())


def advisory_key(namespace: str, *parts: str) -> int:
    """A signed 64-bit PostgreSQL advisory-lock key for ``parts`` under ``namespace``.

    Parts are length-prefixed, so ("ab", "c") and ("a", "bc") differ. A collision between two
    keys only makes their writers wait for each other."""
    encoded = [p.encode("utf-8", "surrogatepass") for p in parts]
    data = namespace.encode() + b"".join(len(e).to_bytes(4, "big") + e for e in encoded)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)
