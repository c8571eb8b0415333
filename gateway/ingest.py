"""The upload pipeline: stream -> batches -> FastCDC -> keyed chunk ids -> dedup lookup ->
zstd + AES-GCM sealing -> packs in the blob backend.

Stages overlap: while one batch is cut, hashed, sealed and written, the next is read from the
network, and the batch's digests (MD5, checksums, SHA-256) are updated in the CPU pool while
the same batch is cut. Memory is bounded per upload, whatever the object size:

* each batch is one buffer of ``ingest_batch`` bytes, allocated once (never grown): the
  chunker's carry from the previous batch (the bytes after its last final boundary), then
  fresh bytes copied once from the network pieces (or, for a large raw body, read into it
  from the socket by a thread: :mod:`gateway.socket_recv`). The chunker cuts it in place:
  apart from the carry, no byte is copied again before it is sealed;
* an upload reads ahead by one batch only while it holds one of the ``ingest_slots`` (batches
  cut, sealed and written at once across all uploads). An upload waiting for a slot holds
  one batch, and the network stalls it (TCP backpressure) instead of filling memory;
* a batch buffer is dropped as soon as its chunks are sealed (its carry was copied into
  the next batch), so an upload holds one to two batches plus the records being written.

Writes run behind the pipeline: a batch's records are written to the open pack while the
next batch is cut and sealed (one write in flight per upload, and at most ``ingest_slots``
across uploads), and a full pack is fsynced and published in the background while the upload
goes on into a new pack. Every pack is durable before :meth:`Ingestor.ingest` returns.

Nothing is indexed here: the caller commits the returned :class:`StagedData` with the object
version in one metadata transaction, or calls :meth:`Ingestor.discard` so no pack of a failed
upload stays behind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from chunker import ChunkerParams, StreamChunker
from crypto import KEKProvider
from dedup import chunk_id
from dedup.manifest import Manifest
from gateway.backends.base import BlobBackend
from gateway.buffers import byte_view
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


class ReadableBody(Protocol):
    """A body that fills the caller's buffers itself (:class:`gateway.socket_recv.ThreadedBodyReader`)."""

    async def readinto(self, view: memoryview, /) -> int: ...


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


Buffer = bytes | bytearray | memoryview
_EMPTY = memoryview(b"")
# The first batch of a body grows in steps, so a small or medium body never pays for (or
# zero-fills) a whole batch buffer: its first pieces are gathered by reference up to
# FIRST_GATHER bytes, then copied into a buffer of FIRST_BUFFER, then into a full batch.
FIRST_GATHER = 256 * 1024
FIRST_BUFFER = 1024 * 1024


