"""The upload pipeline (``gateway.ingest``) against the real embedded stores (SQLite metadata,
local blob directory, local keyring), with faults injected around the real blob backend.

* A multi-pack upload publishes every pack before ``Ingestor.ingest`` returns, reports exactly
  the packs it published, leaves no temp file, digests every byte, and reads back exactly.
* When an upload fails (a pack's publish, a write, a pack's open, verification, the size limit)
  or is cancelled, ``ingest`` returns only once nothing of it is running, and leaves nothing
  behind: no published pack, no temp file, no writer still open.
* ``_BodyReader`` cuts any sequence of network pieces into batches that reconstruct the body
  exactly, each of the documented size (a table of piece patterns, and a hypothesis property).
* The read path's runs (``ChunkReader.stream_runs``), including *deferred* runs: exact bytes
  for whole objects and ranges with the first run never deferred; a damaged record or one
  that does not fit its buffer fails the open; a deferred run is discarded once the
  consumer moves on or closes the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import random
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.ingest as ingest_module
from crypto import Sealer
from crypto.errors import IntegrityError
from crypto.kek import KEKProvider
from dedup import CorruptPackError, seal_chunk
from gateway.backends.base import BlobInfo, BlobWriter, pack_blob_name
from gateway.backends.factory import open_backend
from gateway.backends.local import LocalBlobBackend
from gateway.buffers import Deferred
from gateway.config import Config, StorageConfig
from gateway.ingest import Ingestor, IngestResult, _BodyReader
from gateway.meta.models import Bucket, ObjectVersion
from gateway.meta.store import MetadataStore
from gateway.readpath import ChunkReader, _open_into
from gateway.runtime import open_metadata
from gateway.s3.errors import S3Error

BUCKET = "bkt"
KEY = bytes(range(32))  # the tenant dedup key used by these tests
KiB = 1024
MiB = 1024 * KiB
TIMEOUT = 10.0  # seconds: a wait that takes longer than this is a hang, not slowness


def data(n: int, seed: int) -> bytes:
    """``n`` incompressible bytes, the same for the same seed."""
    return random.Random(seed).randbytes(n)


class InjectedError(OSError):
    """The failure a fault raises (an OSError, as a failing disk or network would)."""


# -- fault injection around the real backend -------------------------------------------------

# What a fault sees: the writer of the operation (None for "open"). It runs before the real
# operation; raising fails the operation without touching the real backend. Kinds: "open",
# "header" and "trailer" (a writer's first and second write()), "records" (write_all), "commit".
Fault = Callable[["FaultyWriter | None"], Awaitable[None]]


class FaultyWriter:
    """Delegates to a real writer; the backend's faults may fail or hold any operation."""

    def __init__(self, backend: FaultyBackend, inner: BlobWriter, name: str) -> None:
        self.backend = backend
        self.inner = inner
        self.name = name
        self.state = "open"  # -> "committed" or "aborted" once the real writer is closed
        self._writes = 0

    async def write(self, data: bytes | memoryview) -> None:
        self._writes += 1
        kind = "header" if self._writes == 1 else "trailer"  # OpenPack writes only these two
        await self.backend.op(kind, self, lambda: self.inner.write(data))

    async def write_all(self, pieces: Sequence[bytes | memoryview]) -> None:
        await self.backend.op("records", self, lambda: self.inner.write_all(pieces))

    async def commit(self) -> None:
        await self.backend.op("commit", self, self.inner.commit)
        self.state = "committed"

    async def abort(self) -> None:
        await self.inner.abort()
        if self.state == "open":
            self.state = "aborted"


