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

* ``put_object`` / ``put_part``: open the commit's transaction on the bucket's (upload's)
  shard first (a missing bucket or upload indexes nothing; a failed write condition neither),
  then run the *claim* (below) on the pack shards and then on the chunk shards, so a chunk
  row is never visible before its pack record; then write the version (or part) and commit.
  A failure after the claim leaves index rows that no manifest references; dedup may already
  have found them, so the packs they point into must stay (``index_survives_failed_commit``:
  the caller leaves them to gc instead of deleting them) and gc reclaims them after its
  grace period.
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

Garbage collection (docs/operations.md has the design; the store's part). SQLite checks a
commit's chunks in the commit's own transaction. Here the chunk rows live on other shards, so
a commit's *claim* runs before its version commits, one statement per shard touched:

* pack step, per pack shard (``strata_claim_packs``, migration 2): under a shared advisory
  lock per pack, refuse (``SlowDown``) if a pack was tombstoned, else insert the records and
  revive retired ones. gc deletes or tombstones a pack under the exclusive lock, so of a
  commit and a deletion one sees the other;
* chunk step, per chunk shard: insert the new chunk rows (a conflicting row is revived) and,
  for the chunks the manifest reuses, count those present and revive the condemned ones
  (``UPDATE ... WHERE chunk_id = ANY(condemned ones)``, which skips rows a sweep deleted
  meanwhile). A count short of the manifest means a chunk was swept: ``SlowDown``, nothing
  committed. Live reused chunks cost a read, no write.

With that order alone, the sweep rule ("delete only rows condemned before this sweep's mark
started, and still condemned") is *not* enough, whatever the grace period: a commit whose
chunk step ran just before its chunks were condemned (they were live: nothing to revive),
and whose version committed after the next pass's mark had passed its key, is seen by
neither pass, and that next pass sweeps its chunks. With ``--grace 0`` the two passes run
back to back, so a commit only has to be a little slow; with a grace of a day, a mark that
lasts long enough does it. Packs have the same hole: a commit revives its pack, gc retires
it before the commit's chunk rows exist, and deletes it. The fix is a *bracket*: every claim
runs inside the commit's transaction on the bucket's shard, which has a transaction id before
the first index statement and ends only when the version is committed or dropped; and
:meth:`settle_commits` waits until every transaction that was running on any shard when it
was called has ended. gc settles as each mark begins, and :meth:`delete_retired_packs`
settles before it looks for chunk rows in the packs it is about to delete. Then:

* a chunk swept by a pass was condemned at some c before that pass's mark started at M. A
  commit naming it whose chunk step ran after c revived it (the sweep skips it) or found it
  gone (``SlowDown``); one whose chunk step ran before c had its transaction id before c < M,
  so the settle at M waited for it, and the mark sees its version. So an acknowledged object
  never points at swept data, with any grace, and ``--grace 0`` still sweeps at once.
* a pack deleted by gc was retired after any commit revived it (the deletion re-checks
  ``retired_at`` under the exclusive lock), and the settle after that retirement waited for
  every such commit, whose chunk rows are therefore visible when the deletion looks for them
  (a retired pack that has chunk rows is un-retired instead). A commit whose pack step came
  after the deletion finds the tombstone.

Two gc runs at once on the same stores are not covered (the same holds for SQLite): run one
collector per deployment. A bracketed commit holds its bucket shard's connection while its
claim uses the other shards' pools, so at most ``pool_max - 1`` bracketed commits run per
shard in a process: a connection is always left for single statements, and pools cannot
deadlock. Maintenance scans run per shard, one short statement (its own transaction) per
page; a page merges every shard's page in one keyset order. Key rotation re-wraps pack DEKs
on every shard, users and access keys on the catalog, and inline manifests (re-wrapped or
re-sealed by the key jobs) on their bucket's shard; jobs live on the catalog.

Adding a method: use :meth:`_bucket_shard` / :meth:`_bucket_tx` for "on the bucket's shard",
:meth:`_pool` / :meth:`_tx` for a given shard, and :meth:`_each_shard` for "on every shard".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import heapq
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg

from crypto.kek import WrappedKey
from dedup.manifest import INLINE_VERSION, MANIFEST_MAGIC, Manifest
from dedup.pack import ChunkLocation
from gateway.config import MetaConfig
from gateway.events import OutboxEvent
from gateway.meta.keyorder import prefix_successor
from gateway.meta.models import (
    NULL_VERSION,
    AccessKey,
    AuditRecord,
    Bucket,
    ChunkMove,
    DeleteOutcome,
    IndexedChunk,
    ListedObject,
    MultipartUpload,
    NewChunk,
    ObjectVersion,
    PackRecord,
    PackUsage,
    Part,
    PoolUsage,
    StagedData,
    User,
    WriteCondition,
)
from gateway.meta.pg_migrations import check_schema, read_schema
from gateway.meta.rows import (
    OBJECT_COLUMNS,
    UPLOAD_COLUMNS,
    upload_from_row,
    upload_values,
    version_from_row,
    version_values,
)
from gateway.meta.shards import HashRing, advisory_key
from gateway.meta.sqlite import outbox_event
from gateway.meta.store import StorageStats, WrappedKeyKind, check_replacement
from gateway.s3.errors import S3Error

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

STATEMENT_CACHE_SIZE = 512  # prepared statements kept per connection
ROUTE_CACHE_ENTRIES = 100_000  # bucket -> shard and upload -> shard entries kept per process
OUTBOX_SEQUENCE_BATCH = 10_000
_SEQUENCER_LOCK = advisory_key("outbox-sequencer")
SETTLE_POLL_SECONDS = 0.05  # how often settle_commits() looks whether the transactions ended
SETTLE_WARN_SECONDS = 30.0  # and how often it says which shards it is still waiting for
SWEPT_CHUNK = "A chunk this upload reuses was garbage-collected meanwhile; retry."
DELETED_PACK = "A pack of this upload was garbage-collected meanwhile; retry."
log = logging.getLogger("strata.meta")

_PART_COLS = "part_number, size, etag, last_modified, manifest, checksum"
# An inline manifest (dedup/manifest.py): its version byte, right after the magic.
_INLINE = f"get_byte(manifest, {len(MANIFEST_MAGIC)}) = {INLINE_VERSION}"


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


def _claim_sql(table: str, column: str) -> str:
    """Take or renew the lease row $1 of ``table`` for owner $2 for $3 seconds if it is free
    (no owner), already $2's, or expired, by the database's clock: the one lease rule of the
    relay and the maintenance jobs."""
    now = "extract(epoch FROM clock_timestamp())"
    return (
        f"INSERT INTO {table} ({column}, owner, expires) SELECT $1, $2, {now} + $3 "
        f"ON CONFLICT ({column}) DO UPDATE SET owner = EXCLUDED.owner, expires = EXCLUDED.expires "
        f"WHERE {table}.owner IS NULL OR {table}.owner = EXCLUDED.owner OR {table}.expires < {now}"
    )


def _params(n: int) -> str:
    """``$1, $2, ... $n``."""
    return ", ".join(f"${i}" for i in range(1, n + 1))


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


async def _all(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Await every one concurrently; results in order. Every call finishes before this
    returns (no statement is left running behind an error); then the first error is raised."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


@dataclass(frozen=True)
class _ClaimPlan:
    """A commit's index work, by shard (see the module docstring, "Garbage collection")."""

    packs: dict[int, list[PackRecord]]  # the records it wrote, by pack shard
    new_chunks: dict[int, list[NewChunk]]  # the chunk rows it wrote, by chunk shard
    reused: dict[int, list[bytes]]  # the other chunk ids its manifest names, by chunk shard

    def chunk_shards(self) -> list[int]:
        return sorted(set(self.new_chunks) | set(self.reused))


def _chunk_columns(chunks: list[NewChunk]) -> tuple[list[Any], ...]:
    """Chunk rows as the six column arrays ``unnest`` inserts: id, pack id, offset, length,
    plain length, flags."""
    locs = [n.location for n in chunks]
    return (
        [n.chunk_id for n in chunks],
        [loc.pack_id for loc in locs],
        [loc.offset for loc in locs],
        [loc.length for loc in locs],
        [loc.plain_len for loc in locs],
        [loc.flags for loc in locs],
    )


def claim_plan(ring: HashRing, staged: StagedData, manifest: Manifest) -> _ClaimPlan | None:
    """Group a commit's packs, new chunks and reused chunk ids by shard (each once, sorted,
    so concurrent statements lock rows in one order); None when there is nothing to claim."""
    packs = {p.pack_id: p for p in sorted(staged.packs, key=lambda p: p.pack_id)}
    new = {n.chunk_id: n for n in sorted(staged.chunks, key=lambda n: n.chunk_id)}
    reused = sorted(set(manifest.indexed_ids) - new.keys())
    if not (packs or new or reused):
        return None
    return _ClaimPlan(
        _group(packs.values(), lambda p: ring.pack_shard(p.pack_id)),
        _group(new.values(), lambda n: ring.chunk_shard(n.chunk_id)),
        _group(reused, ring.chunk_shard),
    )


class PostgresMetadataStore:
    """The metadata store on N PostgreSQL shards (see the module docstring)."""

    index_survives_failed_commit = True  # the claim runs on other shards before the commit

    def __init__(self, config: MetaConfig) -> None:
        if not config.dsns:
            raise ValueError("the PostgreSQL metadata store needs at least one DSN (meta.dsns)")
        if config.pool_max < 2:
            raise ValueError(f"meta.pool_max must be at least 2 for PostgreSQL, not {config.pool_max}")
        self._config = config
        # Bracketed commits per shard: one connection always stays free for single statements.
        self._brackets = [asyncio.Semaphore(config.pool_max - 1) for _ in config.dsns]
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

        return await _all(one(s) for s in range(self.shards))

    async def _bucket_shard(self, bucket: str) -> int | None:
        """The bucket's shard from the catalog (remembered per process), None if no bucket."""
        shard = self._bucket_shards.get(bucket)
        if shard is None:
            shard = await self._catalog.fetchval("SELECT shard FROM buckets WHERE name = $1", bucket)
            if shard is not None:
                self._bucket_shards.put(bucket, shard)
        return shard

    @asynccontextmanager
    async def _bucket_tx(
        self, bucket: str, key: str | None = None, *, bracket: bool = False
    ) -> AsyncIterator[asyncpg.Connection]:
        """A write transaction on ``bucket``'s shard holding the bucket's shared lock and,
        given ``key``, the key's writer lock; raises NoSuchBucket when the bucket is gone. It
        has its transaction id from the first statement on, so it can bracket a claim
        (``bracket``: counted against the shard's bracketed commits)."""
        shard = await self._bucket_shard(bucket)
        if shard is None:
            raise S3Error("NoSuchBucket", BucketName=bucket)
        limit = self._brackets[shard] if bracket else contextlib.nullcontext()
        async with limit, self._tx(shard) as conn:
            if key is None:
                await conn.execute(
                    "SELECT pg_advisory_xact_lock_shared($1), pg_current_xact_id()",
                    advisory_key("bucket", bucket),
                )
            else:
                await conn.execute(
                    "SELECT pg_advisory_xact_lock_shared($1), pg_advisory_xact_lock($2), "
                    "pg_current_xact_id()",
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
        return await self._insert(
            shard,
            "INSERT INTO chunks (chunk_id, pack_id, pack_offset, length, plain_len, flags, created) "
            "SELECT *, $7 FROM unnest($1::bytea[], $2::text[], $3::bigint[], $4::int[], $5::int[], "
            "$6::int[]) "
            "ON CONFLICT DO NOTHING",
            *_chunk_columns(chunks),
            now,
        )

    async def _claim(self, plan: _ClaimPlan) -> None:
        """A commit's claim (inside its bracket): the pack step on every pack shard, then the
        chunk step on every chunk shard; ``SlowDown`` if gc deleted a pack or swept a chunk."""
        now = time.time()
        dead = await _all(self._claim_packs(s, packs, now) for s, packs in plan.packs.items())
        if any(dead):
            raise S3Error("SlowDown", DELETED_PACK)
        missing = await _all(
            self._claim_chunks(s, plan.new_chunks.get(s, []), plan.reused.get(s, []), now)
            for s in plan.chunk_shards()
        )
        if any(missing):
            raise S3Error("SlowDown", SWEPT_CHUNK)

    async def _claim_packs(self, shard: int, packs: list[PackRecord], now: float) -> list[str]:
        """Insert (or revive) the records; the tombstoned ones if any (then nothing changed)."""
        dead: list[str] = await self._pool(shard).fetchval(
            "SELECT strata_claim_packs($1::text[], $2::text[], $3::int[], $4::bytea[], $5::bigint[], $6)",
            [p.pack_id for p in packs],
            [p.wrapped_dek.kek_id for p in packs],
            [p.wrapped_dek.kek_version for p in packs],
            [p.wrapped_dek.blob for p in packs],
            [p.size for p in packs],
            now,
        )
        return dead

    async def _claim_chunks(self, shard: int, new: list[NewChunk], reused: list[bytes], now: float) -> int:
        """Insert the new rows (reviving a conflicting one), count the reused ids present and
        revive the condemned ones; returns how many are missing (swept). A reused row that a
        sweep deletes while this runs is skipped by the ``UPDATE`` and so counted missing."""
        found = await self._pool(shard).fetchval(
            "WITH ins AS (INSERT INTO chunks"
            " (chunk_id, pack_id, pack_offset, length, plain_len, flags, created)"
            " SELECT *, $7 FROM unnest($1::bytea[], $2::text[], $3::bigint[], $4::int[], $5::int[],"
            " $6::int[])"
            " ON CONFLICT (chunk_id) DO UPDATE SET condemned_at = NULL RETURNING 1),"
            " seen AS (SELECT chunk_id, condemned_at IS NOT NULL AS condemned FROM chunks"
            " WHERE chunk_id = ANY($8::bytea[])),"
            " revived AS (UPDATE chunks SET condemned_at = NULL"
            " WHERE chunk_id IN (SELECT chunk_id FROM seen WHERE condemned) RETURNING 1)"
            " SELECT (SELECT count(*) FROM ins) + (SELECT count(*) FROM seen WHERE NOT condemned)"
            " + (SELECT count(*) FROM revived)",
            *_chunk_columns(new),
            now,
            reused,
        )
        return len(new) + len(reused) - int(found)

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

    @staticmethod
    async def _check(conn: asyncpg.Connection, v: ObjectVersion, condition: WriteCondition | None) -> None:
        """Raise unless ``condition`` holds for the key's latest version (under the key's lock)."""
        if condition is None:
            return
        latest = await conn.fetchrow(
            "SELECT etag, delete_marker FROM objects WHERE bucket = $1 AND key = $2 AND latest",
            v.bucket,
            v.key,
        )
        condition.check(None if latest is None or latest["delete_marker"] else latest["etag"])

    @classmethod
    async def _put_version(
        cls, conn: asyncpg.Connection, v: ObjectVersion, event: str, condition: WriteCondition | None = None
    ) -> None:
        """Make ``v`` the key's latest version (inside :meth:`_bucket_tx` with the key's lock);
        a "null" version replaces the previous null one."""
        await cls._check(conn, v, condition)
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
            f"INSERT INTO objects ({OBJECT_COLUMNS}, seq, latest) VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, true)",
            *version_values(v),
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
        """Commit ``version``: its bracket (the key's transaction) first, then the write
        condition, the claim, and the version (module docstring)."""
        plan = claim_plan(self._ring, staged, version.manifest)
        async with self._bucket_tx(version.bucket, version.key, bracket=plan is not None) as conn:
            await self._check(conn, version, condition)
            if plan is not None:
                await self._claim(plan)
            await self._put_version(conn, version, event)

    async def get_object(self, bucket: str, key: str, version_id: str | None = None) -> ObjectVersion | None:
        shard = await self._bucket_shard(bucket)
        if shard is None:
            return None
        select = f"SELECT {OBJECT_COLUMNS}, latest FROM objects WHERE bucket = $1 AND key = $2"
        if version_id is None:
            r = await self._pool(shard).fetchrow(select + " AND latest", bucket, key)
        else:
            r = await self._pool(shard).fetchrow(select + " AND version_id = $3", bucket, key, version_id)
        return None if r is None else version_from_row(r)

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
        q = _Query(f"SELECT {OBJECT_COLUMNS}, latest FROM objects WHERE bucket = $1", bucket)
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
        return [version_from_row(r) for r in await self._pool(shard).fetch(q.sql, *q.args)]

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
                f"INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES ({_params(11)})",
                *upload_values(u),
            )
        shard = await self._bucket_shard(u.bucket)
        if shard is not None:
            self._upload_shards.put(u.upload_id, shard)

    async def get_upload(self, bucket: str, upload_id: str) -> MultipartUpload | None:
        shard = await self._bucket_shard(bucket)
        if shard is None:
            return None
        r = await self._pool(shard).fetchrow(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE upload_id = $1 AND bucket = $2", upload_id, bucket
        )
        if r is None:
            return None
        self._upload_shards.put(upload_id, shard)
        return upload_from_row(r)

    async def list_uploads(
        self, bucket: str, prefix: str, key: str, inclusive: bool, upload_id_marker: str, limit: int
    ) -> list[MultipartUpload]:
        """Uploads ordered by (key, initiated, upload_id), from the markers."""
        shard = await self._bucket_shard(bucket)
        if shard is None:
            return []
        q = _Query(f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE bucket = $1", bucket)
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
        return [upload_from_row(r) for r in await self._pool(shard).fetch(q.sql, *q.args)]

    async def put_part(self, upload_id: str, part: Part, staged: StagedData) -> None:
        shard = await self._upload_shard(upload_id)
        if shard is None:
            raise S3Error("NoSuchUpload", UploadId=upload_id)
        plan = claim_plan(self._ring, staged, part.manifest)
        if plan is None:
            await self._insert_part(self._pool(shard), upload_id, part)
            return
        # The bracket: the upload row share-locked, a transaction id, then the claim.
        async with self._brackets[shard], self._tx(shard) as conn:
            if not await conn.fetchval(
                "SELECT pg_current_xact_id() IS NOT NULL FROM uploads WHERE upload_id = $1 FOR SHARE",
                upload_id,
            ):
                self._upload_shards.pop(upload_id)
                raise S3Error("NoSuchUpload", UploadId=upload_id)
            await self._claim(plan)
            await self._insert_part(conn, upload_id, part)

    async def _insert_part(self, db: asyncpg.Connection | asyncpg.Pool, upload_id: str, part: Part) -> None:
        # One statement: the upload row is share-locked, so a racing complete/abort either
        # sees this part or makes it fail.
        status = await db.execute(
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
            _claim_sql("relay_state", "shard"), shard, owner, ttl_seconds
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

    async def expire_outbox(self, shard: int, created_before: float, limit: int, published_only: bool) -> int:
        """Delete those of the ``limit`` oldest outbox rows (by insertion) that were created
        before ``created_before`` and, with ``published_only``, that the relay published (a
        row not yet sequenced never is). A bounded scan, however long the outbox is."""
        return await self._insert(
            shard,
            "DELETE FROM outbox WHERE id IN (SELECT id FROM (SELECT id, seq, created FROM outbox "
            "ORDER BY id LIMIT $1) o WHERE created < $2 AND (NOT $3 OR seq <= "
            "(SELECT COALESCE(MAX(cursor), 0) FROM relay_state WHERE shard = $4)))",
            limit,
            created_before,
            published_only,
            shard,
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
        return await self._scan_versions(after, limit, [])

    async def scan_inline_versions(
        self, after: tuple[str, str, str] | None, limit: int
    ) -> list[ObjectVersion]:
        return await self._scan_versions(after, limit, [_INLINE])

    async def _scan_versions(
        self, after: tuple[str, str, str] | None, limit: int, where: list[str]
    ) -> list[ObjectVersion]:
        """One keyset page (over every shard) of the versions matching every condition of ``where``."""
        q = _Query(f"SELECT {OBJECT_COLUMNS}, latest FROM objects")
        if after is not None:
            b, k, v = (q.arg(a) for a in after)
            where = [f"(bucket, key, version_id) > ({b}, {k}, {v})", *where]
        if where:
            q.sql += " WHERE " + " AND ".join(where)
        q.sql += f" ORDER BY bucket, key, version_id LIMIT {q.arg(limit)}"

        async def page(conn: asyncpg.Connection, shard: int) -> list[ObjectVersion]:
            return [version_from_row(r) for r in await conn.fetch(q.sql, *q.args)]

        return await self._merged(page, lambda v: (v.bucket, v.key, v.version_id), limit)

    async def scan_parts(
        self, after: tuple[str, int] | None, limit: int
    ) -> list[tuple[MultipartUpload, Part]]:
        cols = ", ".join(f"u.{c.strip()}" for c in UPLOAD_COLUMNS.split(","))
        pcols = ", ".join(f"p.{c.strip()}" for c in _PART_COLS.split(","))
        q = _Query(f"SELECT {cols}, {pcols} FROM parts p JOIN uploads u ON u.upload_id = p.upload_id")
        if after is not None:
            q.sql += f" WHERE (p.upload_id, p.part_number) > ({q.arg(after[0])}, {q.arg(after[1])})"
        q.sql += f" ORDER BY p.upload_id, p.part_number LIMIT {q.arg(limit)}"

        async def page(conn: asyncpg.Connection, shard: int) -> list[tuple[MultipartUpload, Part]]:
            return [(upload_from_row(r), _part(r)) for r in await conn.fetch(q.sql, *q.args)]

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
                    " (SELECT COALESCE(sum(size), 0) FROM packs) AS pack_bytes,"
                    f" (SELECT count(*) FROM objects WHERE {_INLINE}) AS inline_versions,"
                    f" (SELECT COALESCE(sum(size), 0) FROM objects WHERE {_INLINE}) AS inline_plain,"
                    f" (SELECT COALESCE(sum(octet_length(manifest)), 0) FROM objects WHERE {_INLINE})"
                    " AS inline_bytes"
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
            inline_versions=total["inline_versions"],
            inline_plain_bytes=total["inline_plain"],
            inline_bytes=total["inline_bytes"],
        )

    # -- garbage collection and key jobs (MaintenanceStore) -----------------------------
    async def settle_commits(self) -> None:
        """Wait until every transaction that is running on any shard now has ended: every
        bracketed commit whose claim may have run before this call has then committed its
        version or dropped it (module docstring). Each shard hands out a transaction id as
        the fence (ids grow, and committing it makes every older running one show in a
        snapshot); then this polls until the oldest running transaction is younger than it.
        Holds no connection while waiting."""
        fences = await self._each_shard(lambda c, s: c.fetchval("SELECT pg_current_xact_id()::text"))
        waiting = dict(enumerate(fences))
        warn_at = time.monotonic() + SETTLE_WARN_SECONDS
        while True:
            running = await _all(
                self._pool(shard).fetchval(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot()) < $1::text::xid8", fence
                )
                for shard, fence in waiting.items()
            )
            waiting = {s: fence for (s, fence), busy in zip(waiting.items(), running, strict=True) if busy}
            if not waiting:
                return
            if time.monotonic() >= warn_at:
                log.warning("waiting for transactions older than this gc step on shards %s", sorted(waiting))
                warn_at = time.monotonic() + SETTLE_WARN_SECONDS
            await asyncio.sleep(SETTLE_POLL_SECONDS)

    async def _per_chunk_shard(
        self, chunk_ids: list[bytes], fn: Callable[[asyncpg.Pool, list[bytes]], Awaitable[T]]
    ) -> list[T]:
        """``fn(pool, ids)`` on the shard of each group of ``chunk_ids``, concurrently."""
        groups = _group(sorted(set(chunk_ids)), self._ring.chunk_shard)
        return await _all(fn(self._pool(s), ids) for s, ids in groups.items())

    async def _per_pack_shard(
        self, pack_ids: Iterable[str], fn: Callable[[int, list[str]], Awaitable[T]]
    ) -> list[T]:
        """``fn(shard, ids)`` for each pack shard's group of ``pack_ids``, concurrently."""
        groups = _group(sorted(set(pack_ids)), self._ring.pack_shard)
        return await _all(fn(s, ids) for s, ids in groups.items())

    async def scan_chunks(self, after: bytes | None, limit: int) -> list[IndexedChunk]:
        async def page(conn: asyncpg.Connection, shard: int) -> list[IndexedChunk]:
            rows = await conn.fetch(
                "SELECT chunk_id, pack_id, length, created, condemned_at FROM chunks "
                "WHERE chunk_id > $1 ORDER BY chunk_id LIMIT $2",
                after or b"",
                limit,
            )
            return [IndexedChunk(*r) for r in rows]

        return await self._merged(page, lambda c: c.chunk_id, limit)

    async def condemn_chunks(self, chunk_ids: list[bytes], at: float) -> int:
        counts = await self._per_chunk_shard(
            chunk_ids,
            lambda pool, ids: pool.execute(
                "UPDATE chunks SET condemned_at = $2 WHERE chunk_id = ANY($1::bytea[]) "
                "AND condemned_at IS NULL",
                ids,
                at,
            ),
        )
        return sum(map(_count, counts))

    async def revive_chunks(self, chunk_ids: list[bytes]) -> int:
        counts = await self._per_chunk_shard(
            chunk_ids,
            lambda pool, ids: pool.execute(
                "UPDATE chunks SET condemned_at = NULL WHERE chunk_id = ANY($1::bytea[]) "
                "AND condemned_at IS NOT NULL",
                ids,
            ),
        )
        return sum(map(_count, counts))

    async def sweep_chunks(self, chunk_ids: list[bytes], condemned_before: float) -> tuple[int, int]:
        """Delete the rows still condemned at a time before ``condemned_before`` (the row lock
        makes a racing commit's revival win or see the row gone)."""
        swept = await self._per_chunk_shard(
            chunk_ids,
            lambda pool, ids: pool.fetchrow(
                "WITH gone AS (DELETE FROM chunks WHERE chunk_id = ANY($1::bytea[]) AND condemned_at < $2"
                " RETURNING length) SELECT count(*), COALESCE(sum(length), 0) FROM gone",
                ids,
                condemned_before,
            ),
        )
        return sum(int(r[0]) for r in swept), sum(int(r[1]) for r in swept)

    _PACK_COLS = "pack_id, kek_id, kek_version, wrapped_dek, size, created, retired_at"

    @staticmethod
    def _pack_record(r: asyncpg.Record) -> PackRecord:
        wrapped = WrappedKey(r["kek_id"], r["kek_version"], r["wrapped_dek"])
        return PackRecord(r["pack_id"], wrapped, r["size"])

    async def _chunk_usage(self, pack_ids: list[str]) -> dict[str, tuple[int, int]]:
        """(chunk rows, record bytes) pointing into each of ``pack_ids`` that has any, summed
        over every shard (a pack's rows live on the shards of their chunk ids)."""
        if not pack_ids:
            return {}
        pages = await self._each_shard(
            lambda c, s: c.fetch(
                "SELECT pack_id, count(*), COALESCE(sum(length), 0) FROM chunks "
                "WHERE pack_id = ANY($1::text[]) GROUP BY pack_id",
                pack_ids,
            )
        )
        usage: dict[str, tuple[int, int]] = {}
        for rows in pages:
            for pack_id, n, nbytes in rows:
                old = usage.get(pack_id, (0, 0))
                usage[pack_id] = (old[0] + int(n), old[1] + int(nbytes))
        return usage

    async def scan_pack_usage(self, after: str | None, limit: int) -> list[PackUsage]:
        async def page(conn: asyncpg.Connection, shard: int) -> list[asyncpg.Record]:
            return await conn.fetch(
                f"SELECT {self._PACK_COLS} FROM packs WHERE pack_id > $1 ORDER BY pack_id LIMIT $2",
                after or "",
                limit,
            )

        packs = await self._merged(page, lambda r: r["pack_id"], limit)
        usage = await self._chunk_usage([r["pack_id"] for r in packs])
        return [
            PackUsage(self._pack_record(r), r["created"], r["retired_at"], *usage.get(r["pack_id"], (0, 0)))
            for r in packs
        ]

    async def pack_chunks(self, pack_id: str, after_offset: int, limit: int) -> list[NewChunk]:
        async def page(conn: asyncpg.Connection, shard: int) -> list[NewChunk]:
            rows = await conn.fetch(
                "SELECT chunk_id, pack_id, pack_offset, length, plain_len, flags FROM chunks "
                "WHERE pack_id = $1 AND pack_offset > $2 ORDER BY pack_offset LIMIT $3",
                pack_id,
                after_offset,
                limit,
            )
            return [NewChunk(r[0], ChunkLocation(*r[1:])) for r in rows]

        return await self._merged(page, lambda n: n.location.offset, limit)

    async def _set_retired(self, pack_ids: list[str], at: float | None) -> list[str]:
        """Retire the live ones of ``pack_ids`` at ``at``, or (None) un-retire the retired ones."""
        where = "retired_at IS NULL" if at is not None else "retired_at IS NOT NULL"
        changed = await self._per_pack_shard(
            pack_ids,
            lambda s, ids: self._pool(s).fetch(
                f"UPDATE packs SET retired_at = $2 WHERE pack_id = ANY($1::text[]) AND {where} "
                "RETURNING pack_id",
                ids,
                at,
            ),
        )
        return [r[0] for rows in changed for r in rows]

    async def retire_packs(self, pack_ids: list[str], at: float) -> list[str]:
        """Retire those of ``pack_ids`` no chunk row points into (looked up on every shard
        first, so a commit may still add rows: :meth:`delete_retired_packs` re-checks)."""
        busy = await self._chunk_usage(pack_ids)
        return await self._set_retired([p for p in pack_ids if p not in busy], at)

    async def delete_retired_packs(self, retired_before: float, limit: int) -> list[PackRecord]:
        """Drop the records of packs retired before ``retired_before`` that no chunk row points
        into, tombstoning their ids: after settling the commits in flight (module docstring),
        each pack shard deletes under the packs' exclusive locks, re-checking ``retired_at``.
        A retired pack found with chunk rows is un-retired."""
        while True:
            pages = await self._each_shard(
                lambda c, s: c.fetch(
                    "SELECT pack_id FROM packs WHERE retired_at < $1 ORDER BY pack_id LIMIT $2",
                    retired_before,
                    limit,
                )
            )
            candidates = sorted(r[0] for rows in pages for r in rows)[:limit]
            if not candidates:
                return []
            await self.settle_commits()
            busy = await self._chunk_usage(candidates)
            if busy:
                await self._set_retired(list(busy), None)
            idle = [p for p in candidates if p not in busy]
            delete = functools.partial(self._delete_packs, retired_before=retired_before, now=time.time())
            deleted = await self._per_pack_shard(idle, delete)
            gone = [record for records in deleted for record in records]
            if gone:
                return gone

    async def _delete_packs(
        self, shard: int, pack_ids: list[str], *, retired_before: float, now: float
    ) -> list[PackRecord]:
        async with self._tx(shard) as conn:
            await conn.execute("SELECT strata_lock_packs($1::text[], true)", pack_ids)
            rows = await conn.fetch(
                "WITH gone AS (DELETE FROM packs WHERE pack_id = ANY($1::text[]) AND retired_at < $2"
                f" RETURNING {self._PACK_COLS}),"
                " tomb AS (INSERT INTO pack_tombstones (pack_id, deleted) SELECT pack_id, $3 FROM gone"
                " ON CONFLICT DO NOTHING)"
                " SELECT * FROM gone ORDER BY pack_id",
                pack_ids,
                retired_before,
                now,
            )
        return [self._pack_record(r) for r in rows]

    async def tombstone_orphans(self, pack_ids: list[str], at: float) -> list[str]:
        """Tombstone those of ``pack_ids`` without a record, under the packs' exclusive locks,
        so a commit inserting one either came first (it has a record) or sees the tombstone."""

        async def one(shard: int, ids: list[str]) -> list[str]:
            async with self._tx(shard) as conn:
                await conn.execute("SELECT strata_lock_packs($1::text[], true)", ids)
                rows = await conn.fetch(
                    "WITH orphan AS (SELECT id FROM unnest($1::text[]) AS id"
                    " WHERE NOT EXISTS (SELECT 1 FROM packs WHERE pack_id = id)),"
                    " tomb AS (INSERT INTO pack_tombstones (pack_id, deleted) SELECT id, $2 FROM orphan"
                    " ON CONFLICT DO NOTHING)"
                    " SELECT id FROM orphan",
                    ids,
                    at,
                )
            return [r[0] for r in rows]

        orphans = {p for found in await self._per_pack_shard(pack_ids, one) for p in found}
        return [p for p in pack_ids if p in orphans]

    async def prune_tombstones(self, before: float) -> int:
        counts = await self._each_shard(
            lambda c, s: c.execute("DELETE FROM pack_tombstones WHERE deleted < $1", before)
        )
        return sum(map(_count, counts))

    async def repoint_chunks(self, pack: PackRecord, moves: list[ChunkMove]) -> int:
        """The new pack's record first, then on each chunk shard one statement moving the rows
        that still point at the copied record."""
        await self._index(StagedData([pack], []))
        by_id = {m.chunk_id: m for m in moves}

        async def move(pool: asyncpg.Pool, ids: list[bytes]) -> str:
            ms = [by_id[i] for i in ids]
            return await pool.execute(
                "UPDATE chunks AS c SET pack_id = m.pack_id, pack_offset = m.pack_offset,"
                " length = m.length, flags = m.flags"
                " FROM unnest($1::bytea[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::int[],"
                " $7::int[]) AS m(chunk_id, old_pack, old_offset, pack_id, pack_offset, length, flags)"
                " WHERE c.chunk_id = m.chunk_id AND c.pack_id = m.old_pack AND c.pack_offset = m.old_offset",
                ids,
                [m.old_pack_id for m in ms],
                [m.old_offset for m in ms],
                [m.location.pack_id for m in ms],
                [m.location.offset for m in ms],
                [m.location.length for m in ms],
                [m.location.flags for m in ms],
            )

        return sum(map(_count, await self._per_chunk_shard(list(by_id), move)))

    # (table, id column, wrapped-key column) of each kind of row that holds a wrapped key:
    # pack DEKs on every shard, users and access keys on the catalog
    _WRAPPED: dict[str, tuple[str, str, str]] = {
        "pack": ("packs", "pack_id", "wrapped_dek"),
        "user": ("users", "name", "dedup_key"),
        "access_key": ("access_keys", "access_key", "secret"),
    }

    async def scan_wrapped_keys(
        self, kind: WrappedKeyKind, kek_id: str, below_version: int, after: str | None, limit: int
    ) -> list[tuple[str, WrappedKey]]:
        table, id_col, blob_col = self._WRAPPED[kind]
        sql = (
            f"SELECT {id_col}, kek_id, kek_version, {blob_col} FROM {table} "
            f"WHERE kek_id = $1 AND kek_version < $2 AND {id_col} > $3 ORDER BY {id_col} LIMIT $4"
        )

        async def page(db: asyncpg.Connection | asyncpg.Pool, shard: int = 0) -> list[tuple[str, WrappedKey]]:
            rows = await db.fetch(sql, kek_id, below_version, after or "", limit)
            return [(r[0], WrappedKey(r[1], r[2], r[3])) for r in rows]

        if kind == "pack":
            return await self._merged(page, lambda row: row[0], limit)
        return await page(self._catalog)

    async def rewrap_keys(self, kind: WrappedKeyKind, rows: list[tuple[str, WrappedKey, WrappedKey]]) -> int:
        """Replace each row's key with the new one if it still holds the old one (one
        statement per shard)."""
        table, id_col, blob_col = self._WRAPPED[kind]
        by_id = {row_id: (old, new) for row_id, old, new in rows}

        async def one(shard: int, ids: list[str]) -> int:
            olds, news = [by_id[i][0] for i in ids], [by_id[i][1] for i in ids]
            return _count(
                await self._pool(shard).execute(
                    f"UPDATE {table} AS t SET kek_id = n.new_kek, kek_version = n.new_version,"
                    f" {blob_col} = n.new_blob FROM unnest($1::text[], $2::text[], $3::int[], $4::bytea[],"
                    " $5::text[], $6::int[], $7::bytea[])"
                    " AS n(id, old_kek, old_version, old_blob, new_kek, new_version, new_blob)"
                    f" WHERE t.{id_col} = n.id AND t.kek_id = n.old_kek AND t.kek_version = n.old_version"
                    f" AND t.{blob_col} = n.old_blob",
                    ids,
                    [o.kek_id for o in olds],
                    [o.kek_version for o in olds],
                    [o.blob for o in olds],
                    [n.kek_id for n in news],
                    [n.kek_version for n in news],
                    [n.blob for n in news],
                )
            )

        if kind == "pack":
            return sum(await self._per_pack_shard(by_id, one))
        return await one(0, sorted(by_id)) if by_id else 0

    async def replace_manifest(
        self, bucket: str, key: str, version_id: str, old: Manifest, new: Manifest
    ) -> bool:
        """One statement on the bucket's shard. It needs neither the bucket's nor the key's
        lock: it changes no latest flag, seq or chunk reference, and the row lock plus the
        re-checked ``manifest = old`` make a racing overwrite or delete win."""
        check_replacement(old, new)
        shard = await self._bucket_shard(bucket)
        if shard is None:
            return False
        status = await self._pool(shard).execute(
            "UPDATE objects SET manifest = $5 WHERE bucket = $1 AND key = $2 AND version_id = $3"
            " AND manifest = $4",
            bucket, key, version_id, old.encode(), new.encode(),
        )  # fmt: skip
        return _count(status) == 1

    async def claim_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take or renew lease ``name`` on the catalog; expiry by the database's clock."""
        status = await self._catalog.execute(_claim_sql("leases", "name"), name, owner, ttl_seconds)
        return _count(status) == 1

    async def release_lease(self, name: str, owner: str) -> None:
        await self._catalog.execute("DELETE FROM leases WHERE name = $1 AND owner = $2", name, owner)

    async def lease_holder(self, name: str) -> str | None:
        owner = await self._catalog.fetchval(
            "SELECT owner FROM leases WHERE name = $1 AND expires >= extract(epoch FROM clock_timestamp())",
            name,
        )
        return None if owner is None else str(owner)

    async def get_job(self, name: str) -> dict[str, Any] | None:
        state = await self._catalog.fetchval("SELECT state FROM maintenance_jobs WHERE name = $1", name)
        return None if state is None else dict(json.loads(state))

    async def put_job(self, name: str, state: dict[str, Any] | None) -> None:
        if state is None:
            await self._catalog.execute("DELETE FROM maintenance_jobs WHERE name = $1", name)
            return
        await self._catalog.execute(
            "INSERT INTO maintenance_jobs (name, state, updated) VALUES ($1, $2, $3) "
            "ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state, updated = EXCLUDED.updated",
            name,
            json.dumps(state),
            time.time(),
        )
