"""The download pipeline: manifest range -> chunk locations -> pack record reads ->
AES-GCM open + zstd decompress in the CPU pool -> ordered stream of plaintext slices.

Adjacent records of one pack are fetched with one ranged read (a "run", at most
``run_bytes``; a memory map where the backend offers ``map_range``, so local packs are
decrypted straight from the page cache), and a bounded number of runs (``read_ahead``) is
fetched and decoded ahead of the consumer, so the network, the backend and the CPU overlap
while memory stays bounded: each GET always has its next run on the way, and the runs it
decodes beyond that share one process-wide budget of plaintext bytes (``ahead_budget``), so
many concurrent GETs read ahead less instead of holding ``read_ahead`` runs each.

Unwrapped pack DEKs (and inline DEKs, see :mod:`gateway.inline`) are kept in a small
in-process LRU (never in a shared cache), and concurrent requests for the same DEK share one
unwrap. A tiny object's manifest holds its sealed data itself: it is opened without any
lookup or read.

Decoded chunks are kept in a byte-bounded :class:`~gateway.chunkcache.ChunkCache`, and
concurrent requests for one chunk share one fetch and decode (single flight): zstd chunks
always, raw chunks only on backends without memory maps (a local pack's raw chunks are
served from the page cache and decrypted into recycled buffers, which is cheaper than
keeping a copy). A request whose chunk another request was decoding waits for it; if that
request fails or is cancelled, the waiter fetches the chunk itself.

A consumer that writes runs from threads (the GET body sender, :mod:`gateway.socket_send`)
can ask for *deferred* runs: a run whose records are all decrypted into recycled buffers (a
local pack's raw chunks, none cached) is then yielded as a :class:`~gateway.buffers.Deferred`
that the sender's thread opens just before it writes it, instead of a CPU-pool thread
opening it first and handing it back through the event loop. That saves two thread hand-offs
per run: 6% less server CPU per MB and 5% more MB/s on 64 MiB GETs (bench/README.md, run L).
A deferred run carries one opener per record, so the sender writes each record right after
decrypting it, while its plaintext is still in the CPU's cache, and the socket is fed after
the first record instead of after the whole run (~5% more MB/s, bench/README.md, run O).
The first run is never deferred: a caller that reads it before committing to a response
(GET, before its status line) still sees a corrupt or missing record as an error, not as a
cut connection.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import Executor

from crypto import KEKProvider, Sealer, WrappedKey
from dedup import ChunkLocation, open_record
from dedup.manifest import Manifest
from dedup.pack import FLAG_ZSTD, CorruptPackError
from gateway.backends.base import BlobBackend, pack_blob_name
from gateway.buffers import BufferRecycler, Deferred
from gateway.chunkcache import ChunkCache
from gateway.meta.store import MetadataStore

LOOKUP_WINDOW = 256
INLINE_OPEN = 64 * 1024  # runs smaller than this are opened on the event loop

Plains = list[bytes | memoryview]
Opener = Callable[[], object]  # decrypts a deferred record into the buffer its plain views
Openers = list[Opener | None]  # one per plain of a run (None: opened already)


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
        run_bytes: int = 8 * 1024 * 1024,
        chunk_cache: int = 0,
        ahead_budget: int = 64 * 1024 * 1024,
    ) -> None:
        self.backend = backend
        self.meta = meta
        self.kek = kek
        self.pool = pool
        self.read_ahead = max(1, read_ahead)
        self.run_bytes = run_bytes
        self.ahead_budget = ahead_budget
        self.ahead_bytes = 0  # plaintext of the runs all GETs are decoding beyond their next one
        self._sealers: collections.OrderedDict[str | WrappedKey, asyncio.Future[Sealer]]
        self._sealers = collections.OrderedDict()
        self._sealer_cache = sealer_cache
        self._read: Callable[[str, int, int], Awaitable[bytes | memoryview]]
        self._read = getattr(backend, "map_range", backend.read_range)
        self._buffers = BufferRecycler()
        self.cache = ChunkCache(chunk_cache)
        self._cache_raw = not hasattr(backend, "map_range")  # remote reads: keep raw chunks too
        self._inflight: dict[bytes, asyncio.Future[bytes]] = {}  # cacheable chunks being decoded

    async def _sealer(self, pack_id: str) -> Sealer:
        return await self._cached_sealer(pack_id, lambda: self._load_sealer(pack_id))

    async def _cached_sealer(
        self, key: str | WrappedKey, load: Callable[[], Coroutine[object, object, Sealer]]
    ) -> Sealer:
        """The sealer of a pack (by id) or of an inline DEK (by its wrapped form), unwrapped
        once and shared by concurrent requests."""
        fut = self._sealers.get(key)
        if fut is None:
            fut = asyncio.ensure_future(load())
            self._sealers[key] = fut
            while len(self._sealers) > self._sealer_cache:
                self._sealers.popitem(last=False)
        else:
            self._sealers.move_to_end(key)
        try:
            return await asyncio.shield(fut)
        except BaseException:
            if self._sealers.get(key) is fut and fut.done():
                del self._sealers[key]
            raise

    async def _load_sealer(self, pack_id: str) -> Sealer:
        record = await self.meta.get_pack(pack_id)
        if record is None:
            raise DataLossError(f"pack {pack_id} is not in the metadata store")
        return Sealer(await self.kek.unwrap(record.wrapped_dek))

    async def _unwrap(self, wrapped: WrappedKey) -> Sealer:
        return Sealer(await self.kek.unwrap(wrapped))

    async def open_inline(self, manifest: Manifest) -> bytes | memoryview:
        """The plaintext of an inline manifest (opened on the event loop: a few KiB)."""
        inline = manifest.inline
        assert inline is not None
        sealer = await self._cached_sealer(inline.wrapped_dek, lambda: self._unwrap(inline.wrapped_dek))
        return open_record(sealer, inline.record, manifest.chunk_ids[0])

    def release_buffers(self) -> None:
        """Drop the decrypted-chunk buffers kept for reuse (up to 64 MiB): for an idle process
        about to give its free memory back (:func:`gateway.memory.trim_when_idle`)."""
        self._buffers.clear()

    def _cacheable(self, loc: ChunkLocation) -> bool:
        return self.cache.capacity > 0 and (self._cache_raw or bool(loc.flags & FLAG_ZSTD))

    async def _run(
        self, ids: list[bytes], locs: list[ChunkLocation], defer: bool = False
    ) -> tuple[Plains, Openers | None]:
        """The plaintexts of one run of adjacent records: cached chunks from the cache,
        chunks another request is decoding from that request, and the rest fetched with one
        ranged read per stretch of adjacent records, then opened. With ``defer``, stretches
        that can be opened later are not opened yet: the openers returned (one per plain,
        None for those open already) do that."""
        plains: list[bytes | memoryview | None] = [None] * len(ids)
        openers: Openers = [None] * len(ids)
        owned: dict[int, asyncio.Future[bytes]] = {}
        joined: dict[int, asyncio.Future[bytes]] = {}
        fetch: list[int] = []
        stats = self.cache.stats
        for i, (cid, loc) in enumerate(zip(ids, locs, strict=True)):
            if not self._cacheable(loc):
                fetch.append(i)
            elif (hit := self.cache.get(cid)) is not None:
                plains[i] = hit
                stats.hits += 1
            elif (flight := self._inflight.get(cid)) is not None:
                joined[i] = flight
                stats.shared += 1
            else:
                owned[i] = self._inflight[cid] = asyncio.get_running_loop().create_future()
                fetch.append(i)
                stats.misses += 1
        try:
            for lo, hi in _stretches(fetch):
                plains[lo:hi], stretch = await self._fetch(ids[lo:hi], locs[lo:hi], defer)
                if stretch is not None:
                    openers[lo:hi] = stretch
                for i in range(lo, hi):
                    if i in owned:
                        opened = plains[i]  # cacheable chunks are opened into new bytes
                        assert opened is not None
                        plain = opened if isinstance(opened, bytes) else bytes(opened)
                        plains[i] = plain
                        self.cache.put(ids[i], plain)
                        owned[i].set_result(plain)
        finally:
            for i, flight in owned.items():
                if self._inflight.get(ids[i]) is flight:
                    del self._inflight[ids[i]]
                flight.cancel()  # unless answered: its waiters then fetch the chunk themselves
        for i, flight in joined.items():
            try:
                plains[i] = await asyncio.shield(flight)
            except asyncio.CancelledError:
                if not flight.cancelled():
                    raise  # this request was cancelled, not the one it waited for
                plains[i] = (await self._fetch(ids[i : i + 1], locs[i : i + 1]))[0][0]
        done = [p for p in plains if p is not None]
        assert len(done) == len(plains)
        return done, openers if any(openers) else None

    async def _fetch(
        self, ids: list[bytes], locs: list[ChunkLocation], defer: bool = False
    ) -> tuple[Plains, Openers | None]:
        """Fetch adjacent records of one pack with one ranged read, then open them all
        (uncompressed ones that are not cached into recycled buffers). With ``defer``, a
        stretch whose every record goes into a recycled buffer is returned unopened: its
        plains are those buffers, and the openers returned (one per record) decrypt into
        them."""
        first, last = locs[0], locs[-1]
        sealer, blob = await asyncio.gather(
            self._sealer(first.pack_id),
            self._read(pack_blob_name(first.pack_id), first.offset, last.offset + last.length - first.offset),
        )
        records = _records(memoryview(blob), first.offset, locs)
        if len(blob) < INLINE_OPEN:  # a small record: opening it costs less than a thread hop
            return _open_run(sealer, records, ids, [None] * len(locs)), None
        outs = [
            None if loc.flags & FLAG_ZSTD or self._cacheable(loc) else self._buffers.take(loc.plain_len)
            for loc in locs
        ]
        if defer and all(out is not None for out in outs):
            buffers = [out for out in outs if out is not None]
            return buffers, [  # one opener per record: a sender writes each as it is opened
                functools.partial(_open_into, sealer, record, cid, out)
                for record, cid, out in zip(records, ids, buffers, strict=True)
            ]
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, _open_run, sealer, records, ids, outs
        ), None

    async def _locations(self, ids: tuple[bytes, ...]) -> dict[bytes, ChunkLocation]:
        unique = list(dict.fromkeys(ids))
        found = await self.meta.lookup_chunks(unique)
        missing = [c.hex() for c in unique if c not in found]
        if missing:
            raise DataLossError(f"chunks missing from the index: {', '.join(missing[:4])}")
        return found

    async def _runs(
        self, manifest: Manifest, first: int, last: int
    ) -> AsyncIterator[tuple[list[bytes], list[ChunkLocation]]]:
        """Chunk indexes [first, last) grouped into runs of adjacent records in one pack."""
        ids: list[bytes] = []
        run: list[ChunkLocation] = []
        size = 0
        for start in range(first, last, LOOKUP_WINDOW):
            window = manifest.chunk_ids[start : min(start + LOOKUP_WINDOW, last)]
            locs = await self._locations(window)
            for cid in window:
                loc = locs[cid]
                if run and (
                    loc.pack_id != run[-1].pack_id
                    or loc.offset != run[-1].offset + run[-1].length
                    or size + loc.length > self.run_bytes
                ):
                    yield ids, run
                    ids, run, size = [], [], 0
                ids.append(cid)
                run.append(loc)
                size += loc.length
        if run:
            yield ids, run

    async def stream(self, manifest: Manifest, start: int, end: int) -> AsyncIterator[memoryview]:
        """Yield the object's bytes [start, end) in order."""
        async for pieces in self.stream_runs(manifest, start, end):
            assert isinstance(pieces, list)  # never deferred unless asked
            for piece in pieces:
                yield piece

    async def stream_runs(
        self, manifest: Manifest, start: int, end: int, defer: bool = False
    ) -> AsyncGenerator[list[memoryview] | Deferred, None]:
        """Yield the object's bytes [start, end) in order, one list of pieces per pack run
        (so a consumer can hand a whole run to one ``writev``). The pieces' buffers may be
        reused once the consumer asks for the next list and drops its views.

        With ``defer``, a run after the first may come as a :class:`Deferred` instead: the
        consumer opens it (off the event loop) before it asks for the next run, which
        discards it. A consumer that stops early should ``aclose()`` the generator: its
        read-ahead holds budget and, for deferred runs, memory maps of packs until then."""
        if start >= end:
            return
        if manifest.inline is not None:
            yield [memoryview(await self.open_inline(manifest))[start:end]]
            return
        first, last, offset = manifest.span(start, end)
        # each with the read-ahead budget it holds (0 for the run the consumer needs next)
        pending: collections.deque[tuple[asyncio.Future[tuple[Plains, Openers | None]], int]]
        pending = collections.deque()
        scheduled = False
        deferred: Deferred | None = None  # the deferred run the consumer holds
        runs = self._runs(manifest, first, last)
        upcoming: tuple[list[bytes], list[ChunkLocation]] | None = None
        index = first
        try:
            while True:
                while len(pending) < self.read_ahead:
                    if upcoming is None and (upcoming := await anext(runs, None)) is None:
                        break
                    ids, locs = upcoming
                    cost = sum(loc.plain_len for loc in locs) if pending else 0
                    if cost and self.ahead_bytes + cost > self.ahead_budget:
                        break  # the budget is spent: start this run once the next one is taken
                    self.ahead_bytes += cost
                    later = defer and scheduled  # the first run is opened before it is yielded
                    pending.append((asyncio.ensure_future(self._run(ids, locs, later)), cost))
                    scheduled = True
                    upcoming = None
                if not pending:
                    return
                fut, cost = pending.popleft()
                self.ahead_bytes -= cost
                plains, openers = await fut
                pieces = []
                for plain in plains:
                    length = manifest.lengths[index]
                    lo = max(start - offset, 0)
                    hi = min(end - offset, length)
                    pieces.append(memoryview(plain)[lo:hi])
                    offset += length
                    index += 1
                if openers is None:
                    yield pieces
                else:
                    deferred = Deferred(pieces, openers)
                    yield deferred
                    deferred.discard()
                    deferred = None
                del pieces, openers
                self._buffers.give_back(plains)  # reused once the transport is done with them
                del plains
        finally:
            if deferred is not None:  # released now, not when the consumer's frames are
                deferred.discard()
            for fut, cost in pending:
                self.ahead_bytes -= cost
                fut.cancel()
            if pending:
                await asyncio.gather(*(fut for fut, _ in pending), return_exceptions=True)
            await runs.aclose()