class FaultyBackend:
    """A real :class:`LocalBlobBackend` whose operations can be failed, delayed or held.

    ``faults[(kind, n)]`` runs before the ``n``-th operation of ``kind`` (counted from 1 across
    all writers, in the order they start). Counts of started and finished operations, and of
    operations in flight, let a test wait for a point of the upload and check that nothing is
    still running when ``ingest`` has returned.
    """

    def __init__(self, inner: LocalBlobBackend) -> None:
        self.inner = inner
        self.faults: dict[tuple[str, int], Fault] = {}
        self.started: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()
        self.in_flight = 0
        self.writers: list[FaultyWriter] = []
        self._changed = asyncio.Event()

    async def op(self, kind: str, writer: FaultyWriter | None, call: Callable[[], Awaitable[None]]) -> None:
        self.started[kind] += 1
        fault = self.faults.get((kind, self.started[kind]))
        self.in_flight += 1
        self._changed.set()
        try:
            if fault is not None:
                await fault(writer)
            await call()
            self.finished[kind] += 1
        finally:
            self.in_flight -= 1
            self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Wait until ``predicate()`` holds (checked whenever an operation starts or ends)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    # -- BlobBackend ---------------------------------------------------------------------

    async def open_writer(self, name: str) -> FaultyWriter:
        opened: list[BlobWriter] = []

        async def open_() -> None:
            opened.append(await self.inner.open_writer(name))

        await self.op("open", None, open_)
        writer = FaultyWriter(self, opened[0], name)
        self.writers.append(writer)
        return writer

    async def read_range(self, name: str, offset: int, length: int) -> bytes:
        return await self.inner.read_range(name, offset, length)

    async def size(self, name: str) -> int:
        return await self.inner.size(name)

    async def delete(self, name: str) -> None:
        await self.inner.delete(name)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        async for name in self.inner.list(prefix):
            yield name

    async def list_info(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        async for info in self.inner.list_info(prefix):
            yield info

    async def close(self) -> None:
        await self.inner.close()


def fail() -> Fault:
    """Fail the operation before it reaches the real backend (for a commit: like
    ``S3BlobWriter.commit``, whose spool stays until the caller aborts the writer)."""

    async def fault(writer: FaultyWriter | None) -> None:
        raise InjectedError("injected failure")

    return fault


def fail_and_clean_up() -> Fault:
    """Fail a commit as ``ResilientWriter.commit`` does: it aborts its writer, then raises."""

    async def fault(writer: FaultyWriter | None) -> None:
        assert writer is not None
        await writer.abort()
        raise InjectedError("injected failure")

    return fault


def fail_once(backend: FaultyBackend, predicate: Callable[[], bool]) -> Fault:
    """Fail the operation once ``predicate`` holds (the upload has gone on meanwhile)."""

    async def fault(writer: FaultyWriter | None) -> None:
        await backend.until(predicate)
        raise InjectedError("injected failure")

    return fault


@dataclass
class Hold:
    """Holds an operation until released: ``reached`` is set when the operation gets there."""

    reached: asyncio.Event
    release: asyncio.Event

    def fault(self) -> Fault:
        async def fault(writer: FaultyWriter | None) -> None:
            self.reached.set()
            await self.release.wait()

        return fault


# -- environment -----------------------------------------------------------------------------


@dataclass
class Env:
    config: Config
    meta: MetadataStore
    real: LocalBlobBackend
    backend: FaultyBackend
    kek: KEKProvider
    pool: ThreadPoolExecutor
    ingestor: Ingestor
    reader: ChunkReader

    @property
    def blobs(self) -> Path:
        return self.config.storage.data_dir / "blobs"

    def pack_blobs(self) -> set[str]:
        """Names of the published pack files."""
        return {p.relative_to(self.blobs).as_posix() for p in self.blobs.glob("packs/*/*.pack")}

    def temp_files(self) -> list[Path]:
        """Files in the backend's temp directory (``LocalBlobBackend`` writes blobs there)."""
        return sorted((self.blobs / ".tmp").iterdir())

    async def commit(self, key: str, result: IngestResult) -> None:
        version = ObjectVersion(BUCKET, key, "null", result.size, "etag", 0.0, result.manifest)
        await self.meta.put_object(version, result.staged)

    async def read(self, result: IngestResult) -> bytes:
        return b"".join([bytes(p) async for p in self.reader.stream(result.manifest, 0, result.size)])

    def assert_nothing_left(self) -> None:
        """Nothing of a failed upload remains, and nothing of it is still running."""
        assert self.backend.in_flight == 0, "a backend operation outlived ingest()"
        assert self.pack_blobs() == set(), "a published pack of the failed upload stayed"
        assert self.temp_files() == [], "a temp file of the failed upload stayed"
        open_writers = [w.name for w in self.backend.writers if w.state == "open"]
        assert open_writers == [], "writers neither committed nor aborted (open file handles)"


def storage_config(data_dir: Path) -> StorageConfig:
    """Small sizes: a batch (512 KiB) fills more than a pack (256 KiB), so an upload writes
    about one pack per batch and a few MiB make several packs."""
    return StorageConfig(
        data_dir=data_dir,
        chunk_min=16 * KiB,
        chunk_avg=64 * KiB,
        chunk_max=256 * KiB,
        pack_target=256 * KiB,
        ingest_batch=512 * KiB,
        small_object_max=32 * KiB,  # only for a final batch when no pack was opened
        inline_max=0,
        workers=2,
    )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    config = Config(storage=storage_config(tmp_path / "data"))
    kek, meta = await open_metadata(config)
    real = cast(LocalBlobBackend, open_backend(config))
    backend = FaultyBackend(real)
    pool = ThreadPoolExecutor(max_workers=2)
    await meta.create_bucket(Bucket(BUCKET, "root", "us-east-1", 0.0))
    yield Env(
        config,
        meta,
        real,
        backend,
        kek,
        pool,
        Ingestor(backend, meta, kek, pool, config.storage),
        ChunkReader(real, meta, kek, pool),
    )
    pool.shutdown()
    await real.close()
    await meta.close()


async def pieces(body: bytes, seed: int, largest: int = 200 * KiB) -> AsyncIterator[bytes]:
    """``body`` as network pieces of random sizes (some empty)."""
    rng = random.Random(seed)
    pos = 0
    while pos < len(body):
        n = rng.choice([0, 1, rng.randrange(1, 4 * KiB), rng.randrange(1, largest)])
        yield body[pos : pos + n]
        pos += n


async def slow_pieces(body: bytes, piece: int = 64 * KiB, pause: float = 0.002) -> AsyncIterator[bytes]:
    """``body`` from a slow network."""
    for pos in range(0, len(body), piece):
        await asyncio.sleep(pause)
        yield body[pos : pos + piece]


# -- a successful upload ---------------------------------------------------------------------


async def test_multi_pack_upload_publishes_every_pack_and_reads_back(env: Env) -> None:
    body = data(3 * MiB + 12345, 1)
    for n in range(1, 20):  # slow publishes: ingest() must still wait for every one of them
        env.backend.faults[("commit", n)] = lambda writer: asyncio.sleep(0.01)
    md5 = hashlib.md5()
    result = await env.ingestor.ingest(pieces(body, 1), KEY, digests=[md5])

    assert result.size == len(body) and sum(result.manifest.lengths) == len(body)
    assert md5.hexdigest() == hashlib.md5(body).hexdigest()
    assert len(result.staged.packs) > 1
    names = {pack_blob_name(p.pack_id) for p in result.staged.packs}
    assert len(names) == len(result.staged.packs) == len(result.blob_names)
    assert set(result.blob_names) == names == env.pack_blobs()
    for pack in result.staged.packs:  # durable at its full size when ingest() returned
        assert (env.blobs / pack_blob_name(pack.pack_id)).stat().st_size == pack.size
    assert {c.location.pack_id for c in result.staged.chunks} == {p.pack_id for p in result.staged.packs}
    assert env.backend.in_flight == 0
    assert [w.state for w in env.backend.writers] == ["committed"] * len(names)
    assert env.temp_files() == []

    await env.commit("obj", result)
    assert await env.read(result) == body


async def test_concurrent_reads_that_hold_every_piece_read_exact_bytes(env: Env) -> None:
    """GET decrypts uncompressed chunks into recycled buffers (gateway.buffers): one that a
    reader (or a transport) still views must never be handed to another read."""
    bodies = [data(2 * MiB + 777 * i, 40 + i) for i in range(4)]
    results = []
    for i, body in enumerate(bodies):
        result = await env.ingestor.ingest(pieces(body, i), KEY)
        await env.commit(f"held-{i}", result)
        results.append(result)

    async def read_holding(result: IngestResult) -> list[memoryview]:
        held = []
        async for piece in env.reader.stream(result.manifest, 0, result.size):
            held.append(piece)
            await asyncio.sleep(0)  # let the other reads run between pieces
        return held

    for _ in range(3):
        helds = await asyncio.gather(*(read_holding(r) for r in results))
        for held, body in zip(helds, bodies, strict=True):
            assert b"".join(bytes(p) for p in held) == body
    for result, body in zip(results, bodies, strict=True):  # and reads that let go reuse them
        assert await env.read(result) == body


@pytest.mark.parametrize(("start", "end"), [(0, None), (1, 2), (100_000, 700_001), (0, 1), (-1, None)])
async def test_stream_runs_yields_the_range_run_by_run(env: Env, start: int, end: int | None) -> None:
    """stream_runs (what GET hands to one writev per run) is the same bytes as stream,
    grouped by pack run, with runs of at most read_run stored bytes."""
    body = data(3 * MiB + 333, 7)
    result = await env.ingestor.ingest(pieces(body, 0), KEY)
    await env.commit("runs", result)
    lo = start % len(body)
    hi = len(body) if end is None else end
    reader = ChunkReader(env.real, env.meta, env.kek, env.pool, run_bytes=256 * KiB)
    runs = [run async for run in reader.stream_runs(result.manifest, lo, hi)]
    assert b"".join(bytes(p) for run in runs for p in run) == body[lo:hi]
    assert all(run for run in runs)
    if hi - lo > 2 * reader.run_bytes:
        assert len(runs) > 1


@pytest.mark.parametrize(("start", "end"), [(0, None), (100_000, 2_900_001)])
async def test_stream_runs_defers_later_runs_to_their_consumer(env: Env, start: int, end: int | None) -> None:
    """With ``defer``, the first run comes opened and later runs (raw chunks of a local pack)
    come as Deferred, each record opened on its own (one group per record); opened in
    order, off the event loop, they are the same bytes."""
    body = data(3 * MiB + 333, 7)
    result = await env.ingestor.ingest(pieces(body, 0), KEY)
    await env.commit("deferred", result)
    hi = len(body) if end is None else end
    reader = ChunkReader(env.real, env.meta, env.kek, env.pool, run_bytes=MiB)
    kinds, groups, out = [], [], bytearray()
    async for run in reader.stream_runs(result.manifest, start, hi, defer=True):
        kinds.append(isinstance(run, Deferred))
        opened = await asyncio.to_thread(list, run.open_each()) if isinstance(run, Deferred) else [run]
        groups += [len(group) for group in opened] if isinstance(run, Deferred) else []
        out += b"".join(bytes(p) for group in opened for p in group)
    assert bytes(out) == body[start:hi]
    assert len(kinds) > 1 and not kinds[0] and any(kinds[1:])
    assert len(groups) > sum(kinds) and set(groups) == {1}  # runs of several records, one by one


async def test_stream_runs_discards_a_deferred_run_once_the_consumer_moves_on(env: Env) -> None:
    """A deferred run holds a memory map of its pack until it is opened or discarded: the
    stream discards it when the consumer asks for the next run, or closes the stream, so it
    is released then (and can no longer be opened), however long the consumer keeps it."""
    body = data(3 * MiB, 9)
    result = await env.ingestor.ingest(pieces(body, 2), KEY)
    await env.commit("discard", result)
    reader = ChunkReader(env.real, env.meta, env.kek, env.pool, run_bytes=256 * KiB)
    runs = reader.stream_runs(result.manifest, 0, result.size, defer=True)
    held = []
    async for run in runs:
        if isinstance(run, Deferred):
            held.append(run)
            if len(held) == 2:
                break
    moved_on, current = held
    with pytest.raises(RuntimeError):
        moved_on.open()
    await asyncio.to_thread(current.open)  # still the consumer's until it moves on
    await runs.aclose()
    with pytest.raises(RuntimeError):
        current.open()
    assert reader.ahead_bytes == 0  # the read-ahead's budget is given back on close


async def test_a_deferred_run_with_a_damaged_record_fails_to_open(env: Env) -> None:
    """A record that fails authentication fails its Deferred's open, every time: the views
    of its buffers (which may hold an earlier response's bytes) are never handed out."""
    body = data(3 * MiB, 8)
    result = await env.ingestor.ingest(pieces(body, 1), KEY)
    await env.commit("damaged", result)
    last = (await env.meta.lookup_chunks([result.manifest.chunk_ids[-1]]))[result.manifest.chunk_ids[-1]]
    path = env.real.root / pack_blob_name(last.pack_id)
    with path.open("r+b") as fh:  # flip a bit in the last record's ciphertext
        fh.seek(last.offset + last.length - 40)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 1]))
    reader = ChunkReader(env.real, env.meta, env.kek, env.pool, run_bytes=256 * KiB)
    runs = reader.stream_runs(result.manifest, 0, result.size, defer=True)
    seen = 0
    async for run in runs:
        if not isinstance(run, Deferred):
            seen += sum(p.nbytes for p in run)
            continue
        seen += run.nbytes
        if seen < result.size:  # the undamaged ones open
            await asyncio.to_thread(run.open)
            continue
        for _ in range(2):  # the run of the last chunk
            with pytest.raises(IntegrityError):
                await asyncio.to_thread(run.open)
        break
    else:
        pytest.fail("the last chunk did not come in a deferred run")
    await runs.aclose()