class _BodyReader:
    """Reads a body into batches: each one buffer, allocated once at its final size.

    A batch is the carry handed in (the bytes the chunker has not cut yet, from the previous
    batch) followed by fresh bytes, copied straight from the network pieces (a piece that
    does not fit is split across two batches, by views), or read into it by a
    :class:`ReadableBody`. Only the last batch is shorter than ``size``; :attr:`done` is set
    once the body has ended.
    """

    def __init__(self, source: AsyncIterator[Buffer] | ReadableBody, size: int) -> None:
        self._source: AsyncIterator[Buffer] | None = None
        self._readinto: Callable[[memoryview], Awaitable[int]] | None = None
        if isinstance(source, AsyncIterator):
            self._source = source
        else:
            self._readinto = source.readinto
        self._size = max(1, size)
        self._pending: collections.deque[memoryview] = collections.deque()
        self.done = False

    async def _piece(self) -> memoryview | None:
        if self._pending:
            return self._pending.popleft()
        while not self.done and self._source is not None:
            piece = await anext(self._source, None)
            if piece is None:
                self.done = True
            elif len(piece):
                return byte_view(piece)
        return None

    async def first(self) -> Buffer | None:
        """The first batch (None for an empty body). Shorter than ``size`` only if it is the
        whole body; a small body is joined into an exactly sized ``bytearray``."""
        if self._readinto is not None:  # (a large body: see gateway/socket_recv.py)
            batch, _ = await self.fill(_EMPTY)
            return batch if len(batch) else None
        pieces: list[memoryview] = []
        total = 0
        while total < min(self._size, FIRST_GATHER):
            piece = await self._piece()
            if piece is None:
                return bytearray().join(pieces) if pieces else None
            pieces.append(piece)
            total += len(piece)
        self._pending.extendleft(reversed(pieces))
        del pieces
        batch, _ = await self.fill(_EMPTY, min(self._size, FIRST_BUFFER))
        if not self.done and len(batch) < self._size:  # a larger body? grow to a full batch
            piece = await self._piece()
            if piece is not None:
                self._pending.appendleft(piece)
                batch, _ = await self.fill(byte_view(batch))
        return batch

    async def fill(self, carry: memoryview, size: int | None = None) -> tuple[Buffer, int]:
        """The next batch: ``carry``, then fresh bytes up to ``size`` (default: the batch
        size) in all, or at least half as many fresh bytes after a long carry. Returns it and
        where its fresh bytes start."""
        size = size or self._size
        start = len(carry)
        cap = max(size, start + max(1, size // 2))
        buf = bytearray(cap)  # zero-filled: never memory another request left behind
        buf[:start] = carry
        del carry  # the previous batch is now held only by the chunks cut from it
        pos = start
        while pos < cap and self._readinto is not None:
            n = await self._readinto(memoryview(buf)[pos:cap])
            if not n:
                self.done = True
                return memoryview(buf)[:pos], start
            pos += n
        while pos < cap:
            piece = await self._piece()
            if piece is None:
                return memoryview(buf)[:pos], start
            n = len(piece)
            if n > cap - pos:
                self._pending.appendleft(piece[cap - pos :])
                piece, n = piece[: cap - pos], cap - pos
            buf[pos : pos + n] = piece
            pos += n
        return buf, start


Cut = tuple[list[memoryview], list[bytes]]  # chunks and their ids


def _cut(chunker: StreamChunker, key: bytes, batch: Buffer) -> Cut:
    """The final chunks of a batch (cut in place) and their ids: one pool task."""
    chunks = chunker.feed(batch, owned=True)
    return chunks, _ids(key, chunks)


def _cut_last(chunker: StreamChunker, key: bytes, batch: Buffer | None) -> Cut:
    """Every chunk left (the last batch, then the rest of the stream) and their ids."""
    chunks = chunker.feed(batch, owned=True) if batch is not None else []
    chunks += chunker.finish()
    return chunks, _ids(key, chunks)


@dataclass
class _Session:
    """State of one upload: its open pack, what it wrote, and its manifest so far."""

    ingestor: Ingestor
    dedup_key: bytes
    ids: list[bytes] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    seen: set[bytes] = field(default_factory=set)
    packs: list[PackRecord] = field(default_factory=list)
    closing: list[asyncio.Future[PackRecord]] = field(default_factory=list)
    chunks: list[NewChunk] = field(default_factory=list)
    blob_names: list[str] = field(default_factory=list)
    open: OpenPack | None = None
    dedup_bytes: int = 0

    async def add(self, data: list[memoryview], ids: list[bytes], final: bool = False) -> None:
        """Index-check, seal and store ``data`` (chunk ``ids``); ``final`` marks the upload's
        last chunks."""
        if not data:
            return
        ing = self.ingestor
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
        if final and small and self.open is None and not self.packs and not self.closing:
            chunks, record = await ing.small.store(fresh)
            self.chunks.extend(chunks)
            self.packs.append(record)
            return
        current = self.open or await self._open_pack()
        sealed = await current.seal(ing.cpu, fresh, ing.config.zstd_level)
        self.chunks.extend(await current.write_behind(sealed, ing.write_gate))
        if current.size >= ing.config.pack_target:
            self._close_behind()

    async def _open_pack(self) -> OpenPack:
        self.open = await OpenPack.create(self.ingestor.backend, self.ingestor.kek)
        return self.open

    def _close_behind(self) -> None:
        """Start closing the open pack (trailer, fsync, publish); the upload goes on."""
        current, self.open = self.open, None
        if current is not None:
            self.closing.append(asyncio.ensure_future(self._close(current)))

    async def _close(self, pack: OpenPack) -> PackRecord:
        record = await pack.close()  # a failed close aborts the pack itself
        self.blob_names.append(pack.name)  # published: abort() deletes it from here on
        return record

    async def finish(self) -> None:
        """Close the open pack and wait until every pack of the upload is durable."""
        self._close_behind()
        # Shielded: if the upload is cancelled here, abort() waits for the closes instead.
        self.packs.extend(await asyncio.gather(*map(asyncio.shield, self.closing)))
        self.closing = []

    async def abort(self) -> None:
        current, self.open = self.open, None
        if current is not None:
            await current.abort()
        closing, self.closing = self.closing, []
        await asyncio.gather(*closing, return_exceptions=True)  # never delete under a running close
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
        # memory of many concurrent uploads. An upload holds one batch while it waits for a
        # slot, and reads one more ahead while it holds one.
        self._slots = asyncio.Semaphore(max(1, config.ingest_slots))
        # Batches of records written behind their uploads at once (one per upload at most):
        # bounds what waits for a slow disk when many uploads run.
        self.write_gate = asyncio.Semaphore(max(1, config.ingest_slots))
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
        source: AsyncIterator[bytes | memoryview] | ReadableBody,
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
        reader = _BodyReader(source, self.config.ingest_batch)
        first = await reader.first()  # nothing is stored yet: a failure here needs no cleanup
        # A batch shorter than ingest_batch is the whole body.
        inline_max = min(self.config.inline_max, self.config.ingest_batch - 1) if inline else 0
        if first is not None and 0 < len(first) <= inline_max:
            return await self._ingest_inline(first, dedup_key, digests, max_size, verify)
        session = _Session(self, dedup_key)
        chunker = StreamChunker(self.params)
        batch, start, first = first, 0, None
        hashing: asyncio.Future[None] | None = None
        prefetch: asyncio.Future[tuple[Buffer, int]] | None = None
        size = 0
        try:
            while batch is not None:
                fresh = len(batch) - start
                size += fresh
                if size > max_size:
                    raise S3Error("EntityTooLarge", MaxSizeAllowed=str(max_size))
                if hashing is not None:
                    await hashing
                    hashing = None
                if fresh < INLINE_MAX:
                    update_digests(digests, memoryview(batch)[start:])
                else:  # no reference to the batch stays here: the task's is dropped when it ends
                    hashing = asyncio.ensure_future(
                        self.cpu(update_digests, digests, memoryview(batch)[start:], work=fresh)
                    )
                if reader.done:  # the last batch: cut and stored once the digests are verified
                    break
                async with self._slots:
                    chunks, ids = await self.cpu(_cut, chunker, dedup_key, batch, work=len(batch))
                    # Read the next batch (starting with the carry) while these chunks are stored.
                    prefetch = asyncio.ensure_future(reader.fill(chunker.take_carry()))
                    batch = None
                    await session.add(chunks, ids)
                    del chunks
                batch, start = await prefetch
                prefetch = None
            if hashing is not None:
                await hashing
                hashing = None
            if verify is not None:
                verify()
            async with self._slots:
                work = chunker.buffered + (len(batch) if batch is not None else 0)
                chunks, ids = await self.cpu(_cut_last, chunker, dedup_key, batch, work=work)
                batch = None
                await session.add(chunks, ids, final=True)
                del chunks
            await session.finish()
        except BaseException:
            for task in (prefetch, hashing):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
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
        body: Buffer,
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
