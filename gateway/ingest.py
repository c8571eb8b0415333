"""The upload pipeline: stream -> batches -> FastCDC -> keyed chunk ids -> dedup lookup ->
zstd + AES-GCM sealing -> packs in the blob backend.

Stages overlap: a reader task pulls the request body into batches (bounded queue), the
batch's digests (MD5, checksums, SHA-256) are updated in the CPU pool while the same batch is
cut, hashed and sealed, and sealed records are appended to the open pack. Memory is bounded
by a few batches, whatever the object size. Nothing is indexed here: the caller commits the
returned :class:`StagedData` with the object version in one metadata transaction, or calls
:meth:`Ingestor.discard` so no pack of a failed upload stays behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, TypeVar

from chunker import ChunkerParams, StreamChunker
from crypto import KEKProvider
from dedup import chunk_id
from dedup.manifest import Manifest
from gateway.backends.base import BlobBackend
from gateway.config import StorageConfig
from gateway.inline import InlineKeys
from gateway.meta.models import NewChunk, PackRecord, StagedData
from gateway.meta.store import MetadataStore
from gateway.packs import Fresh, OpenPack, SmallObjectPacker
from gateway.s3.errors import S3Error

T = TypeVar("T")
INLINE_MAX = 64 * 1024  # CPU stages on less data than this run on the event loop


class Digest(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


@dataclass
class IngestResult:
    manifest: Manifest
    size: int
    staged: StagedData
    blob_names: list[str]
    dedup_bytes: int  # plain bytes that were already stored (not written again)


def update_digests(digests: Sequence[Digest], data: bytes | bytearray | memoryview) -> None:
    """Feed ``data`` to every digest, in order (one memoryview, no copies)."""
    view = memoryview(data)
    for d in digests:
        d.update(view)


def _ids(key: bytes, chunks: list[memoryview]) -> list[bytes]:
    return [chunk_id(key, c) for c in chunks]


async def _batches(source: AsyncIterator[bytes | memoryview], size: int) -> AsyncIterator[bytearray]:
    """Regroup arbitrary network pieces into batches of at least ``size`` bytes."""
    buf = bytearray()
    async for piece in source:
        buf += piece
        if len(buf) >= size:
            yield buf
            buf = bytearray()
    if buf:
        yield buf


@dataclass
class _Session:
    """State of one upload: its open pack, what it wrote, and its manifest so far."""

    ingestor: Ingestor
    dedup_key: bytes
    ids: list[bytes] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    seen: set[bytes] = field(default_factory=set)
    packs: list[PackRecord] = field(default_factory=list)
    chunks: list[NewChunk] = field(default_factory=list)
    blob_names: list[str] = field(default_factory=list)
    open: OpenPack | None = None
    dedup_bytes: int = 0

    async def add(self, data: list[memoryview], final: bool = False) -> None:
        """Index-check, seal and store ``data``; ``final`` marks the upload's last chunks."""
        if not data:
            return
        ing = self.ingestor
        ids = await ing.cpu(_ids, self.dedup_key, data, work=sum(len(c) for c in data))
        self.ids.extend(ids)
        self.lengths.extend(len(c) for c in data)
        candidates = list({i for i in ids if i not in self.seen})
        # Chunks gc condemned count as misses (stored again); the commit revives any reused
        # chunk gc condemns meanwhile, or fails if gc swept it (MetadataStore.put_object).
        known = await ing.meta.lookup_chunks(candidates, live_only=True) if candidates else {}
        fresh: Fresh = []
        for cid, chunk in zip(ids, data, strict=True):
            if cid in self.seen or cid in known:
                self.dedup_bytes += len(chunk)
                continue
            self.seen.add(cid)
            fresh.append((cid, chunk))
        if not fresh:
            return
        small = sum(len(c) for _, c in fresh) <= ing.config.small_object_max
        if final and small and self.open is None and not self.packs:
            chunks, record = await ing.small.store(fresh)
            self.chunks.extend(chunks)
            self.packs.append(record)
            return
        current = self.open or await self._open_pack()
        self.chunks.extend(await current.append(await current.seal(ing.cpu, fresh, ing.config.zstd_level)))
        if current.size >= ing.config.pack_target:
            await self.close_pack()

    async def _open_pack(self) -> OpenPack:
        self.open = await OpenPack.create(self.ingestor.backend, self.ingestor.kek)
        return self.open

    async def close_pack(self) -> None:
        current, self.open = self.open, None
        if current is not None:
            self.packs.append(await current.close())
            self.blob_names.append(current.name)

    async def abort(self) -> None:
        current, self.open = self.open, None
        if current is not None:
            await current.abort()
        for name in self.blob_names:
            await self.ingestor.backend.delete(name)


