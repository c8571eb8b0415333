"""The download pipeline: manifest range -> chunk locations -> pack record reads ->
AES-GCM open + zstd decompress in the CPU pool -> ordered stream of plaintext slices.

A bounded window of chunks (``read_ahead``) is fetched and decoded ahead of the consumer, so
the network, the backend and the CPU overlap while memory stays bounded. Unwrapped pack DEKs
are kept in a small in-process LRU (never in a shared cache), and concurrent requests for the
same pack's DEK share one unwrap.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from concurrent.futures import Executor

from crypto import KEKProvider, Sealer
from dedup import ChunkLocation, open_record
from dedup.manifest import Manifest
from gateway.backends.base import BlobBackend, pack_blob_name
from gateway.meta.store import MetadataStore

LOOKUP_WINDOW = 256


class DataLossError(RuntimeError):
    """A manifest references a chunk or pack the stores no longer have."""


class ChunkReader:
    """Streams byte ranges of objects out of packs."""

    def __init__(
        self,
        backend: BlobBackend,
        meta: MetadataStore,
        kek: KEKProvider,
        pool: Executor,
        read_ahead: int = 4,
        sealer_cache: int = 512,
    ) -> None:
        self.backend = backend
        self.meta = meta
        self.kek = kek
        self.pool = pool
        self.read_ahead = max(1, read_ahead)
        self._sealers: collections.OrderedDict[str, asyncio.Future[Sealer]] = collections.OrderedDict()
        self._sealer_cache = sealer_cache

    async def _sealer(self, pack_id: str) -> Sealer:
        fut = self._sealers.get(pack_id)
        if fut is None:
            fut = asyncio.ensure_future(self._load_sealer(pack_id))
            self._sealers[pack_id] = fut
            while len(self._sealers) > self._sealer_cache:
                self._sealers.popitem(last=False)
        else:
            self._sealers.move_to_end(pack_id)
        try:
            return await asyncio.shield(fut)
        except BaseException:
            if self._sealers.get(pack_id) is fut and fut.done():
                del self._sealers[pack_id]
            raise

    async def _load_sealer(self, pack_id: str) -> Sealer:
        record = await self.meta.get_pack(pack_id)
        if record is None:
            raise DataLossError(f"pack {pack_id} is not in the metadata store")
        return Sealer(await self.kek.unwrap(record.wrapped_dek))

    async def _chunk(self, cid: bytes, loc: ChunkLocation) -> bytes:
        sealer, record = await asyncio.gather(
            self._sealer(loc.pack_id),
            self.backend.read_range(pack_blob_name(loc.pack_id), loc.offset, loc.length),
        )
        return await asyncio.get_running_loop().run_in_executor(self.pool, open_record, sealer, record, cid)

    async def _locations(self, ids: tuple[bytes, ...]) -> dict[bytes, ChunkLocation]:
        unique = list(dict.fromkeys(ids))
        found = await self.meta.lookup_chunks(unique)
        missing = [c.hex() for c in unique if c not in found]
        if missing:
            raise DataLossError(f"chunks missing from the index: {', '.join(missing[:4])}")
        return found

    async def stream(self, manifest: Manifest, start: int, end: int) -> AsyncIterator[memoryview]:
        """Yield the object's bytes [start, end) in order."""
        if start >= end:
            return
        first, last, offset = manifest.span(start, end)
        pending: collections.deque[asyncio.Future[bytes]] = collections.deque()
        next_index = first
        locs: dict[bytes, ChunkLocation] = {}
        try:
            for index in range(first, last):
                while next_index < last and len(pending) < self.read_ahead:
                    cid = manifest.chunk_ids[next_index]
                    if cid not in locs:
                        locs = await self._locations(
                            manifest.chunk_ids[next_index : next_index + LOOKUP_WINDOW]
                        )
                    pending.append(asyncio.ensure_future(self._chunk(cid, locs[cid])))
                    next_index += 1
                plain = memoryview(await pending.popleft())
                length = manifest.lengths[index]
                lo = max(start - offset, 0)
                hi = min(end - offset, length)
                yield plain[lo:hi]
                offset += length
        finally:
            for fut in pending:
                fut.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
