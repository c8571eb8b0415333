"""What only the sharded PostgreSQL store has: versioned migrations (``strata db migrate``,
the check at open), the shard identity of each database, placement of buckets, chunks and
packs on their shards, and an outbox that never lets a late commit fall behind a reader."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable

import asyncpg
import pytest
from support.postgres import reset_databases, run_async
from support.server import REPO_ROOT

from gateway.config import MetaConfig
from gateway.meta import pg_migrations
from gateway.meta.models import Bucket, StagedData
from gateway.meta.pg_migrations import SCHEMA_VERSION, SchemaError
from gateway.meta.postgres import PostgresMetadataStore
from gateway.meta.shards import HashRing
from gateway.s3.errors import S3Error

from .test_metadata_store import _staged, _version

Databases = Callable[[int], tuple[str, ...]]
ALL_VERSIONS = [m.version for m in pg_migrations.MIGRATIONS]


def _config(dsns: tuple[str, ...]) -> MetaConfig:
    return MetaConfig(dsns=dsns, pool_min=1, pool_max=4, command_timeout=10.0)


async def _open(dsns: tuple[str, ...]) -> PostgresMetadataStore:
    store = PostgresMetadataStore(_config(dsns))
    await store.open()
    return store


async def _rows(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def _strata(*args: str, dsns: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STRATA_META_DSNS": ",".join(dsns)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_open_refuses_unmigrated_shards_until_migrate(pg_databases: Databases) -> None:
    dsns = pg_databases(3)
    with pytest.raises(SchemaError) as err:
        await _open(dsns)
    assert str(err.value) == (
        f"metadata schema on shard 0 is at version 0; this Strata needs {SCHEMA_VERSION}: "
        "run `strata db migrate`"
    )
    # Only the first shard migrated: the message names the next one.
    conn = await asyncpg.connect(dsns[0])
    try:
        assert await pg_migrations.migrate_shard(conn, 0, 3) == ALL_VERSIONS
    finally:
        await conn.close()
    with pytest.raises(SchemaError, match=r"shard 1 is at version 0; .* run `strata db migrate`"):
        await _open(dsns)
    assert await pg_migrations.migrate(_config(dsns)) == [[], ALL_VERSIONS, ALL_VERSIONS]
    assert await pg_migrations.migrate(_config(dsns)) == [[], [], []]  # a second run is a no-op
    store = await _open(dsns)
    try:
        assert await store.create_bucket(Bucket("b", "root", "us-east-1", 0.0))
    finally:
        await store.close()


async def test_open_refuses_a_newer_schema(pg_databases: Databases) -> None:
    dsns = pg_databases(1)
    await pg_migrations.migrate(_config(dsns))
    await _rows(dsns[0], "UPDATE strata_schema SET version = version + 1 RETURNING version")
    with pytest.raises(SchemaError, match="newer than this Strata"):
        await _open(dsns)
    with pytest.raises(SchemaError, match="newer than this Strata"):
        await pg_migrations.migrate(_config(dsns))


async def test_reordered_or_resized_shard_lists_are_refused(pg_databases: Databases) -> None:
    dsns = pg_databases(2)
    await pg_migrations.migrate(_config(dsns))
    with pytest.raises(SchemaError, match=r"shard 0 was set up as shard 1: meta\.dsns must list"):
        await _open((dsns[1], dsns[0]))
    with pytest.raises(SchemaError, match=r"deployment of 2 shards, meta\.dsns lists 1"):
        await _open(dsns[:1])
    with pytest.raises(SchemaError, match="set up as shard 1"):
        await pg_migrations.migrate(_config((dsns[1], dsns[0])))


def test_db_migrate_and_status_commands(pg_databases: Databases) -> None:
    dsns = pg_databases(2)
    before = _strata("db", "status", dsns=dsns)
    assert before.returncode == 1
    assert f"shard 0 (catalog+data): schema version 0 (needs {SCHEMA_VERSION}), buckets ?" in before.stdout
    first = _strata("db", "migrate", dsns=dsns)
    assert first.returncode == 0, first.stderr
    applied = ", ".join(map(str, ALL_VERSIONS))
    assert first.stdout.splitlines() == [
        f"shard {i}: applied {applied} (schema version {SCHEMA_VERSION})" for i in range(2)
    ]
    again = _strata("db", "migrate", dsns=dsns)
    assert again.stdout.splitlines() == [
        f"shard {i}: already up to date (schema version {SCHEMA_VERSION})" for i in range(2)
    ]

    async def make_buckets() -> list[int]:
        store = await _open(dsns)
        try:
            for i in range(10):
                await store.create_bucket(Bucket(f"b{i}", "root", "us-east-1", 0.0))
        finally:
            await store.close()
        return [HashRing(2).bucket_shard(f"b{i}") for i in range(10)]

    shards = run_async(make_buckets())
    after = _strata("db", "status", dsns=dsns)
    assert after.returncode == 0, after.stderr
    assert after.stdout.splitlines() == [
        f"shard 0 (catalog+data): schema version {SCHEMA_VERSION} (up to date), buckets {shards.count(0)}",
        f"shard 1 (data): schema version {SCHEMA_VERSION} (up to date), buckets {shards.count(1)}",
    ]
    unreachable = _strata("db", "migrate", dsns=("postgresql://postgres@127.0.0.1:1/none",))
    assert unreachable.returncode == 1 and "strata db migrate:" in unreachable.stderr


async def test_serve_refuses_to_start_on_an_unmigrated_store(pg_databases: Databases, tmp_path) -> None:
    dsns = pg_databases(1)
    env = {**os.environ, "STRATA_META_DSNS": dsns[0]}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "1", "--data-dir", str(tmp_path / "d")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "run `strata db migrate`" in proc.stderr


async def test_rows_live_on_their_shards(pg4_dsns: tuple[str, ...]) -> None:
    reset_databases(pg4_dsns)
    ring = HashRing(4)
    store = await _open(pg4_dsns)
    try:
        names = [f"place-{i}" for i in range(24)]
        for name in names:
            assert await store.create_bucket(Bucket(name, "root", "us-east-1", 0.0))
            await store.put_object(_version("k", bucket=name), StagedData([], []))
        catalog = {r["name"]: r["shard"] for r in await _rows(pg4_dsns[0], "SELECT name, shard FROM buckets")}
        assert catalog == {n: ring.bucket_shard(n) for n in names}
        assert set(catalog.values()) == {0, 1, 2, 3}  # 24 buckets reach every shard
        for shard, dsn in enumerate(pg4_dsns):
            here = {r["bucket"] for r in await _rows(dsn, "SELECT bucket FROM objects")}
            homes = {r["name"] for r in await _rows(dsn, "SELECT name FROM bucket_homes")}
            assert here == homes == {n for n in names if catalog[n] == shard}
        staged = [_staged(i, f"pack-{i}") for i in range(40)]
        for i, (_cid, st) in enumerate(staged):
            await store.put_object(_version(f"o{i}", bucket="place-0"), st)
        for shard, dsn in enumerate(pg4_dsns):
            chunks = {bytes(r[0]) for r in await _rows(dsn, "SELECT chunk_id FROM chunks")}
            packs = {r[0] for r in await _rows(dsn, "SELECT pack_id FROM packs")}
            assert chunks == {c for c, _ in staged if ring.chunk_shard(c) == shard}
            assert packs == {f"pack-{i}" for i in range(40) if ring.pack_shard(f"pack-{i}") == shard}
    finally:
        await store.close()


async def test_a_bucket_without_its_home_row_takes_no_writes_until_deleted(pg4_dsns: tuple[str, ...]) -> None:
    """The state a crash inside delete_bucket leaves (catalog row, no home row) is safe and
    a retried DeleteBucket completes it."""
    reset_databases(pg4_dsns)
    store = await _open(pg4_dsns)
    try:
        assert await store.create_bucket(Bucket("half", "root", "us-east-1", 0.0))
        shard = HashRing(4).bucket_shard("half")
        await _rows(pg4_dsns[shard], "DELETE FROM bucket_homes WHERE name = 'half' RETURNING name")
        with pytest.raises(S3Error) as err:
            await store.put_object(_version("k", bucket="half"), StagedData([], []))
        assert err.value.code == "NoSuchBucket"
        assert not await store.create_bucket(Bucket("half", "other", "us-east-1", 0.0))
        await store.delete_bucket("half")
        assert await store.get_bucket("half") is None
        assert await store.create_bucket(Bucket("half", "other", "us-east-1", 0.0))
        await store.put_object(_version("k", bucket="half"), StagedData([], []))
    finally:
        await store.close()


async def test_outbox_never_skips_a_transaction_that_commits_late(pg4_dsns: tuple[str, ...]) -> None:
    """A writer that took its outbox row first but commits last is still delivered before
    anything after it: readers only see rows whose transactions are all finished."""
    reset_databases(pg4_dsns)
    store = await _open(pg4_dsns)
    try:
        assert await store.create_bucket(Bucket("ev", "root", "us-east-1", 0.0))
        shard = HashRing(4).bucket_shard("ev")
        slow = await asyncpg.connect(pg4_dsns[shard])
        try:
            tx = slow.transaction()
            await tx.start()
            await slow.execute('INSERT INTO outbox (created, event) VALUES (0, \'{"eventName": "slow"}\')')
            await store.put_object(_version("fast", bucket="ev"), StagedData([], []))
            assert await store.read_outbox(0, 100, shard) == []  # the slow writer may still commit
            await tx.commit()
        finally:
            await slow.close()
        events = await store.read_outbox(0, 100, shard)
        assert [e.body["eventName"] for e in events] == ["slow", "ObjectCreated:Put"]
        assert [e.seq for e in events] == [1, 2]
        assert await store.read_outbox(2, 100, shard) == []
        with pytest.raises(ValueError):
            await store.read_outbox(0, 1, 4)
    finally:
        await store.close()


async def test_db_migrate_upgrades_a_store_created_at_version_1(pg_databases: Databases) -> None:
    """A deployment created by the previous Strata (schema version 1), with data in it:
    ``strata db migrate`` applies only version 2 and gc and key jobs then work on that data."""
    dsns = pg_databases(2)
    assert await pg_migrations.migrate(_config(dsns), target=1) == [[1], [1]]
    ring = HashRing(2)
    cid = bytes(range(32))
    await _rows(
        dsns[ring.pack_shard("old-pack")],
        "INSERT INTO packs (pack_id, kek_id, kek_version, wrapped_dek, size, created) "
        "VALUES ('old-pack', 'local', 1, '\\x00', 500, 1.0) RETURNING pack_id",
    )
    await _rows(
        dsns[ring.chunk_shard(cid)],
        "INSERT INTO chunks (chunk_id, pack_id, pack_offset, length, plain_len, flags, created) "
        "VALUES ($1, 'old-pack', 10, 50, 40, 1, 1.0) RETURNING chunk_id",
        cid,
    )
    with pytest.raises(SchemaError, match=f"version 1; this Strata needs {SCHEMA_VERSION}"):
        await _open(dsns)
    done = await asyncio.to_thread(_strata, "db", "migrate", dsns=dsns)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"shard {i}: applied {', '.join(map(str, ALL_VERSIONS[1:]))} (schema version {SCHEMA_VERSION})"
        for i in range(2)
    ]
    store = await _open(dsns)
    try:
        (usage,) = await store.scan_pack_usage(None, 10)
        assert (usage.pack.pack_id, usage.retired_at, usage.live_chunks, usage.live_bytes) == (
            "old-pack", None, 1, 50,
        )  # fmt: skip
        assert [c.chunk_id for c in await store.scan_chunks(None, 10)] == [cid]
        assert await store.get_job("keys-rotate") is None
        assert await store.create_bucket(Bucket("b", "root", "us-east-1", 0.0))
        await store.put_object(_version("k", bucket="b"), StagedData([], []))  # manifest-free
        cid2, staged = _staged(9, "new-pack")  # the commit's claim uses migration 2's functions
        await store.put_object(_version("k2", bucket="b"), staged)
        assert set(await store.lookup_chunks([cid, cid2])) == {cid, cid2}
        assert await store.condemn_chunks([cid], 5.0) == 1
        assert await store.sweep_chunks([cid], 6.0) == (1, 50)
        assert await store.retire_packs(["old-pack"], 7.0) == ["old-pack"]
        assert [p.pack_id for p in await store.delete_retired_packs(8.0, 10)] == ["old-pack"]
    finally:
        await store.close()
