"""What only the sharded PostgreSQL store needs for gc: its claim runs on the chunk and
pack shards *before* the version commits on the bucket's shard, so gc must wait for the
commits in flight (``settle_commits``). Each race is forced step by step, with a commit
held back at the exact point of the interleaving, and would lose data without the wait;
plus the pools under many bracketed commits at once (no deadlock with ``pool_max = 2``)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
from support.postgres import reset_databases

from dedup.manifest import Manifest
from gateway.backends.factory import open_backend
from gateway.config import Config, MetaConfig, StorageConfig
from gateway.ingest import Ingestor, IngestResult
from gateway.maintenance.gc import Collector, NullObserver
from gateway.meta.models import Bucket, ObjectVersion, StagedData
from gateway.meta.postgres import PostgresMetadataStore
from gateway.meta.shards import HashRing
from gateway.readpath import ChunkReader
from gateway.runtime import open_metadata
from gateway.s3.errors import S3Error

from .test_maintenance_store import _object, _pack, _rows

KEY = bytes(range(32))  # the tenant dedup key of these tests
HELD_FOR = 1.0  # how long a held commit waits for gc to pass it before it is let go anyway


async def held(
    gate: asyncio.Event, reached: asyncio.Event, step: Callable[..., Awaitable[Any]], *args: Any
) -> Any:
    reached.set()
    await gate.wait()
    return await step(*args)


async def release_when(gate: asyncio.Event, task: asyncio.Task[Any]) -> bool:
    """Let a held commit go once ``task`` finished or waited ``HELD_FOR`` seconds for it;
    True if ``task`` was still waiting (it waits for the held commit, as it should)."""
    done, _ = await asyncio.wait({task}, timeout=HELD_FOR)
    gate.set()
    return not done


@pytest.fixture
async def pg_store(pg4_dsns: tuple[str, ...]) -> AsyncIterator[PostgresMetadataStore]:
    reset_databases(pg4_dsns)
    store = PostgresMetadataStore(MetaConfig(dsns=pg4_dsns, pool_min=1, pool_max=8))
    await store.open()
    assert await store.create_bucket(Bucket("bkt", "root", "us-east-1", 0.0))
    yield store
    await store.close()


async def test_gc_waits_for_a_commit_whose_claim_ran_before_its_mark(
    pg4_dsns: tuple[str, ...], tmp_path: Path
) -> None:
    """A dedup hit claims its chunks (live: nothing to revive), then is held before its
    version commits. Without the wait, gc --grace 0 would condemn the chunks (pass 1 does not
    see the version) and sweep them (nor does pass 2, if the version lands after its mark)."""
    reset_databases(pg4_dsns)
    config = Config(
        storage=StorageConfig(data_dir=tmp_path / "data"), meta=MetaConfig(dsns=pg4_dsns, pool_max=8)
    )
    kek, meta = await open_metadata(config)
    store = cast(PostgresMetadataStore, meta)
    backend = open_backend(config)
    pool = ThreadPoolExecutor(max_workers=2)
    ingestor = Ingestor(backend, meta, kek, pool, config.storage)
    try:
        await meta.create_bucket(Bucket("bkt", "root", "us-east-1", 0.0))

        async def ingest(data: bytes) -> IngestResult:
            async def body() -> AsyncIterator[bytes]:
                yield data

            return await ingestor.ingest(body(), KEY)

        def version(key: str, result: IngestResult) -> ObjectVersion:
            return ObjectVersion("bkt", key, "null", result.size, "e", 0.0, result.manifest)

        blob = random.Random(1).randbytes(3 << 20)
        first = await ingest(blob)
        await meta.put_object(version("a", first), first.staged)
        hit = await ingest(blob)  # the dedup hit
        assert hit.dedup_bytes == len(blob) and not hit.staged.chunks
        await meta.delete_object("bkt", "a")

        gate, reached = asyncio.Event(), asyncio.Event()
        put_version = store._put_version
        store._put_version = lambda *a: held(gate, reached, put_version, *a)  # type: ignore[method-assign]
        commit = asyncio.create_task(meta.put_object(version("b", hit), hit.staged))
        await reached.wait()  # b's claim ran: its chunks were live
        phases: list[str] = []

        class LetTheCommitLandAfterTheSecondMark(NullObserver):
            async def phase(self, name: str, total: int | None, unit: str) -> None:
                phases.append(name)
                if phases.count("sweep") == 2:
                    gate.set()
                    await commit

        collector = Collector(
            store, backend, kek, pool, config, grace=0, observer=LetTheCommitLandAfterTheSecondMark()
        )
        run = asyncio.create_task(collector.run())
        assert await release_when(gate, run), phases  # gc waited in its first mark
        assert phases == ["mark"]
        report = await run
        await commit
        assert report.condemned == 0 and report.swept_chunks == 0
        got = await meta.get_object("bkt", "b")
        assert got is not None
        reader = ChunkReader(backend, meta, kek, pool)
        assert b"".join([bytes(p) async for p in reader.stream(got.manifest, 0, got.size)]) == blob
    finally:
        pool.shutdown()
        await backend.close()
        await meta.close()


async def test_pack_deletion_waits_for_a_commit_that_revived_the_pack(
    pg_store: PostgresMetadataStore,
) -> None:
    """A commit's pack step revives its pack, then it is held before its chunk step; gc
    retires the pack (no chunk row points into it yet) and deletes it with grace 0. Without the
    wait the commit's chunk rows would land in a deleted pack."""
    store = pg_store
    await store.restore_index(StagedData([_pack("shared")], []))  # an earlier request of its group
    ids = [os.urandom(32) for _ in range(6)]
    gate, reached = asyncio.Event(), asyncio.Event()
    claim_chunks = store._claim_chunks
    store._claim_chunks = lambda *a: held(gate, reached, claim_chunks, *a)  # type: ignore[method-assign]
    commit = asyncio.create_task(
        store.put_object(_object("late", ids), StagedData([_pack("shared")], _rows("shared", ids)))
    )
    await reached.wait()
    assert await store.retire_packs(["shared"], time.time()) == ["shared"]
    deleting = asyncio.create_task(store.delete_retired_packs(time.time() + 1, 10))
    assert await release_when(gate, deleting)  # the deletion waited for the commit
    await commit
    assert await deleting == []
    assert await store.get_pack("shared") == _pack("shared")
    (usage,) = await store.scan_pack_usage(None, 10)
    assert usage.retired_at is None and usage.live_chunks == 6  # un-retired: it has rows again
    assert set(await store.lookup_chunks(ids, live_only=True)) == set(ids)