def test_a_deferred_record_that_does_not_fit_its_buffer_fails() -> None:
    """If a record's header disagrees with the index (its length, or compressed where the
    index says raw), it cannot be decrypted into the buffer already handed out: the open
    fails instead of leaving the buffer as it was."""
    sealer = Sealer(bytes(32))
    cid = bytes(range(32))
    plain = data(1000, 3)
    raw = seal_chunk(sealer, cid, plain).record
    with pytest.raises(CorruptPackError):
        _open_into(sealer, memoryview(raw), cid, memoryview(bytearray(len(plain) + 1)))
    zstd = seal_chunk(sealer, cid, b"x" * 1000).record  # compressible: stored with FLAG_ZSTD
    with pytest.raises(CorruptPackError):
        _open_into(sealer, memoryview(zstd), cid, memoryview(bytearray(1000)))
    out = memoryview(bytearray(len(plain)))
    _open_into(sealer, memoryview(raw), cid, out)
    assert bytes(out) == plain


async def test_upload_of_a_body_that_ends_on_a_batch_boundary(env: Env) -> None:
    """The last batch then holds only the carry: no fresh bytes, yet its chunks are stored."""
    body = data(4 * env.config.storage.ingest_batch, 2)

    async def whole_batches() -> AsyncIterator[bytes]:
        for pos in range(0, len(body), env.config.storage.ingest_batch):
            yield body[pos : pos + env.config.storage.ingest_batch]

    md5 = hashlib.md5()
    result = await env.ingestor.ingest(whole_batches(), KEY, digests=[md5])
    assert md5.hexdigest() == hashlib.md5(body).hexdigest()
    assert set(result.blob_names) == env.pack_blobs() and len(result.blob_names) > 1
    assert env.temp_files() == []
    await env.commit("obj", result)
    assert await env.read(result) == body


