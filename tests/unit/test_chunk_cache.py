"""The GET read path's sharing and memory (gateway/chunkcache.py, gateway/readpath.py): each
chunk decoded once however many GETs want it at once, later reads answered from the cache,
raw chunks of local packs left to the page cache, a waiter that still gets its bytes when
the request it waited on fails or is cancelled, and read-ahead within the shared budget."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.waiting import eventually

from crypto.kek import KEKProvider
from gateway import readpath
from gateway.backends.base import BlobBackend
from gateway.backends.factory import open_backend
from gateway.chunkcache import ChunkCache
from gateway.config import Config, StorageConfig
from gateway.ingest import Ingestor, IngestResult
from gateway.meta.models import Bucket, ObjectVersion
from gateway.meta.store import MetadataStore
from gateway.readpath import ChunkReader, _stretches
from gateway.runtime import open_metadata

KiB, MiB = 1024, 1024 * 1024
KEY = bytes(range(32))


def test_cache_is_a_byte_bounded_lru() -> None:
    cache = ChunkCache(80)
    for i in range(8):
        cache.put(bytes([i]), bytes(10))
    assert len(cache) == 8 and cache.held_bytes == 80
    assert cache.get(b"\0") == bytes(10)  # now the most recent
    cache.put(b"x", bytes(10))
    assert cache.get(b"\1") is None and cache.get(b"\0") is not None  # the oldest went
    cache.put(b"big", bytes(11))  # more than an eighth of the capacity: never kept
    assert cache.get(b"big") is None and cache.held_bytes == 80
    cache.put(b"empty", b"")
    assert cache.get(b"empty") is None
    off = ChunkCache(0)
    off.put(b"a", b"x")
    assert off.get(b"a") is None and off.held_bytes == 0


@pytest.mark.parametrize(
    ("indexes", "stretches"),
    [
        ([], []),
        ([0], [(0, 1)]),
        ([0, 1, 2], [(0, 3)]),
        ([0, 2, 3, 5], [(0, 1), (2, 4), (5, 6)]),
        ([4, 5, 7], [(4, 6), (7, 8)]),
    ],
)
def test_stretches(indexes: list[int], stretches: list[tuple[int, int]]) -> None:
    assert _stretches(indexes) == stretches


@dataclass
class Env:
    meta: MetadataStore
    backend: BlobBackend
    kek: KEKProvider
    pool: ThreadPoolExecutor
    ingestor: Ingestor

    def reader(self, cache: int = 16 * MiB, backend: Any = None, **options: Any) -> ChunkReader:
        return ChunkReader(
            backend or self.backend, self.meta, self.kek, self.pool, chunk_cache=cache, **options
        )

    async def store(self, key: str, body: bytes) -> IngestResult:
        async def source() -> AsyncIterator[bytes]:
            for pos in range(0, len(body), 100 * KiB):
                yield body[pos : pos + 100 * KiB]

        result = await self.ingestor.ingest(source(), KEY)
        await self.meta.put_object(
            ObjectVersion("bkt", key, "null", result.size, "e", 0.0, result.manifest), result.staged
        )
        return result


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    storage = StorageConfig(
        data_dir=tmp_path / "data", chunk_min=16 * KiB, chunk_avg=64 * KiB, chunk_max=256 * KiB,
        pack_target=1 * MiB, ingest_batch=512 * KiB, small_object_max=32 * KiB, inline_max=0, workers=2,
    )  # fmt: skip
    config = Config(storage=storage)
    kek, meta = await open_metadata(config)
    backend = open_backend(config)
    pool = ThreadPoolExecutor(max_workers=2)
    await meta.create_bucket(Bucket("bkt", "root", "us-east-1", 0.0))
    yield Env(meta, backend, kek, pool, Ingestor(backend, meta, kek, pool, storage))
    pool.shutdown()
    await backend.close()
    await meta.close()


def text(n: int, seed: int) -> bytes:
    """Compressible bytes (zstd records) that do not repeat chunk for chunk (no dedup)."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(500)]
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choices(words, k=64)) + b"\n%d\n" % len(out)
    return bytes(out[:n])


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every chunk id the reader opens (decrypts and decompresses), in order."""
    ids: list[bytes] = []
    real = readpath._open_run

    def counting(sealer: Any, records: Any, run_ids: list[bytes], *rest: Any) -> Any:
        ids.extend(run_ids)
        return real(sealer, records, run_ids, *rest)

    monkeypatch.setattr(readpath, "_open_run", counting)
    return ids


async def read(reader: ChunkReader, result: IngestResult, start: int = 0, end: int | None = None) -> bytes:
    stop = result.size if end is None else end
    return b"".join([bytes(p) async for p in reader.stream(result.manifest, start, stop)])


async def test_concurrent_gets_decode_each_chunk_once_and_later_gets_none(
    env: Env, opened: list[bytes]
) -> None:
    body = text(3 * MiB, 1)
    result = await env.store("t", body)
    distinct = set(result.manifest.chunk_ids)
    assert len(distinct) > 8
    reader = env.reader()
    assert await asyncio.gather(*[read(reader, result) for _ in range(4)]) == [body] * 4
    assert sorted(opened) == sorted(distinct)  # one decode per chunk for four GETs
    stats = reader.cache.stats
    assert stats.misses == len(distinct) and stats.hits + stats.shared == 3 * len(result.manifest.chunk_ids)
    opened.clear()
    for start, end in [(0, len(body)), (1, 5), (70_000, 2 * MiB + 3), (len(body) - 1, len(body))]:
        assert await read(reader, result, start, end) == body[start:end]
    assert opened == []  # answered from the cache, ranges included
    assert reader.cache.held_bytes == len(body)


async def test_raw_chunks_of_local_packs_are_left_to_the_page_cache(env: Env, opened: list[bytes]) -> None:
    body = random.Random(2).randbytes(2 * MiB)  # incompressible: raw records
    result = await env.store("r", body)
    reader = env.reader()
    assert await read(reader, result) == body and await read(reader, result) == body
    assert reader.cache.held_bytes == 0 and len(opened) == 2 * len(result.manifest.chunk_ids)


class RemoteLike:
    """The local backend seen as a backend without memory maps (as the S3 backend is)."""

    def __init__(self, backend: BlobBackend) -> None:
        self.read_range = backend.read_range


async def test_raw_chunks_are_cached_when_every_read_is_a_backend_request(
    env: Env, opened: list[bytes]
) -> None:
    body = random.Random(3).randbytes(2 * MiB)
    result = await env.store("r", body)
    reader = env.reader(backend=RemoteLike(env.backend))
    assert await read(reader, result) == body
    opened.clear()
    assert await read(reader, result) == body
    assert opened == [] and reader.cache.held_bytes == len(body)


async def test_a_cache_of_zero_bytes_decodes_every_time(env: Env, opened: list[bytes]) -> None:
    body = text(1 * MiB, 4)
    result = await env.store("t", body)
    reader = env.reader(cache=0)
    assert await asyncio.gather(read(reader, result), read(reader, result)) == [body, body]
    assert len(opened) == 2 * len(result.manifest.chunk_ids) and reader.cache.held_bytes == 0


def _first_open_stalls(monkeypatch: pytest.MonkeyPatch, then: Callable[[], object]) -> threading.Event:
    """The first run opened waits for the returned event, then calls ``then`` (which may
    raise) before opening; later runs open at once."""
    gate = threading.Event()
    real = readpath._open_run
    calls = [0]

    def stalling(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            gate.wait(10)
            then()
        return real(*args)

    monkeypatch.setattr(readpath, "_open_run", stalling)
    return gate


async def _waiter_behind(env: Env, monkeypatch: pytest.MonkeyPatch, owner_fails: bool) -> None:
    """Request A owns the first run's chunks and stalls; request B waits on them; then A
    fails (its read raises) or is cancelled: either way B still reads everything."""

    def fail() -> None:
        raise OSError("the pack read failed")

    body = text(2 * MiB, 5)
    result = await env.store("t", body)
    reader = env.reader()
    gate = _first_open_stalls(monkeypatch, fail if owner_fails else lambda: None)
    a = asyncio.ensure_future(read(reader, result))
    await eventually(lambda: bool(reader._inflight))  # A owns chunks now
    b = asyncio.ensure_future(read(reader, result))
    await eventually(lambda: reader.cache.stats.shared > 0)  # B waits on one of them
    assert not b.done()
    if not owner_fails:
        a.cancel()
    gate.set()
    assert await asyncio.wait_for(b, 10) == body
    with pytest.raises(OSError if owner_fails else asyncio.CancelledError):
        await a
    assert reader._inflight == {}


async def test_a_waiter_reads_on_when_the_request_it_waited_on_is_cancelled(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _waiter_behind(env, monkeypatch, owner_fails=False)


async def test_a_waiter_reads_on_when_the_request_it_waited_on_fails(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _waiter_behind(env, monkeypatch, owner_fails=True)


async def test_a_cancelled_waiter_is_cancelled_and_the_request_it_waited_on_reads_on(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = text(2 * MiB, 6)
    result = await env.store("t", body)
    reader = env.reader()
    gate = _first_open_stalls(monkeypatch, lambda: None)
    a = asyncio.ensure_future(read(reader, result))
    await eventually(lambda: bool(reader._inflight))
    b = asyncio.ensure_future(read(reader, result))
    await eventually(lambda: reader.cache.stats.shared > 0)
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    gate.set()
    assert await asyncio.wait_for(a, 10) == body
    assert reader._inflight == {}


class RunWatch:
    """How many runs a reader decodes at once (at most), and the most read-ahead budget its
    GETs held together, seen each time a run starts."""

    def __init__(self, reader: ChunkReader) -> None:
        self.now = self.most = self.most_ahead = 0
        real = reader._run

        async def watched(ids: list[bytes], locs: list[Any], defer: bool = False) -> tuple[Any, Any]:
            self.now += 1
            self.most = max(self.most, self.now)
            self.most_ahead = max(self.most_ahead, reader.ahead_bytes)
            try:
                await asyncio.sleep(0.002)  # long enough for the other GETs to start theirs
                return await real(ids, locs, defer)
            finally:
                self.now -= 1

        reader._run = watched  # type: ignore[method-assign]


async def slow_read(reader: ChunkReader, result: IngestResult) -> bytes:
    """A client slower than the reader: it waits a little before taking each run."""
    out = bytearray()
    async for pieces in reader.stream_runs(result.manifest, 0, result.size):
        await asyncio.sleep(0.005)
        for p in pieces:
            out += p
    return bytes(out)


@pytest.mark.parametrize("budget", [0, 160 * KiB, 1 << 30])
async def test_read_ahead_stays_within_the_shared_budget(env: Env, budget: int) -> None:
    """Three slow GETs with read_ahead 4: each always has its next run on the way; the runs
    beyond it start only while the budget (bytes of plaintext) has room. With none, at most
    three runs are decoded at once; with an unlimited one, up to twelve. The bytes are exact
    either way, and every GET gives its share back."""
    body = random.Random(7).randbytes(3 * MiB)
    result = await env.store("r", body)
    reader = env.reader(cache=0, read_ahead=4, run_bytes=64 * KiB, ahead_budget=budget)
    watch = RunWatch(reader)
    assert await asyncio.gather(*[slow_read(reader, result) for _ in range(3)]) == [body] * 3
    assert watch.most_ahead <= budget
    if budget == 0:
        assert watch.most <= 3
    if budget >= 1 << 30:
        assert watch.most > 6  # it does read ahead when it may
    assert reader.ahead_bytes == 0


async def test_a_get_that_stops_early_gives_its_budget_back(env: Env) -> None:
    body = random.Random(8).randbytes(2 * MiB)
    result = await env.store("r", body)
    reader = env.reader(cache=0, read_ahead=4, run_bytes=64 * KiB, ahead_budget=1 << 30)
    stream = reader.stream_runs(result.manifest, 0, result.size)
    first = await anext(stream)
    await eventually(lambda: reader.ahead_bytes > 0)  # it read ahead...
    assert bytes(first[0]) == body[: len(first[0])]
    await stream.aclose()  # ...and the client went away
    assert reader.ahead_bytes == 0