class Ingestor:
    """Turns a byte stream into durable, unindexed packs plus a manifest."""

    def __init__(
        self,
        backend: BlobBackend,
        meta: MetadataStore,
        kek: KEKProvider,
        pool: Executor,
        config: StorageConfig,
        on_ingest: Callable[[int, int], None] | None = None,
    ) -> None:
        """``on_ingest(size, reused)`` is told of every completed ingest: its payload bytes,
        and how many of them were in chunks already stored (dedup savings)."""
        self.backend = backend
        self.meta = meta
        self.kek = kek
        self.pool = pool
        self.config = config
        self.on_ingest = on_ingest
        self.params = ChunkerParams(config.chunk_min, config.chunk_avg, config.chunk_max)
        # Batches being cut, sealed and written at once, across all uploads: bounds the
        # memory of many concurrent uploads (each also holds at most ~2 batches + a carry).
        self._slots = asyncio.Semaphore(max(1, config.ingest_slots))
        self.small = SmallObjectPacker(backend, kek, self.cpu, config.zstd_level)
        self.inline = InlineKeys(kek)

    async def cpu(self, fn: Callable[..., T], *args: object, work: int = INLINE_MAX) -> T:
        """Run a CPU stage in the pool, or inline when ``work`` (bytes) is too small to be
        worth a thread hop (the hop costs more than hashing or sealing a few KiB)."""
        if work < INLINE_MAX:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def ingest(
        self,
        source: AsyncIterator[bytes | memoryview],
        dedup_key: bytes,
        digests: Sequence[Digest] = (),
        max_size: int = 5 * 1024**3,
        verify: Callable[[], object] | None = None,
        inline: bool = False,
    ) -> IngestResult:
        """Store ``source``; digests see every byte in order. Raises and cleans up on failure.

        ``verify`` runs once every byte has been digested and before the last chunks are
        stored, so a body that fails its checksums leaves nothing behind, even in shared packs.
        With ``inline`` (whole objects, never multipart parts), a body of at most
        ``inline_max`` bytes is sealed into its manifest instead of a pack.
        """
        session = _Session(self, dedup_key)
        chunker = StreamChunker(self.params)
        batches = _batches(source, self.config.ingest_batch)
        first = await anext(batches, None)  # nothing is stored yet: a failure here needs no cleanup
        # A batch shorter than ingest_batch is the whole body.
        inline_max = min(self.config.inline_max, self.config.ingest_batch - 1) if inline else 0
        if first is not None and 0 < len(first) <= inline_max:
            return await self._ingest_inline(first, dedup_key, digests, max_size, verify)
        if first is None or len(first) < self.config.ingest_batch:
            # The whole body is in hand (a small object, the common case): no reader task.
            reader: asyncio.Future[None] | None = None
            queue: asyncio.Queue[bytearray | BaseException | None] = asyncio.Queue()
            for item in (first, None) if first is not None else (None,):
                queue.put_nowait(item)
        else:
            queue = asyncio.Queue(maxsize=1)
            queue.put_nowait(first)

            async def produce() -> None:
                try:
                    async for batch in batches:
                        await queue.put(batch)
                    await queue.put(None)
                except Exception as exc:  # handed to the consumer, which raises it
                    await queue.put(exc)

            reader = asyncio.ensure_future(produce())
        hashing: asyncio.Future[None] | None = None
        size = 0
        try:
            while (batch := await queue.get()) is not None:
                if isinstance(batch, BaseException):
                    raise batch
                size += len(batch)
                if size > max_size:
                    raise S3Error("EntityTooLarge", MaxSizeAllowed=str(max_size))
                if hashing is not None:
                    await hashing
                if len(batch) < INLINE_MAX:
                    update_digests(digests, batch)
                else:
                    hashing = asyncio.ensure_future(self.cpu(update_digests, digests, batch, work=len(batch)))
                async with self._slots:
                    await session.add(
                        await self.cpu(partial(chunker.feed, batch, owned=True), work=len(batch))
                    )
            if hashing is not None:
                await hashing
            if verify is not None:
                verify()
            async with self._slots:
                await session.add(await self.cpu(chunker.finish, work=chunker.buffered), final=True)
            await session.close_pack()
        except BaseException:
            if reader is not None:
                reader.cancel()
            if hashing is not None:
                with contextlib.suppress(BaseException):
                    await hashing
            if reader is not None:
                with contextlib.suppress(BaseException):
                    await reader
            await session.abort()
            raise
        if self.on_ingest is not None:
            self.on_ingest(size, session.dedup_bytes)
        return IngestResult(
            Manifest(tuple(session.ids), tuple(session.lengths)),
            size,
            StagedData(session.packs, session.chunks),
            session.blob_names,
            session.dedup_bytes,
        )

    async def _ingest_inline(
        self,
        body: bytearray,
        dedup_key: bytes,
        digests: Sequence[Digest],
        max_size: int,
        verify: Callable[[], object] | None,
    ) -> IngestResult:
        """A whole tiny body (``_batches`` yields a short batch only at the end of the stream)."""
        if len(body) > max_size:
            raise S3Error("EntityTooLarge", MaxSizeAllowed=str(max_size))
        update_digests(digests, body)
        if verify is not None:
            verify()
        manifest = await self.inline.seal(dedup_key, body, self.config.zstd_level)
        if self.on_ingest is not None:
            self.on_ingest(len(body), 0)
        return IngestResult(manifest, len(body), StagedData([], []), [], 0)

    async def discard(self, result: IngestResult) -> None:
        """Delete the packs of an ingest whose commit will not happen (unless the store may
        have indexed their chunks anyway: then gc reclaims them)."""
        if self.meta.index_survives_failed_commit:
            return
        for name in result.blob_names:
            await self.backend.delete(name)