async def test_reupload_is_deduplicated_and_writes_no_pack(env: Env) -> None:
    body = data(2 * MiB, 3)
    first = await env.ingestor.ingest(pieces(body, 3), KEY)
    await env.commit("a", first)
    before = env.pack_blobs()
    again = await env.ingestor.ingest(pieces(body, 4), KEY)
    assert again.dedup_bytes == len(body) and again.blob_names == [] and again.staged.packs == []
    assert env.pack_blobs() == before
    await env.commit("b", again)
    assert await env.read(again) == body


# -- failures leave nothing behind -----------------------------------------------------------


@pytest.mark.parametrize(
    "commit_fault",
    [
        pytest.param(fail_and_clean_up, id="commit-cleans-up-its-writer"),  # ResilientWriter
        pytest.param(fail, id="commit-leaves-its-writer-to-abort"),  # S3BlobWriter contract
    ],
)
async def test_failed_publish_of_the_first_pack_while_later_packs_are_written(
    env: Env, commit_fault: Callable[[], Fault]
) -> None:
    """The fault fails the publish before it reaches the real ``LocalBlobWriter.commit`` (which
    marks itself closed first, so a real failure of its fsync or rename would leave its temp
    file whatever the caller does). What the writer leaves to its caller then follows the two
    backend writers: ``ResilientWriter`` aborts itself; ``S3BlobWriter`` keeps its spool until
    the caller aborts it, so the upload must abort a pack whose publish failed."""
    backend = env.backend
    later = fail_once(backend, lambda: backend.finished["commit"] >= 2)  # later packs published
    inner = commit_fault()

    async def fault(writer: FaultyWriter | None) -> None:
        with contextlib.suppress(InjectedError):
            await later(writer)
        await inner(writer)

    backend.faults[("commit", 1)] = fault
    with pytest.raises(InjectedError):
        await env.ingestor.ingest(pieces(data(4 * MiB, 5), 5), KEY)
    assert backend.finished["commit"] >= 2 and backend.started["open"] >= 3  # it went on meanwhile
    env.assert_nothing_left()


