"""Writing packs to the blob backend: one open pack, and the shared small-object packer.

:class:`OpenPack` streams sealed records into one pack (fresh DEK, wrapped by the KEK) and
publishes it durably on close. Its records can be written behind the caller
(:meth:`OpenPack.write_behind`): one write in flight per pack, so an upload seals its next
batch while the previous one goes to the backend, and never holds more than one batch of
records waiting for the disk. :class:`SmallObjectPacker` group-commits small objects:
objects that arrive while a pack is being written wait and go into the next pack together,
so concurrent small PUTs share one pack file and one fsync instead of paying for their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from crypto import KEKProvider, Sealer, WrappedKey, new_dek
from dedup import PackWriter, SealedChunk, new_pack_id, seal_chunk
from gateway.backends.base import BlobBackend, BlobWriter, pack_blob_name
from gateway.meta.models import NewChunk, PackRecord

Fresh = list[tuple[bytes, memoryview]]  # (chunk id, plaintext) not yet stored anywhere
CpuRunner = Callable[..., Awaitable[object]]


@dataclass
class OpenPack:
    """One pack being written: records are appended in order, then the trailer on close."""

    writer: BlobWriter
    pack: PackWriter
    sealer: Sealer
    wrapped: WrappedKey
    name: str
    _writing: asyncio.Future[None] | None = field(default=None, init=False, repr=False)

    @classmethod
    async def create(cls, backend: BlobBackend, kek: KEKProvider) -> OpenPack:
        pack_id = new_pack_id()
        dek = new_dek()
        wrapped = await kek.wrap(dek)
        name = pack_blob_name(pack_id)
        writer = await backend.open_writer(name)
        pack = cls(writer, PackWriter(pack_id, wrapped), Sealer(dek), wrapped, name)
        pack._writing = asyncio.ensure_future(writer.write(pack.pack.header()))
        try:
            await pack.flush()
        except BaseException:  # failed or cancelled: the caller never sees this writer
            await pack.abort()
            raise
        return pack

    async def seal(self, cpu: CpuRunner, fresh: Fresh, level: int) -> list[SealedChunk]:
        """Compress and encrypt chunks under this pack's DEK, in parallel in the CPU pool."""
        sealed = await asyncio.gather(
            *(cpu(seal_chunk, self.sealer, cid, data, level, work=len(data)) for cid, data in fresh)
        )
        return list(sealed)  # type: ignore[arg-type]

    def place(self, sealed: list[SealedChunk]) -> list[NewChunk]:
        """Give records their places at the end of the pack (they must be written next, in
        this order)."""
        return [NewChunk(s.chunk_id, self.pack.add(s)) for s in sealed]

    async def append(self, sealed: list[SealedChunk]) -> list[NewChunk]:
        return (await self.append_groups([sealed]))[0]

    async def append_groups(self, groups: list[list[SealedChunk]]) -> list[list[NewChunk]]:
        """Append the records of several requests with one write; their locations, per request."""
        await self.flush()
        await self.writer.write_all([s.record for group in groups for s in group])
        return [self.place(group) for group in groups]

    async def write_behind(
        self, sealed: list[SealedChunk], gate: asyncio.Semaphore | None = None
    ) -> list[NewChunk]:
        """Place ``sealed`` and start writing it once the previous write is done (and, with
        ``gate``, once one of its places is free: it bounds the records waiting for the disk
        across uploads); returns without waiting for this write. A failed write surfaces at
        the next write, ``flush`` or ``close``."""
        await self.flush()
        placed = self.place(sealed)
        if gate is not None:
            await gate.acquire()
        self._writing = asyncio.ensure_future(self._write([s.record for s in sealed], gate))
        return placed

    async def _write(self, records: list[bytes | bytearray], gate: asyncio.Semaphore | None) -> None:
        try:
            await self.writer.write_all(records)
        finally:
            if gate is not None:
                gate.release()

    async def flush(self) -> None:
        """Wait for the write in flight (shielded: a cancelled caller never leaves a write
        running into a file that ``abort`` closes; ``abort`` waits for it instead)."""
        if self._writing is not None:
            await asyncio.shield(self._writing)
            self._writing = None

    @property
    def size(self) -> int:
        return self.pack.size

    async def close(self) -> PackRecord:
        """Write the trailer and publish the pack durably. If that fails (or is cancelled),
        the pack is aborted: nothing of it is left for the caller to discard."""
        try:
            await self.flush()
            trailer = self.pack.trailer()
            await self.writer.write(trailer)
            await self.writer.commit()
        except BaseException:
            await self.abort()
            raise
        return PackRecord(self.pack.pack_id, self.wrapped, self.pack.size + len(trailer))

    async def abort(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            await asyncio.gather(writing, return_exceptions=True)
        await self.writer.abort()


class SmallObjectPacker:
    """Group-commits the chunks of small objects from concurrent requests into shared packs.

    A group stays open for ``window`` seconds (a couple of milliseconds: less than the fsync it
    saves) so that requests arriving together share it even when the event loop is busy.
    A shared pack is never deleted by one request's failure (others may reference it); records
    nobody commits are reclaimed by garbage collection like any unreferenced chunk.
    """

    def __init__(
        self,
        backend: BlobBackend,
        kek: KEKProvider,
        cpu: CpuRunner,
        level: int,
        window: float = 0.002,
        groups: int = 8,  # measured: 1 -> 0.087, 3 -> 0.120, 8 -> 0.141 of the no-op rate (4 KiB, c=32)
    ) -> None:
        self._backend = backend
        self._kek = kek
        self._cpu = cpu
        self._level = level
        self._window = window  # how long a group stays open for more requests
        self._pending: list[tuple[Fresh, asyncio.Future[tuple[list[NewChunk], PackRecord]]]] = []
        self._flusher: asyncio.Future[None] | None = None
        # Groups written at once: while one pack's fsync is in flight the next group fills
        # and starts, instead of every request waiting for the previous group's fsync.
        self._slots = asyncio.Semaphore(max(1, groups))

    async def store(self, fresh: Fresh) -> tuple[list[NewChunk], PackRecord]:
        """Store ``fresh`` durably in a shared pack; returns its locations and the pack."""
        fut: asyncio.Future[tuple[list[NewChunk], PackRecord]] = asyncio.get_running_loop().create_future()
        self._pending.append((fresh, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return await fut

    async def _flush(self) -> None:
        await asyncio.sleep(self._window)  # let concurrent small PUTs join this group
        async with self._slots:  # requests arriving while we wait for a slot join too
            group, self._pending = self._pending, []
            self._flusher = None  # the next arrival starts the next group
            if group:
                await self._write(group)

    async def _write(
        self, group: list[tuple[Fresh, asyncio.Future[tuple[list[NewChunk], PackRecord]]]]
    ) -> None:
        pack: OpenPack | None = None
        try:
            pack = await OpenPack.create(self._backend, self._kek)
            sealed = await asyncio.gather(*(pack.seal(self._cpu, fresh, self._level) for fresh, _ in group))
            placed = await pack.append_groups(sealed)  # one writev hop for the whole group
            record = await pack.close()
        except BaseException as exc:
            if pack is not None:
                await pack.abort()
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), chunks in zip(group, placed, strict=True):
            if not fut.done():
                fut.set_result((chunks, record))