def _records(blob: memoryview, base: int, locs: list[ChunkLocation]) -> list[memoryview]:
    """The bytes of each record in ``blob``, a read of their pack from offset ``base``."""
    return [blob[loc.offset - base : loc.offset - base + loc.length] for loc in locs]


def _open_run(
    sealer: Sealer, records: list[memoryview], ids: list[bytes], outs: list[memoryview | None]
) -> list[bytes | memoryview]:
    return [
        open_record(sealer, record, cid, out) for record, cid, out in zip(records, ids, outs, strict=True)
    ]


def _open_into(sealer: Sealer, record: memoryview, chunk_id: bytes, out: memoryview) -> None:
    """Open a deferred record into ``out``, whose view was handed out already: a record that
    does not decrypt into its buffer (its header disagrees with the index) fails, so no
    buffer is ever sent with what it held before."""
    if open_record(sealer, record, chunk_id, out) is not out:
        raise CorruptPackError("a record's header does not match its index entry (flags or length)")


def _stretches(indexes: list[int]) -> list[tuple[int, int]]:
    """``[lo, hi)`` bounds of the maximal stretches of consecutive numbers in ``indexes``
    (ascending): the records of a run that are fetched together."""
    out: list[tuple[int, int]] = []
    for i in indexes:
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out