@pytest.mark.parametrize("n", [1, 2, 3, 5])
async def test_failed_records_write(env: Env, n: int) -> None:
    env.backend.faults[("records", n)] = fail()
    with pytest.raises(InjectedError):
        await env.ingestor.ingest(pieces(data(4 * MiB, 6), 6), KEY)
    env.assert_nothing_left()


@pytest.mark.parametrize("n", [1, 3])
async def test_failed_records_write_into_a_pack_still_open(env: Env, n: int) -> None:
    """One pack takes the whole upload: the failed write surfaces at the next batch's write
    into the same pack (in the upload's task), not in a pack's close."""
    storage = dataclasses.replace(env.config.storage, pack_target=64 * MiB)
    ingestor = Ingestor(env.backend, env.meta, env.kek, env.pool, storage)
    env.backend.faults[("records", n)] = fail()
    with pytest.raises(InjectedError):
        await ingestor.ingest(pieces(data(4 * MiB, 6), 6), KEY)
    env.assert_nothing_left()


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize(("kind", "seed"), [("trailer", 7), ("header", 8), ("open", 9)])
async def test_failed_pack_operation(env: Env, kind: str, seed: int, n: int) -> None:
    """The n-th trailer write, header write or pack open fails."""
    env.backend.faults[(kind, n)] = fail()
    with pytest.raises(InjectedError):
        await env.ingestor.ingest(pieces(data(4 * MiB, seed), seed), KEY)
    env.assert_nothing_left()