async def test_a_commit_waiting_for_a_pack_deletion_sees_its_tombstone(
    pg_store: PostgresMetadataStore,
) -> None:
    """The pack step waits for the exclusive lock of a deletion in progress and then reads
    the tombstone that deletion wrote (a snapshot taken before the wait would miss it)."""
    store = pg_store
    await store.restore_index(StagedData([_pack("doomed")], []))
    assert await store.retire_packs(["doomed"], 1.0) == ["doomed"]
    shard = HashRing(4).pack_shard("doomed")
    deleting = asyncio.create_task(store._delete_packs(shard, ["doomed"], retired_before=2.0, now=3.0))
    async with store._tx(shard) as conn:  # hold the lock as the deletion would while it runs
        await conn.execute("SELECT strata_lock_packs($1::text[], true)", ["doomed"])
        ids = [os.urandom(32)]
        commit = asyncio.create_task(
            store.put_object(_object("late", ids), StagedData([_pack("doomed")], _rows("doomed", ids)))
        )
        await asyncio.sleep(0.3)
        assert not commit.done()  # waits for the lock
        await conn.execute("DELETE FROM packs WHERE pack_id = 'doomed'")
        await conn.execute("INSERT INTO pack_tombstones VALUES ('doomed', 3.0)")
    with pytest.raises(S3Error) as err:
        await commit
    assert err.value.code == "SlowDown"
    assert await deleting == []  # the row was gone by the time it got the lock
    assert await store.get_pack("doomed") is None and await store.lookup_chunks(ids) == {}


async def test_many_bracketed_commits_on_small_pools_all_finish(pg4_dsns: tuple[str, ...]) -> None:
    """Each commit holds its bucket shard's connection while its claim uses every shard's
    pool: with ``pool_max = 2`` and dozens at once, none may wait forever."""
    reset_databases(pg4_dsns)
    store = PostgresMetadataStore(MetaConfig(dsns=pg4_dsns, pool_min=1, pool_max=2))
    await store.open()
    try:
        buckets = [f"pool-{i}" for i in range(8)]
        for b in buckets:
            await store.create_bucket(Bucket(b, "root", "us-east-1", 0.0))
        assert len({HashRing(4).bucket_shard(b) for b in buckets}) > 1

        async def put(n: int) -> None:
            ids = [os.urandom(32) for _ in range(12)]  # on every shard
            version = ObjectVersion(
                buckets[n % 8], f"k{n}", "null", 12, "e", 0.0, Manifest(tuple(ids), (1,) * 12)
            )
            await store.put_object(version, StagedData([_pack(f"pp{n}")], _rows(f"pp{n}", ids)))

        await asyncio.wait_for(asyncio.gather(*(put(n) for n in range(48))), timeout=60)
        stats = await store.storage_stats()
        assert (stats.objects, stats.chunks, stats.packs) == (48, 48 * 12, 48)
    finally:
        await store.close()
