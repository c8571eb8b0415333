"""Sharded PostgreSQL implementation of the metadata store (the production profile).

Layout. ``meta.dsns`` lists N databases, shards 0..N-1; shard 0 also holds the catalog:
users, access keys, and the explicit bucket -> shard map (``buckets.shard``). A new bucket is
placed by consistent hashing (:mod:`gateway.meta.shards`) and the catalog records the answer.
Everything of one bucket (versions, uploads, parts, configs, its outbox events, and its
*home row*, the shard-local proof that the bucket exists) lives on the bucket's shard. Chunk
index rows live on the shard of their chunk id, pack records on the shard of their pack id.
Each shard has its own asyncpg pool (``pool_min``/``pool_max``, ``command_timeout``) with the
prepared-statement cache on.

No request needs a cross-shard transaction. Each write touches one shard per step, in an
order that keeps every intermediate state safe:

* ``put_object`` / ``put_part``: resolve the bucket (or upload) first, so a missing one
  indexes nothing; then insert the pack records on their shards, then the chunk rows on
  theirs (one idempotent ``INSERT ... ON CONFLICT DO NOTHING`` statement per shard, so a
  chunk row is never visible before its pack record); then commit the version (or part) on
  the bucket's shard. A failure after the index steps leaves index rows that no manifest
  references: harmless (a later upload may even dedup against them, their packs are durable)
  and reclaimed by GC after its grace period.
* ``create_bucket``: insert the home row on the ring's shard, then (while that shard
  transaction holds the bucket's lock) the catalog row. A crash in between leaves an orphan
  home row, which nothing routes to and a later create reuses.
* ``delete_bucket``: on the bucket's shard, under the bucket's exclusive lock, refuse if any
  version exists, else drop uploads, parts, configs and the home row; then drop the catalog
  row. A crash in between leaves a catalog row without home: the bucket lists but takes no
  writes (NoSuchBucket) until DeleteBucket is retried, which completes.

Concurrency across processes. Every write transaction on a bucket's shard first takes the
bucket's advisory lock in shared mode (``delete_bucket`` takes it exclusively, so a bucket
cannot vanish under a commit), then checks the home row. Writers of one (bucket, key) also
take the key's exclusive advisory lock before reading anything, so the latest flag and the
per-key ``seq`` are computed from committed state and a :class:`WriteCondition` is checked
atomically: of racing ``If-None-Match: *`` writers exactly one wins, in any process.

Outbox. Each shard has its own outbox; writers append rows stamped with their transaction
id. ``read_outbox`` first assigns the public ``seq`` (under a per-shard sequencer lock, from
the high-water mark in ``outbox_sequencer``) to the rows of transactions older than every
running one, in (transaction id, row) order, so a row can never appear behind a position a
reader already passed, which a plain ``bigserial`` allows (a transaction holding a lower
serial can commit later). Readers see only sequenced rows, in ``seq`` order. One key's
writers hold its lock until commit, so its events are sequenced in commit order. The relay's
cursor and lease live on the same shard (``relay_state``; lease expiry by the database
clock). The audit log and its outbox rows live on the catalog shard.

Adding a method: use :meth:`_bucket_shard` / :meth:`_bucket_tx` for "on the bucket's shard",
:meth:`_pool` / :meth:`_tx` for a given shard, and :meth:`_each_shard` for "on every shard".
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import asyncpg

from crypto.kek import WrappedKey
from dedup.manifest import Manifest
from dedup.pack import ChunkLocation
from gateway.config import MetaConfig
from gateway.events import OutboxEvent
from gateway.meta.keyorder import prefix_successor
from gateway.meta.models import (
    NULL_VERSION,
    AccessKey,
    AuditRecord,
    Bucket,
    DeleteOutcome,
    ListedObject,
    MultipartUpload,
    NewChunk,
    ObjectVersion,
    PackRecord,
    Part,
    PoolUsage,
    StagedData,
    User,
    WriteCondition,
)
from gateway.meta.pg_migrations import check_schema, read_schema
from gateway.meta.shards import HashRing, advisory_key
from gateway.meta.sqlite import outbox_event
from gateway.meta.store import StorageStats
from gateway.s3.errors import S3Error

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

STATEMENT_CACHE_SIZE = 512  # prepared statements kept per connection
ROUTE_CACHE_ENTRIES = 100_000  # bucket -> shard and upload -> shard entries kept per process
OUTBOX_SEQUENCE_BATCH = 10_000
_SEQUENCER_LOCK = advisory_key("outbox-sequencer")

_OBJECT_COLS = (
    "bucket, key, version_id, size, etag, last_modified, manifest, content_type, headers, "
    "user_meta, checksum, parts, storage_class, delete_marker, tags"
)
_UPLOAD_COLS = (
    "upload_id, bucket, key, initiated, owner, content_type, headers, user_meta, "
    "checksum_algorithm, checksum_type, tags"
)
_PART_COLS = "part_number, size, etag, last_modified, manifest, checksum"


class _Lru(Generic[K, V]):
    """A bounded mapping that forgets the least recently used entry."""

    def __init__(self, max_entries: int) -> None:
        self._data: collections.OrderedDict[K, V] = collections.OrderedDict()
        self._max = max_entries

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self._max:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)


class _Query:
    """SQL text plus its positional parameters, numbered as they are added."""

    def __init__(self, sql: str, *args: Any) -> None:
        self.sql = sql
        self.args = list(args)

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def key_in_prefix(self, prefix: str) -> None:
        """Restrict ``key`` to keys starting with ``prefix`` as an index range."""
        self.sql += f" AND key >= {self.arg(prefix)}"
        upper = prefix_successor(prefix)
        if upper is not None:
            self.sql += f" AND key < {self.arg(upper)}"


def _count(status: str) -> int:
    """Rows affected, from a command status such as ``UPDATE 3`` or ``INSERT 0 1``."""
    return int(status.rsplit(" ", 1)[-1])


def _version_args(v: ObjectVersion) -> tuple[Any, ...]:
    return (
        v.bucket, v.key, v.version_id, v.size, v.etag, v.last_modified, v.manifest.encode(),
        v.content_type, json.dumps(v.headers), json.dumps(v.user_meta), json.dumps(v.checksum),
        v.parts, v.storage_class, v.delete_marker, json.dumps(v.tags),
    )  # fmt: skip


def _version(r: asyncpg.Record) -> ObjectVersion:
    return ObjectVersion(
        bucket=r["bucket"],
        key=r["key"],
        version_id=r["version_id"],
        size=r["size"],
        etag=r["etag"],
        last_modified=r["last_modified"],
        manifest=Manifest.decode(r["manifest"]),
        content_type=r["content_type"],
        headers=json.loads(r["headers"]),
        user_meta=json.loads(r["user_meta"]),
        checksum=json.loads(r["checksum"]),
        parts=r["parts"],
        storage_class=r["storage_class"],
        delete_marker=r["delete_marker"],
        tags=json.loads(r["tags"]),
        is_latest=r["latest"],
    )


def _upload(r: asyncpg.Record) -> MultipartUpload:
    return MultipartUpload(
        r["upload_id"], r["bucket"], r["key"], r["initiated"], r["owner"], r["content_type"],
        json.loads(r["headers"]), json.loads(r["user_meta"]), r["checksum_algorithm"],
        r["checksum_type"], json.loads(r["tags"]),
    )  # fmt: skip


def _part(r: asyncpg.Record) -> Part:
    return Part(
        r["part_number"], r["size"], r["etag"], r["last_modified"], Manifest.decode(r["manifest"]),
        json.loads(r["checksum"]),
    )  # fmt: skip


def _group(items: Iterable[T], shard_of: Callable[[T], int]) -> dict[int, list[T]]:
    groups: dict[int, list[T]] = {}
    for item in items:
        groups.setdefault(shard_of(item), []).append(item)
    return groups


class PostgresMetadataStore:
    """The metadata store on N PostgreSQL shards (see the module docstring)."""

    def __init__(self, config: MetaConfig) -> None:
        if not config.dsns:
            raise ValueError("the PostgreSQL metadata store needs at least one DSN (meta.dsns)")
        self._config = config
        self._ring = HashRing(len(config.dsns))
        self._pools: list[asyncpg.Pool] = []
        self._bucket_shards: _Lru[str, int] = _Lru(ROUTE_CACHE_ENTRIES)
        self._upload_shards: _Lru[str, int] = _Lru(ROUTE_CACHE_ENTRIES)

    @property
    def shards(self) -> int:
        return len(self._config.dsns)

    @property
    def ring(self) -> HashRing:
        return self._ring

    # -- plumbing -----------------------------------------------------------------------
    async def open(self) -> None:
        """Connect a pool per shard and check every shard's schema (never migrates)."""
        c = self._config
        opened = await asyncio.gather(
            *(
                asyncpg.create_pool(
                    dsn,
                    min_size=min(c.pool_min, c.pool_max),
                    max_size=c.pool_max,
                    command_timeout=c.command_timeout,
                    timeout=c.command_timeout,
                    statement_cache_size=STATEMENT_CACHE_SIZE,
                    server_settings={"application_name": "strata"},
                )
                for dsn in c.dsns
            ),
            return_exceptions=True,
        )
        self._pools = [p for p in opened if isinstance(p, asyncpg.Pool)]
        failed = [(i, e) for i, e in enumerate(opened) if isinstance(e, BaseException)]
        try:
            if failed:
                shard, exc = failed[0]
                raise ConnectionError(f"metadata shard {shard} is unreachable: {exc}") from exc
            await self._each_shard(self._check_schema)
        except BaseException:
            await self.close()
            raise

    async def _check_schema(self, conn: asyncpg.Connection, shard: int) -> None:
        check_schema(await read_schema(conn), shard, self.shards)

    async def close(self) -> None:
        pools, self._pools = self._pools, []
        await asyncio.gather(*(p.close() for p in pools), return_exceptions=True)

    def _pool(self, shard: int) -> asyncpg.Pool:
        return self._pools[shard]

    @property
    def _catalog(self) -> asyncpg.Pool:
        return self._pools[0]

    @asynccontextmanager
    async def _tx(self, shard: int) -> AsyncIterator[asyncpg.Connection]:
        """A connection of ``shard`` inside a transaction (committed when the block exits)."""
        async with self._pool(shard).acquire() as conn, conn.transaction():
            yield conn

    async def _each_shard(self, fn: Callable[[asyncpg.Connection, int], Awaitable[T]]) -> list[T]:
        """Run ``fn(conn, shard)`` on every shard concurrently; results in shard order. Every
        call finishes before this returns; if any failed, the lowest shard's error is raised."""

        async def one(shard: int) -> T:
            async with self._pool(shard).acquire() as conn:
                return await fn(conn, shard)

        results = await asyncio.gather(*(one(s) for s in range(self.shards)), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results  # type: ignore[return-value]

    async def _bucket_shard(self, bucket: str) -> int | None:
        """The bucket's shard from the catalog (remembered per process), None if no bucket."""
        shard = self._bucket_shards.get(bucket)
        if shard is None:
            shard = await self._catalog.fetchval("SELECT shard FROM buckets WHERE name = $1", bucket)
            if shard is not None:
                self._bucket_shards.put(bucket, shard)
        return shard

    @asynccontextmanager
    async def _bucket_tx(self, bucket: str, key: str | None = None) -> AsyncIterator[asyncpg.Connection]:
        """A write transaction on ``bucket``'s shard holding the bucket's shared lock and,
        given ``key``, the key's writer lock; raises NoSuchBucket when the bucket is gone."""
        shard = await self._bucket_shard(bucket)
        if shard is None:
            raise S3Error("NoSuchBucket", BucketName=bucket)
        async with self._tx(shard) as conn:
            if key is None:
                await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", advisory_key("bucket", bucket))
            else:
                await conn.execute(
                    "SELECT pg_advisory_xact_lock_shared($1), pg_advisory_xact_lock($2)",
                    advisory_key("bucket", bucket),
                    advisory_key("object", bucket, key),
                )
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM bucket_homes WHERE name = $1)", bucket):
                self._bucket_shards.pop(bucket)
                raise S3Error("NoSuchBucket", BucketName=bucket)
            yield conn

    async def _upload_shard(self, upload_id: str) -> int | None:
        """The shard holding ``upload_id`` (remembered per process, else asked of every shard)."""
        shard = self._upload_shards.get(upload_id)
        if shard is None:
            found = await self._each_shard(
                lambda c, s: c.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM uploads WHERE upload_id = $1)", upload_id
                )
            )
            shard = next((s for s, hit in enumerate(found) if hit), None)
            if shard is not None:
                self._upload_shards.put(upload_id, shard)
        return shard

    # -- users and keys (catalog) -------------------------------------------------------
    async def create_user(self, name: str, wrapped_dedup_key: WrappedKey) -> User:
        w = wrapped_dedup_key
        await self._catalog.execute(
            "INSERT INTO users (name, kek_id, kek_version, dedup_key, created) VALUES ($1, $2, $3, $4, $5)",
            name, w.kek_id, w.kek_version, w.blob, time.time(),
        )  # fmt: skip
        return User(name, wrapped_dedup_key)

    async def get_user(self, name: str) -> User | None:
        r = await self._catalog.fetchrow(
            "SELECT kek_id, kek_version, dedup_key FROM users WHERE name = $1", name
        )
        return None if r is None else User(name, WrappedKey(r[0], r[1], r[2]))

    async def put_access_key(self, key: AccessKey) -> None:
        w = key.wrapped_secret
        await self._catalog.execute(
            "INSERT INTO access_keys (access_key, user_name, kek_id, kek_version, secret, created) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (access_key) DO UPDATE SET "
            "user_name = EXCLUDED.user_name, kek_id = EXCLUDED.kek_id, kek_version = EXCLUDED.kek_version, "
            "secret = EXCLUDED.secret, created = EXCLUDED.created",
            key.access_key, key.user, w.kek_id, w.kek_version, w.blob, time.time(),
        )  # fmt: skip

    async def get_access_key(self, access_key: str) -> AccessKey | None:
        r = await self._catalog.fetchrow(
            "SELECT user_name, kek_id, kek_version, secret FROM access_keys WHERE access_key = $1", access_key
        )
        return None if r is None else AccessKey(access_key, r[0], WrappedKey(r[1], r[2], r[3]))

    async def has_access_key_for(self, user: str) -> bool:
        return bool(
            await self._catalog.fetchval(
                "SELECT EXISTS (SELECT 1 FROM access_keys WHERE user_name = $1)", user
            )
        )

    # -- buckets ------------------------------------------------------------------------
    async def create_bucket(self, bucket: Bucket) -> bool:
        shard = self._ring.bucket_shard(bucket.name)
        async with self._tx(shard) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", advisory_key("bucket", bucket.name))
            await conn.execute(
                "INSERT INTO bucket_homes (name, created) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                bucket.name,
                bucket.created,
            )
            catalog: asyncpg.Connection | asyncpg.Pool = conn if shard == 0 else self._catalog
            placed = await catalog.fetchval(
                "INSERT INTO buckets (name, owner, region, created, shard) VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT DO NOTHING RETURNING shard",
                bucket.name, bucket.owner, bucket.region, bucket.created, shard,
            )  # fmt: skip
        if placed is None:
            return False
        self._bucket_shards.put(bucket.name, placed)
        return True

    async def get_bucket(self, name: str) -> Bucket | None:
        r = await self._catalog.fetchrow(
            "SELECT owner, region, created, shard FROM buckets WHERE name = $1", name
        )
        if r is None:
            return None
        self._bucket_shards.put(name, r["shard"])
        return Bucket(name, r["owner"], r["region"], r["created"])

    async def list_buckets(self, owner: str) -> list[Bucket]:
        rows = await self._catalog.fetch(
            "SELECT name, owner, region, created FROM buckets WHERE owner = $1 ORDER BY name", owner
        )
        return [Bucket(*r) for r in rows]

    async def delete_bucket(self, name: str) -> None:
        shard = await self._bucket_shard(name)
        if shard is None:
            return
        async with self._tx(shard) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", advisory_key("bucket", name))
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM objects WHERE bucket = $1)", name):
                raise S3Error("BucketNotEmpty", BucketName=name)
            await conn.execute(
                "DELETE FROM parts WHERE upload_id IN (SELECT upload_id FROM uploads WHERE bucket = $1)", name
            )
            await conn.execute("DELETE FROM uploads WHERE bucket = $1", name)
            await conn.execute("DELETE FROM bucket_configs WHERE bucket = $1", name)
            await conn.execute("DELETE FROM bucket_homes WHERE name = $1", name)
        await self._catalog.execute("DELETE FROM buckets WHERE name = $1", name)
        self._bucket_shards.pop(name)

    async def put_bucket_config(self, bucket: str, name: str, body: str | None) -> None:
        async with self._bucket_tx(bucket) as conn:
            if body is None:
                await conn.execute("DELETE FROM bucket_configs WHERE bucket = $1 AND name = $2", bucket, name)
            else:
                await conn.execute(
                    "INSERT INTO bucket_configs (bucket, name, body) VALUES ($1, $2, $3) "
                    "ON CONFLICT (bucket, name) DO UPDATE SET body = EXCLUDED.body",
                    bucket,
                    name,
                    body,
                )

    async def get_bucket_config(self, bucket: str, name: str) -> str | None:
        shard = await self._bucket_shard(bucket)
        if shard is None:
            return None
        return await self._pool(shard).fetchval(
            "SELECT body FROM bucket_configs WHERE bucket = $1 AND name = $2", bucket, name
        )

    # -- chunk index and packs ----------------------------------------------------------
    async def _insert(self, shard: int, sql: str, *args: Any) -> int:
        return _count(await self._pool(shard).execute(sql, *args))

    async def restore_index(self, staged: StagedData) -> tuple[int, int]:
        return await self._index(staged)

    async def _index(self, staged: StagedData) -> tuple[int, int]:
        """Index ``staged`` on the shards that own its rows: every pack record first, then the
        chunk rows (which name those packs); one idempotent statement per shard. Returns how
        many pack and chunk rows were new."""
        packs = _group(
            sorted(staged.packs, key=lambda p: p.pack_id), lambda p: self._ring.pack_shard(p.pack_id)
        )
        chunks = _group(
            sorted(staged.chunks, key=lambda n: n.chunk_id), lambda n: self._ring.chunk_shard(n.chunk_id)
        )
        now = time.time()
        added_packs = await asyncio.gather(*(self._insert_packs(s, rows, now) for s, rows in packs.items()))
        added_chunks = await asyncio.gather(
            *(self._insert_chunks(s, rows, now) for s, rows in chunks.items())
        )
        return sum(added_packs), sum(added_chunks)

    async def _insert_packs(self, shard: int, packs: list[PackRecord], now: float) -> int:
        return await self._insert(
            shard,
            "INSERT INTO packs (pack_id, kek_id, kek_version, wrapped_dek, size, created) "
            "SELECT *, $6 FROM unnest($1::text[], $2::text[], $3::int[], $4::bytea[], $5::bigint[]) "
            "ON CONFLICT DO NOTHING",
            [p.pack_id for p in packs],
            [p.wrapped_dek.kek_id for p in packs],
            [p.wrapped_dek.kek_version for p in packs],
            [p.wrapped_dek.blob for p in packs],
            [p.size for p in packs],
            now,
        )

    async def _insert_chunks(self, shard: int, chunks: list[NewChunk], now: float) -> int:
        locs = [n.location for n in chunks]
        return await self._insert(
            shard,
            "INSERT INTO chunks (chunk_id, pack_id, pack_offset, length, plain_len, flags, created) "
            "SELECT *, $7 FROM unnest($1::bytea[], $2::text[], $3::bigint[], $4::int[], $5::int[], "
            "$6::int[]) "
            "ON CONFLICT DO NOTHING",
            [n.chunk_id for n in chunks],
            [loc.pack_id for loc in locs],
            [loc.offset for loc in locs],
            [loc.length for loc in locs],
            [loc.plain_len for loc in locs],
            [loc.flags for loc in locs],
            now,
        )

    async def lookup_chunks(
        self, chunk_ids: list[bytes], *, live_only: bool = False
    ) -> dict[bytes, ChunkLocation]:
        """Where each known chunk is; ``live_only`` (dedup lookups) leaves out condemned ones."""
        by_shard = _group(set(chunk_ids), self._ring.chunk_shard)
        live = " AND condemned_at IS NULL" if live_only else ""

        async def one(shard: int, ids: list[bytes]) -> list[asyncpg.Record]:
            return await self._pool(shard).fetch(
                "SELECT chunk_id, pack_id, pack_offset, length, plain_len, flags FROM chunks "
                f"WHERE chunk_id = ANY($1::bytea[]){live}",
                ids,
            )

        found: dict[bytes, ChunkLocation] = {}
        for rows in await asyncio.gather(*(one(s, ids) for s, ids in by_shard.items())):
            for r in rows:
                found[r[0]] = ChunkLocation(r[1], r[2], r[3], r[4], r[5])
        return found

    async def get_pack(self, pack_id: str) -> PackRecord | None:
        r = await self._pool(self._ring.pack_shard(pack_id)).fetchrow(
            "SELECT kek_id, kek_version, wrapped_dek, size FROM packs WHERE pack_id = $1", pack_id
        )
        return None if r is None else PackRecord(pack_id, WrappedKey(r[0], r[1], r[2]), r[3])

    # -- objects ------------------------------------------------------------------------
    @staticmethod
    async def _outbox(conn: asyncpg.Connection, event: str) -> None:
        await conn.execute("INSERT INTO outbox (created, event) VALUES ($1, $2)", time.time(), event)

    @classmethod
    async def _put_version(
        cls, conn: asyncpg.Connection, v: ObjectVersion, event: str, condition: WriteCondition | None = None
    ) -> None:
        """Make ``v`` the key's latest version (inside :meth:`_bucket_tx` with the key's lock);
        a "null" version replaces the previous null one."""
        if condition is not None:
            latest = await conn.fetchrow(
                "SELECT etag, delete_marker FROM objects WHERE bucket = $1 AND key = $2 AND latest",
                v.bucket,
                v.key,
            )
            condition.check(None if latest is None or latest["delete_marker"] else latest["etag"])
        # One statement drops the replaced null version, demotes the latest one, and reads
        # the next seq (from the statement's snapshot, stable under the key's lock).
        seq = await conn.fetchval(
            "WITH dropped AS (DELETE FROM objects WHERE bucket = $1 AND key = $2"
            " AND version_id = 'null' AND $3),"
            " demoted AS (UPDATE objects SET latest = false WHERE bucket = $1 AND key = $2 AND latest"
            " AND NOT ($3 AND version_id = 'null'))"
            " SELECT COALESCE(MAX(seq), 0) + 1 FROM objects WHERE bucket = $1 AND key = $2",
            v.bucket,
            v.key,
            v.version_id == NULL_VERSION,
        )
        await conn.execute(
            f"INSERT INTO objects ({_OBJECT_COLS}, seq, latest) VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, true)",
            *_version_args(v),
            seq,
        )
        detail = {} if v.delete_marker else {"size": v.size, "eTag": v.etag}
        await cls._outbox(conn, outbox_event(event, v.bucket, v.key, versionId=v.version_id, **detail))

    async def put_object(
        self,
        version: ObjectVersion,
        staged: StagedData,
        event: str = "ObjectCreated:Put",
        condition: WriteCondition | None = None,
    ) -> None:
        if await self._bucket_shard(version.bucket) is None:
            raise S3Error("NoSuchBucket", BucketName=version.bucket)
        await self._index(staged)
        async with self._bucket_tx(version.bucket, version.key) as conn:
            await self._put_version(conn, version, event, condition)

    async def get_object(self, bucket: str, key: str, version_id: str | None = None) -> ObjectVersion | None:
        shard = await self._bucket_shard(bucket)
        if shard is None:
            return None
        select = f"SELECT {_OBJECT_COLS}, latest FROM objects WHERE bucket = $1 AND key = $2"
        if version_id is None:
            r = await self._pool(shard).fetchrow(select + " AND latest", bucket, key)
        else:
            r = await self._pool(shard).fetchrow(select + " AND version_id = $3", bucket, key, version_id)
        return None if r is None else _version(r)

    async def delete_object(
        self, bucket: str, key: str, version_id: str | None = None, marker: ObjectVersion | None = None
    ) -> DeleteOutcome:
        """Delete one version (``version_id``), or the key's current state: with ``marker`` a
        delete marker becomes the latest version (versioned buckets), without it the null
        version is removed (unversioned buckets)."""
        if version_id is None and marker is not None:
            async with self._bucket_tx(bucket, key) as conn:
                await self._put_version(conn, marker, "ObjectRemoved:DeleteMarkerCreated")
            return DeleteOutcome(marker.version_id, True, True)
        if await self._bucket_shard(bucket) is None:
            return DeleteOutcome(version_id, False, False)
        target = NULL_VERSION if version_id is None else version_id
        async with self._bucket_tx(bucket, key) as conn:
            gone = await conn.fetchrow(
                "DELETE FROM objects WHERE bucket = $1 AND key = $2 AND version_id = $3 "
                "RETURNING delete_marker, latest",
                bucket,
                key,
                target,
            )
            if gone is None:
                return DeleteOutcome(version_id, False, False)
            if gone["latest"]:  # the next most recent version becomes latest
                await conn.execute(
                    "UPDATE objects SET latest = true WHERE bucket = $1 AND key = $2 AND seq = "
                    "(SELECT MAX(seq) FROM objects WHERE bucket = $1 AND key = $2)",
                    bucket,
                    key,
                )
            await self._outbox(conn, outbox_event("ObjectRemoved:Delete", bucket, key, versionId=target))
        return DeleteOutcome(version_id, gone["delete_marker"], True)

    async def set_object_tags(
        self, bucket: str, key: str, version_id: str | None, tags: dict[str, str]
    ) -> bool:
        if await self._bucket_shard(bucket) is None:
            return False
        q = _Query(
            "UPDATE objects SET tags = $1 WHERE bucket = $2 AND key = $3", json.dumps(tags), bucket, key
        )
        q.sql += (
            " AND latest AND NOT delete_marker"
            if version_id is None
            else f" AND version_id = {q.arg(version_id)}"
        )
        async with self._bucket_tx(bucket, key) as conn:
            return _count(await conn.execute(q.sql, *q.args)) > 0

    async def list_versions(
        self, bucket: str, prefix: str, key: str, inclusive: bool, version_marker: str, limit: int
    ) -> list[ObjectVersion]:
        """Every version and delete marker, by key, newest first, after (key, version_marker)."""
        shard = await self._bucket_shard(bucket)
        if shard is None:
            return []
        q = _Query(f"SELECT {_OBJECT_COLS}, latest FROM objects WHERE bucket = $1", bucket)
        q.key_in_prefix(prefix)
        if inclusive:
            q.sql += f" AND key >= {q.arg(key)}"
        elif key and version_marker:
            k, b, vm = q.arg(key), q.arg(bucket), q.arg(version_marker)
            q.sql += (
                f" AND (key > {k} OR (key = {k} AND seq < "
                f"(SELECT seq FROM objects WHERE bucket = {b} AND key = {k} AND version_id = {vm})))"
            )
        elif key:
            q.sql += f" AND key > {q.arg(key)}"
        q.sql += f" ORDER BY key, seq DESC LIMIT {q.arg(limit)}"
        return [_version(r) for r in await self._pool(shard).fetch(q.sql, *q.args)]

    async def list_objects(
        self, bucket: str, prefix: str, after: str, inclusive: bool, limit: int
    ) -> list[ListedObject]:
        shard = await self._bucket_shard(bucket)
        if shard is None:
            return []
        q = _Query(
            "SELECT key, size, etag, last_modified, storage_class FROM objects "
            "WHERE bucket = $1 AND latest AND NOT delete_marker",
            bucket,
        )
        q.key_in_prefix(prefix)
        q.sql += f" AND key {'>=' if inclusive else '>'} {q.arg(after)} ORDER BY key LIMIT {q.arg(limit)}"
        return [ListedObject(*r) for r in await self._pool(shard).fetch(q.sql, *q.args)]

    # -- multipart ----------------------------------------------------------------------
    async def create_upload(self, upload: MultipartUpload) -> None:
        u = upload
        async with self._bucket_tx(u.bucket) as conn:
            await conn.execute(
                f"INSERT INTO uploads ({_UPLOAD_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                u.upload_id, u.bucket, u.key, u.initiated, u.owner, u.content_type, json.dumps(u.headers),
                json.dumps(u.user_meta), u.checksum_algorithm, u.checksum_type, json.dumps(u.tags),
            )  # fmt: skip
        shard = await self._bucket_shard(u.bucket)
        if shard is not None:
            self._upload_shards.put(u.upload_id, shard)

    async def get_upload(self, bucket: str, upload_id: str) -> MultipartUpload | None:
        shard = await self._bucket_shard(bucket)
        if shard is None:
            return None
        r = await self._pool(shard).fetchrow(
            f"SELECT {_UPLOAD_COLS} FROM uploads WHERE upload_id = $1 AND bucket = $2", upload_id, bucket
        )
        if r is None:
            return None
        self._upload_shards.put(upload_id, shard)
        return _upload(r)

    async def list_uploads(
        self, bucket: str, prefix: str, key: str, inclusive: bool, upload_id_marker: str, limit: int
    ) -> list[MultipartUpload]:
        """Uploads ordered by (key, initiated, upload_id), from the markers."""
        shard = await self._bucket_shard(bucket)
        if shard is None:
            return []
        q = _Query(f"SELECT {_UPLOAD_COLS} FROM uploads WHERE bucket = $1", bucket)
        q.key_in_prefix(prefix)
        if inclusive:
            q.sql += f" AND key >= {q.arg(key)}"
        elif key and upload_id_marker:
            k, u = q.arg(key), q.arg(upload_id_marker)
            q.sql += (
                f" AND (key > {k} OR (key = {k} AND (initiated, upload_id) >"
                f" (SELECT initiated, upload_id FROM uploads WHERE upload_id = {u})))"
            )
        elif key:
            q.sql += f" AND key > {q.arg(key)}"
        q.sql += f" ORDER BY key, initiated, upload_id LIMIT {q.arg(limit)}"
        return [_upload(r) for r in await self._pool(shard).fetch(q.sql, *q.args)]

    async def put_part(self, upload_id: str, part: Part, staged: StagedData) -> None:
        shard = await self._upload_shard(upload_id)
        if shard is None:
            raise S3Error("NoSuchUpload", UploadId=upload_id)
        await self._index(staged)
        # One statement: the upload row is share-locked, so a racing complete/abort either
        # sees this part or makes it fail.
        status = await self._pool(shard).execute(
            f"INSERT INTO parts (upload_id, {_PART_COLS}) "
            "SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS "
            "(SELECT 1 FROM uploads WHERE upload_id = $1 FOR SHARE) "
            "ON CONFLICT (upload_id, part_number) DO UPDATE SET size = EXCLUDED.size, "
            "etag = EXCLUDED.etag, last_modified = EXCLUDED.last_modified, manifest = EXCLUDED.manifest, "
            "checksum = EXCLUDED.checksum",
            upload_id, part.part_number, part.size, part.etag, part.last_modified, part.manifest.encode(),
            json.dumps(part.checksum),
        )  # fmt: skip
        if _count(status) == 0:
            self._upload_shards.pop(upload_id)
            raise S3Error("NoSuchUpload", UploadId=upload_id)

    async def list_parts(self, upload_id: str, after: int, limit: int) -> list[Part]:
        shard = await self._upload_shard(upload_id)
        if shard is None:
            return []
        rows = await self._pool(shard).fetch(
            f"SELECT {_PART_COLS} FROM parts WHERE upload_id = $1 AND part_number > $2 "
            "ORDER BY part_number LIMIT $3",
            upload_id,
            after,
            limit,
        )
        return [_part(r) for r in rows]

    async def complete_upload(
        self, upload_id: str, version: ObjectVersion, condition: WriteCondition | None = None
    ) -> bool:
        async with self._bucket_tx(version.bucket, version.key) as conn:
            if _count(await conn.execute("DELETE FROM uploads WHERE upload_id = $1", upload_id)) == 0:
                return False
            await conn.execute("DELETE FROM parts WHERE upload_id = $1", upload_id)
            await self._put_version(conn, version, "ObjectCreated:CompleteMultipartUpload", condition)
        self._upload_shards.pop(upload_id)
        return True

    async def abort_upload(self, upload_id: str) -> bool:
        shard = await self._upload_shard(upload_id)
        if shard is None:
            return False
        async with self._tx(shard) as conn:
            await conn.execute("DELETE FROM parts WHERE upload_id = $1", upload_id)
            gone = _count(await conn.execute("DELETE FROM uploads WHERE upload_id = $1", upload_id))
        self._upload_shards.pop(upload_id)
        return gone > 0

    # -- event outbox -------------------------------------------------------------------
    async def outbox_shards(self) -> int:
        return self.shards

    async def _sequence_outbox(self, shard: int) -> None:
        """Give ``seq`` numbers to the outbox rows of transactions older than every running
        one, in (transaction id, row) order. One sequencer per shard at a time; a reader that
        finds the lock taken reads what is already sequenced."""
        async with self._tx(shard) as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _SEQUENCER_LOCK):
                return
            # The high-water mark lives in ``outbox_sequencer``, so trimming published rows
            # never lets a seq be handed out twice.
            await conn.execute(
                "WITH pending AS (SELECT id, row_number() OVER (ORDER BY txid, id) AS n FROM outbox"
                " WHERE seq IS NULL AND txid < pg_snapshot_xmin(pg_current_snapshot())"
                " ORDER BY txid, id LIMIT $1),"
                " base AS (SELECT COALESCE((SELECT last FROM outbox_sequencer), 0) AS last),"
                " numbered AS (UPDATE outbox o SET seq = base.last + pending.n FROM pending, base"
                " WHERE o.id = pending.id RETURNING o.seq)"
                " INSERT INTO outbox_sequencer (last) SELECT MAX(seq) FROM numbered HAVING count(*) > 0"
                " ON CONFLICT (only_row) DO UPDATE SET last = EXCLUDED.last",
                OUTBOX_SEQUENCE_BATCH,
            )

    async def read_outbox(self, after: int, limit: int, shard: int = 0) -> list[OutboxEvent]:
        """Events of ``shard``'s outbox with ``seq > after``, in ``seq`` order."""
        if not 0 <= shard < self.shards:
            raise ValueError(f"no outbox shard {shard} (there are {self.shards})")
        await self._sequence_outbox(shard)
        rows = await self._pool(shard).fetch(
            "SELECT seq, created, event FROM outbox WHERE seq > $1 ORDER BY seq LIMIT $2", after, limit
        )
        return [OutboxEvent.from_row(*r) for r in rows]

    # -- event relay: cursor and lease (a row per outbox shard, on that shard) ----------
    async def get_relay_cursor(self, shard: int) -> int:
        cursor = await self._pool(shard).fetchval("SELECT cursor FROM relay_state WHERE shard = $1", shard)
        return 0 if cursor is None else int(cursor)

    async def advance_relay_cursor(self, shard: int, seq: int) -> None:
        await self._pool(shard).execute(
            "INSERT INTO relay_state (shard, cursor) VALUES ($1, $2) ON CONFLICT (shard) "
            "DO UPDATE SET cursor = GREATEST(relay_state.cursor, EXCLUDED.cursor)",
            shard,
            seq,
        )

    async def claim_relay(self, shard: int, owner: str, ttl_seconds: float) -> bool:
        """Take the shard's lease if it is free, expired or already ours; renew it. Expiry
        uses the database's clock, so gateways with skewed clocks agree."""
        status = await self._pool(shard).execute(
            "WITH now AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS t) "
            "INSERT INTO relay_state (shard, owner, expires) SELECT $1, $2, now.t + $3 FROM now "
            "ON CONFLICT (shard) DO UPDATE SET owner = EXCLUDED.owner, expires = EXCLUDED.expires "
            "WHERE relay_state.owner IS NULL OR relay_state.owner = EXCLUDED.owner "
            "OR relay_state.expires < extract(epoch FROM clock_timestamp())",
            shard,
            owner,
            ttl_seconds,
        )
        return _count(status) == 1

    async def release_relay(self, shard: int, owner: str) -> None:
        await self._pool(shard).execute(
            "UPDATE relay_state SET owner = NULL, expires = 0 WHERE shard = $1 AND owner = $2", shard, owner
        )

    async def trim_outbox(self, shard: int, before: int, limit: int) -> int:
        """Delete up to ``limit`` rows with seq < ``before`` that the relay published."""
        return await self._insert(
            shard,
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE seq < $1 AND seq <= "
            "(SELECT COALESCE(MAX(cursor), 0) FROM relay_state WHERE shard = $2) ORDER BY seq LIMIT $3)",
            before,
            shard,
            limit,
        )

    # -- audit log (catalog shard) ------------------------------------------------------
    _AUDIT_COLS = (
        "time, request_id, user_name, access_key, action, bucket, key, version_id, ip, user_agent, status"
    )

    async def append_audit(self, records: list[AuditRecord]) -> None:
        """The records' audit rows and outbox rows, in one transaction on the catalog shard."""
        if not records:
            return
        async with self._tx(0) as conn:
            await conn.executemany(
                f"INSERT INTO audit ({self._AUDIT_COLS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                [
                    (r.time, r.request_id, r.user, r.access_key, r.action, r.bucket, r.key, r.version_id,
                     r.ip, r.user_agent, r.status)
                    for r in records
                ],
            )  # fmt: skip
            now = time.time()
            await conn.execute(
                "INSERT INTO outbox (created, event) "
                "SELECT $1, e FROM unnest($2::text[]) WITH ORDINALITY AS t(e, i) ORDER BY i",
                now,
                [json.dumps(r.to_event()) for r in records],
            )

    async def read_audit(self, after: int, limit: int) -> list[AuditRecord]:
        rows = await self._catalog.fetch(
            f"SELECT {self._AUDIT_COLS}, seq FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2", after, limit
        )
        return [AuditRecord(*r) for r in rows]

    # -- health -------------------------------------------------------------------------
    async def ping(self) -> None:
        """Every shard answers within ``command_timeout`` and accepts writes (is a primary)."""

        async def check(conn: asyncpg.Connection, shard: int) -> None:
            if await conn.fetchval("SELECT pg_is_in_recovery()"):
                raise ConnectionError(f"metadata shard {shard} is read-only (a standby)")

        await self._each_shard(check)

    def pool_usage(self) -> PoolUsage:
        """Connections checked out and the pools' maximum size, summed over shards."""
        in_use = sum(p.get_size() - p.get_idle_size() for p in self._pools)
        return PoolUsage(in_use=in_use, size=sum(p.get_max_size() for p in self._pools))

    # -- maintenance scans (every shard, merged into one keyset order) ------------------
    async def _merged(
        self,
        fn: Callable[[asyncpg.Connection, int], Awaitable[list[T]]],
        order: Callable[[T], Any],
        limit: int,
    ) -> list[T]:
        """The first ``limit`` items of every shard's page, in ``order``. Each shard answers
        at most ``limit`` items in that order, so the merge is exact."""
        pages = await self._each_shard(fn)
        return list(itertools.islice(heapq.merge(*pages, key=order), limit))

    async def scan_versions(self, after: tuple[str, str, str] | None, limit: int) -> list[ObjectVersion]:
        q = _Query(f"SELECT {_OBJECT_COLS}, latest FROM objects")
        if after is not None:
            b, k, v = (q.arg(a) for a in after)
            q.sql += f" WHERE (bucket, key, version_id) > ({b}, {k}, {v})"
        q.sql += f" ORDER BY bucket, key, version_id LIMIT {q.arg(limit)}"

        async def page(conn: asyncpg.Connection, shard: int) -> list[ObjectVersion]:
            return [_version(r) for r in await conn.fetch(q.sql, *q.args)]

        return await self._merged(page, lambda v: (v.bucket, v.key, v.version_id), limit)

    async def scan_parts(
        self, after: tuple[str, int] | None, limit: int
    ) -> list[tuple[MultipartUpload, Part]]:
        cols = ", ".join(f"u.{c.strip()}" for c in _UPLOAD_COLS.split(","))
        pcols = ", ".join(f"p.{c.strip()}" for c in _PART_COLS.split(","))
        q = _Query(f"SELECT {cols}, {pcols} FROM parts p JOIN uploads u ON u.upload_id = p.upload_id")
        if after is not None:
            q.sql += f" WHERE (p.upload_id, p.part_number) > ({q.arg(after[0])}, {q.arg(after[1])})"
        q.sql += f" ORDER BY p.upload_id, p.part_number LIMIT {q.arg(limit)}"

        async def page(conn: asyncpg.Connection, shard: int) -> list[tuple[MultipartUpload, Part]]:
            return [(_upload(r), _part(r)) for r in await conn.fetch(q.sql, *q.args)]

        return await self._merged(page, lambda up: (up[0].upload_id, up[1].part_number), limit)

    async def storage_stats(self) -> StorageStats:
        """Sums of every shard's aggregates (each shard one snapshot; the shards are read
        concurrently, not at one instant)."""

        async def one(conn: asyncpg.Connection, shard: int) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                totals = await conn.fetchrow(
                    "SELECT"
                    " (SELECT count(*) FILTER (WHERE NOT delete_marker) FROM objects) AS versions,"
                    " (SELECT count(*) FILTER (WHERE delete_marker) FROM objects) AS delete_markers,"
                    " (SELECT COALESCE(sum(size), 0) FROM objects) AS version_bytes,"
                    " (SELECT count(*) FROM objects WHERE latest AND NOT delete_marker) AS objects,"
                    " (SELECT COALESCE(sum(size), 0) FROM objects WHERE latest AND NOT delete_marker)"
                    " AS current,"
                    " (SELECT count(*) FROM parts) AS parts,"
                    " (SELECT COALESCE(sum(size), 0) FROM parts) AS part_bytes,"
                    " (SELECT count(*) FROM chunks) AS chunks,"
                    " (SELECT COALESCE(sum(plain_len), 0) FROM chunks) AS chunk_plain,"
                    " (SELECT COALESCE(sum(length), 0) FROM chunks) AS chunk_stored,"
                    " (SELECT count(*) FROM packs) AS packs,"
                    " (SELECT COALESCE(sum(size), 0) FROM packs) AS pack_bytes"
                )
                by_class = await conn.fetch(
                    "SELECT storage_class, sum(size) FROM objects WHERE NOT delete_marker "
                    "GROUP BY storage_class"
                )
            return totals, by_class

        shards = await self._each_shard(one)
        totals = [dict(t) for t, _ in shards]
        total = {k: sum(int(t[k]) for t in totals) for k in totals[0]}
        by_class: dict[str, int] = collections.Counter()
        for _, rows in shards:
            for name, size in rows:
                by_class[name] += int(size)
        return StorageStats(
            objects=total["objects"],
            versions=total["versions"],
            delete_markers=total["delete_markers"],
            version_bytes=total["version_bytes"],
            current_bytes=total["current"],
            parts=total["parts"],
            part_bytes=total["part_bytes"],
            chunks=total["chunks"],
            chunk_plain_bytes=total["chunk_plain"],
            chunk_stored_bytes=total["chunk_stored"],
            packs=total["packs"],
            pack_bytes=total["pack_bytes"],
            bytes_by_class=dict(by_class),
        )