async def test_failed_verification_deletes_the_published_packs(env: Env) -> None:
    def verify() -> None:
        assert env.backend.started["open"] >= 2  # packs were written before verification
        raise S3Error("BadDigest")

    with pytest.raises(S3Error):
        await env.ingestor.ingest(pieces(data(3 * MiB, 10), 10), KEY, verify=verify)
    env.assert_nothing_left()


async def test_body_over_the_size_limit(env: Env) -> None:
    with pytest.raises(S3Error) as err:
        await env.ingestor.ingest(pieces(data(3 * MiB, 11), 11), KEY, max_size=2 * MiB)
    assert err.value.code == "EntityTooLarge"
    assert env.backend.started["open"] > 0  # packs were written before the limit was hit
    env.assert_nothing_left()


# -- cancellation ----------------------------------------------------------------------------


async def test_cancelled_while_waiting_for_a_slow_network(env: Env) -> None:
    """The client goes silent after a few packs (the upload's task waits for the network, its
    packs' closes may still run), then the request is cancelled."""
    body = data(8 * MiB, 12)
    stalled, resume = asyncio.Event(), asyncio.Event()

    async def network() -> AsyncIterator[bytes]:
        async for piece in slow_pieces(body[: 2 * MiB]):
            yield piece
        stalled.set()
        await resume.wait()  # never set: the rest of the body does not come
        yield body[2 * MiB :]

    # One slot: the upload holds it exactly while it cuts, seals and writes a batch.
    ingestor = Ingestor(
        env.backend, env.meta, env.kek, env.pool, dataclasses.replace(env.config.storage, ingest_slots=1)
    )
    task = asyncio.ensure_future(ingestor.ingest(network(), KEY))
    await env.backend.until(lambda: env.backend.finished["commit"] >= 2)
    async with asyncio.timeout(TIMEOUT):
        while not stalled.is_set() or ingestor._slots.locked():  # until it waits for the network
            await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(TIMEOUT):
            await task
    assert env.backend.finished["commit"] >= 2
    env.assert_nothing_left()


async def operations_of_an_upload(env: Env, body: bytes, seed: int) -> Counter[str]:
    """How many operations of each kind a fault-free upload of ``body`` makes (deterministic:
    batches, chunks and packs depend only on the bytes). Its packs are deleted afterwards;
    nothing was indexed, so the same upload again stores everything afresh."""
    probe = FaultyBackend(env.real)
    result = await Ingestor(probe, env.meta, env.kek, env.pool, env.config.storage).ingest(
        pieces(body, seed), KEY
    )
    for name in result.blob_names:
        await env.real.delete(name)
    assert env.pack_blobs() == set() and env.temp_files() == []
    return probe.finished


@pytest.mark.parametrize(
    ("kind", "which"),
    [
        ("open", 3),  # in the upload's task, before the pack's file exists
        ("header", 3),  # in the upload's task, while it opens a pack
        ("records", "last"),  # in the write behind of the last pack, which finish() closes
        ("trailer", "last"),  # in the last pack's close
        ("commit", "last"),  # in the last pack's publish: abort() must wait, then delete it
    ],
    ids=lambda v: str(v),
)
async def test_cancelled_while_an_operation_is_in_flight(env: Env, kind: str, which: int | str) -> None:
    """Cancel the upload while one backend operation is held; release it once the cancellation
    is under way. (Holding the last operation of a kind makes the point deterministic: the
    upload's task has opened every pack and waits for the closes in ``finish()``.)"""
    body = data(4 * MiB, 13)
    n = (await operations_of_an_upload(env, body, 13))[kind] if which == "last" else int(which)
    assert n >= 3  # several packs
    hold = Hold(asyncio.Event(), asyncio.Event())
    env.backend.faults[(kind, n)] = hold.fault()
    task = asyncio.ensure_future(env.ingestor.ingest(pieces(body, 13), KEY))
    async with asyncio.timeout(TIMEOUT):
        await hold.reached.wait()
    task.cancel()
    await asyncio.sleep(0.02)  # let the cancellation reach the cleanup, which waits for the hold
    assert not task.done() or kind in ("open", "header")  # a close in flight is waited for
    hold.release.set()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(TIMEOUT):
            await task
    env.assert_nothing_left()


# -- _BodyReader -----------------------------------------------------------------------------

Piece = bytes | bytearray | memoryview
CarryPolicy = Callable[[int, int], int]  # (batch length, batch size) -> carry length


def no_carry(length: int, size: int) -> int:
    return 0


def short_carry(length: int, size: int) -> int:
    return min(length, 1000)


def long_carry(length: int, size: int) -> int:
    """More than half a batch: the next batch grows past ``size`` (half as many fresh bytes)."""
    return min(length, 3 * size // 4)


def as_piece(raw: bytes, kind: str) -> Piece:
    """``raw`` as the piece type a network layer might hand over."""
    if kind == "bytes":
        return raw
    if kind == "bytearray":
        return bytearray(raw)
    if kind == "view":
        return memoryview(raw)
    if kind in ("uint32", "2d") and not raw:
        return memoryview(array("I"))  # an empty typed view
    if kind == "uint32":  # a non-'B' format: len() counts items, not bytes
        words = array("I")
        words.frombytes(raw[: len(raw) - len(raw) % words.itemsize])
        return memoryview(words)
    if kind == "2d" and raw:
        rows = 4 if len(raw) % 4 == 0 else 1
        return memoryview(raw).cast("B", [rows, len(raw) // rows])
    raise ValueError(kind)


def piece_bytes(piece: Piece) -> bytes:
    return memoryview(piece).tobytes()


async def read_batches(source: AsyncIterator[Piece], size: int, carry: CarryPolicy) -> bytes:
    """Drive a reader as ``Ingestor.ingest`` does (first batch, then ``fill`` with a carry from
    the end of the previous batch), check every batch, and return the fresh bytes in order."""
    reader = _BodyReader(source, size)
    out = bytearray()
    batch = await reader.first()
    if batch is None:
        assert reader.done
        return bytes(out)
    if not reader.done:  # the first batch is short only if it is the whole body, and at
        # most half a batch longer (it may grow once, from a first step shorter than a batch)
        assert size <= len(batch) < size + max(1, size // 2)
    start = 0
    for _ in range(100_000):
        view = memoryview(batch)
        assert view.format == "B" and view.ndim == 1 and view.c_contiguous
        out += view[start:]
        if reader.done:
            break
        taken = carry(len(view), size)
        previous = view[len(view) - taken :].toreadonly()  # as StreamChunker.take_carry
        expected = bytes(previous)
        batch, start = await reader.fill(previous)
        full = max(size, taken + max(1, size // 2))
        assert start == taken and bytes(memoryview(batch)[:start]) == expected
        # Every batch but the last is full; the last is at most full and ends the body.
        assert len(batch) == full if not reader.done else len(batch) <= full
    else:
        raise AssertionError("the reader never ended")
    assert reader.done
    return bytes(out)


async def source_of(items: Sequence[Piece]) -> AsyncIterator[Piece]:
    for item in items:
        yield item


def pattern(name: str) -> list[Piece]:
    """Named piece patterns (bodies of a few MiB at most)."""
    rng = random.Random(name)
    if name == "empty-body":
        return []
    if name == "only-empty-pieces":
        return [b""] * 5
    if name == "one-byte":
        return [b"\x07"]
    if name == "one-huge-piece":
        return [data(5 * MiB + 3, 20)]
    if name == "many-one-byte-pieces":
        return [bytes([i % 251]) for i in range(20_000)]
    if name == "empty-pieces-between":
        return [p for i in range(40) for p in (b"", data(50 * KiB + i, i), bytearray())]
    if name == "uint32-views":
        return [as_piece(data(64 * KiB, 30 + i), "uint32") for i in range(40)]
    if name == "mixed-kinds":
        kinds = ["bytes", "bytearray", "view", "uint32", "2d"]
        return [as_piece(data(rng.randrange(0, 300 * KiB), 40 + i), rng.choice(kinds)) for i in range(30)]
    if name == "exactly-two-batches":
        return [data(512 * KiB, 50), data(512 * KiB, 51)]
    if name == "small-body":
        return [data(1000, 60), data(2000, 61)]
    raise ValueError(name)


PATTERNS = [
    "empty-body",
    "only-empty-pieces",
    "one-byte",
    "one-huge-piece",
    "many-one-byte-pieces",
    "empty-pieces-between",
    "uint32-views",
    "mixed-kinds",
    "exactly-two-batches",
    "small-body",
]


@pytest.mark.parametrize("carry", [no_carry, short_carry, long_carry], ids=lambda f: f.__name__)
@pytest.mark.parametrize("size", [4 * KiB, 512 * KiB, 1536 * KiB, 3 * MiB])
@pytest.mark.parametrize("name", PATTERNS)
async def test_body_reader_batches_reconstruct_the_body(name: str, size: int, carry: CarryPolicy) -> None:
    items = pattern(name)
    if name == "many-one-byte-pieces" and size > 4 * KiB:
        items = items[:5000]
    body = b"".join(piece_bytes(p) for p in items)
    assert await read_batches(source_of(items), size, carry) == body


@contextlib.contextmanager
def first_batch_steps(gather: int, buffer: int) -> Iterator[None]:
    """Smaller steps for the first batch, so tiny bodies take every path of ``first()``."""
    with (
        mock.patch.object(ingest_module, "FIRST_GATHER", gather),
        mock.patch.object(ingest_module, "FIRST_BUFFER", buffer),
    ):
        yield


piece_kinds = st.sampled_from(["bytes", "bytearray", "view", "uint32", "2d"])


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(0, 300), piece_kinds), max_size=20),
    size=st.integers(1, 500),
    gather=st.integers(1, 300),
    buffer=st.integers(1, 300),
    carries=st.lists(st.floats(0, 0.9), min_size=1, max_size=8),
    seed=st.integers(0, 2**32),
)
def test_body_reader_property(
    lengths: list[tuple[int, str]], size: int, gather: int, buffer: int, carries: list[float], seed: int
) -> None:
    rng = random.Random(seed)
    items = [as_piece(rng.randbytes(n), kind) for n, kind in lengths]
    body = b"".join(piece_bytes(p) for p in items)
    turn = iter(range(10**6))

    def carry(length: int, batch_size: int) -> int:  # a suffix of the batch, up to most of it
        return int(carries[next(turn) % len(carries)] * length)

    with first_batch_steps(gather, buffer):
        assert asyncio.run(read_batches(source_of(items), size, carry)) == body
