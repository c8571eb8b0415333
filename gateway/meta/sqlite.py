"""SQLite implementation of the metadata store, for the embedded default.

One write connection, used by one party at a time (the "lane"), runs every write
transaction start to finish in one synchronous call (no interleaving between coroutines);
writes that arrive while a commit is in flight are group-committed together, each in its
own savepoint. ``synchronous=FULL`` makes a commit durable before the client is answered.

Who runs a group's statements depends on its writes:

- *Light* writes (a bounded handful of statements: small-object puts, deletes, audit
  batches) run on the event loop itself, and only the COMMIT, where the fsync is, goes to
  the writer thread. A writer thread would have to re-take the GIL from the busy loop after
  every ``sqlite3_step`` (each one releases it): measured, that made a group of ~14 small
  PUTs take ~10 ms of wall time for ~3 ms of work, and the lone writer thread was the
  bottleneck of small-object PUT. On the loop the same statements cost ~0.1 ms a write.
- A group holding any other write runs whole on the writer thread, as before, so big
  manifests and sweeps never stall the loop.

The writer thread drains the queue itself after each COMMIT, group after group (handing an
all-light group back to a loop), and only posts outcomes to the waiters' event loops. A
second connection in its own thread serves reads concurrently (WAL mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from crypto.kek import WrappedKey
from dedup.manifest import INLINE_VERSION, MANIFEST_MAGIC, Manifest
from dedup.pack import ChunkLocation
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
from gateway.meta.rows import (
    OBJECT_COLUMNS,
    UPLOAD_COLUMNS,
    upload_from_row,
    upload_values,
    version_from_row,
    version_values,
)
from gateway.meta.store import StorageStats, WrappedKeyKind, check_replacement
from gateway.s3.errors import S3Error

T = TypeVar("T")

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, kek_id TEXT NOT NULL, kek_version INTEGER NOT NULL,
    dedup_key BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS access_keys (
    access_key TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users(name),
    kek_id TEXT NOT NULL, kek_version INTEGER NOT NULL, secret BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, region TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL, key TEXT NOT NULL, version_id TEXT NOT NULL, size INTEGER NOT NULL,
    etag TEXT NOT NULL, last_modified REAL NOT NULL, manifest BLOB NOT NULL,
    content_type TEXT NOT NULL, headers TEXT NOT NULL, user_meta TEXT NOT NULL,
    checksum TEXT NOT NULL, parts INTEGER NOT NULL, storage_class TEXT NOT NULL,
    delete_marker INTEGER NOT NULL, tags TEXT NOT NULL, seq INTEGER NOT NULL, latest INTEGER NOT NULL,
    PRIMARY KEY (bucket, key, version_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_current ON objects (bucket, key) WHERE latest = 1 AND delete_marker = 0;
CREATE INDEX IF NOT EXISTS objects_history ON objects (bucket, key, seq);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL, initiated REAL NOT NULL,
    owner TEXT NOT NULL, content_type TEXT NOT NULL, headers TEXT NOT NULL, user_meta TEXT NOT NULL,
    checksum_algorithm TEXT, checksum_type TEXT, tags TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS uploads_by_key ON uploads (bucket, key, initiated);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL, part_number INTEGER NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,
    last_modified REAL NOT NULL, manifest BLOB NOT NULL, checksum TEXT NOT NULL,
    PRIMARY KEY (upload_id, part_number)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS packs (
    pack_id TEXT PRIMARY KEY, kek_id TEXT NOT NULL, kek_version INTEGER NOT NULL,
    wrapped_dek BLOB NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    chunk_id BLOB PRIMARY KEY, pack_id TEXT NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    plain_len INTEGER NOT NULL, flags INTEGER NOT NULL, created REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bucket_configs (
    bucket TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (bucket, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, event TEXT NOT NULL);
"""

# Versioned schema migrations, applied in order inside one transaction when the store opens.
# Append new versions; never edit an applied one.
MIGRATIONS: dict[int, str] = {
    1: _SCHEMA_V1,
    2: """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, request_id TEXT NOT NULL,
    user TEXT, access_key TEXT, action TEXT NOT NULL, bucket TEXT, key TEXT, version_id TEXT,
    ip TEXT, user_agent TEXT, status INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit (time);
""",  # the audit log (gateway/observability/audit.py)
    3: """
ALTER TABLE chunks ADD COLUMN condemned_at REAL;
ALTER TABLE packs ADD COLUMN retired_at REAL;
CREATE INDEX IF NOT EXISTS chunks_by_pack ON chunks (pack_id, offset);
CREATE TABLE IF NOT EXISTS pack_tombstones (
    pack_id TEXT PRIMARY KEY, deleted REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS maintenance_jobs (
    name TEXT PRIMARY KEY, state TEXT NOT NULL, updated REAL NOT NULL) WITHOUT ROWID;
""",  # gc (condemned chunks, retired and deleted packs) and key jobs (gateway/maintenance/)
    5: """
CREATE TABLE IF NOT EXISTS relay_state (
    shard INTEGER PRIMARY KEY, cursor INTEGER NOT NULL DEFAULT 0, owner TEXT,
    expires REAL NOT NULL DEFAULT 0);
""",  # the event relay's cursor and lease (gateway/events.py)
    6: """
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID;
""",  # exclusive maintenance jobs across processes (gateway/maintenance/lease.py)
}
SCHEMA_VERSION = max(MIGRATIONS)

_OBJECT_COLS = f"{OBJECT_COLUMNS}, latest"


_BUSY_TIMEOUT_MS = 10_000  # how long a statement waits for another process's lock


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    return conn


def _begin_without_waiting(conn: sqlite3.Connection) -> bool:
    """BEGIN IMMEDIATE, unless another process holds the write lock (admin commands write
    to the same file): then False at once, and the caller lets the writer thread wait."""
    conn.execute("PRAGMA busy_timeout=0")
    try:
        conn.execute("BEGIN IMMEDIATE")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")


def _rollback(conn: sqlite3.Connection) -> None:
    """End a failed transaction, if one is still open."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


@dataclass(frozen=True, slots=True)
class _Queued:
    """A write waiting for its group: the transaction body, its waiter, whether it is light."""

    fn: Callable[[sqlite3.Connection], Any]
    fut: asyncio.Future[Any]
    light: bool


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION` (the embedded store has one owner, so it
    migrates itself on open); refuse a database from a newer Strata."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    current = 0 if row is None else row[0]
    if current > SCHEMA_VERSION:
        raise RuntimeError(f"metadata schema version {current} is newer than this Strata ({SCHEMA_VERSION})")
    pending = [v for v in sorted(MIGRATIONS) if v > current]
    if not pending:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for version in pending:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _claim(c: sqlite3.Connection, table: str, column: str, key: object, owner: str, ttl: float) -> bool:
    """Take or renew the lease row ``key`` of ``table`` if it is free (no owner), already
    ``owner``'s, or expired: the one lease rule of the relay and the maintenance jobs."""
    now = time.time()
    cur = c.execute(
        f"INSERT INTO {table} ({column}, owner, expires) VALUES (?, ?, ?) "
        f"ON CONFLICT ({column}) DO UPDATE SET owner = excluded.owner, expires = excluded.expires "
        f"WHERE {table}.owner IS NULL OR {table}.owner = excluded.owner OR {table}.expires < ?",
        (key, owner, now + ttl, now),
    )
    return cur.rowcount == 1


def _prefix_range(prefix: str) -> tuple[str, list[Any]]:
    """SQL (and parameters) restricting ``key`` to keys starting with ``prefix``, as an
    index range: ``key >= prefix AND key < successor(prefix)``."""
    upper = prefix_successor(prefix)
    if upper is None:
        return " AND key >= ?", [prefix]
    return " AND key >= ? AND key < ?", [prefix, upper]


# An inline manifest (dedup/manifest.py): its version byte, right after the magic.
_INLINE = f"substr(manifest, {len(MANIFEST_MAGIC) + 1}, 1) = X'{INLINE_VERSION:02x}'"

_REVIVE = "UPDATE chunks SET condemned_at=NULL WHERE condemned_at IS NOT NULL AND chunk_id IN ({})"


def _pack_record(row: tuple[Any, ...]) -> PackRecord:
    """A pack row's first five columns: pack_id, kek_id, kek_version, wrapped_dek, size."""
    return PackRecord(row[0], WrappedKey(row[1], row[2], row[3]), row[4])


def _in_batches(
    c: sqlite3.Connection, sql: str, values: list[Any], params: tuple[Any, ...] = (), batch: int = 500
) -> list[Any]:
    """Run ``sql`` (``params``, then one ``IN ({})`` placeholder) over ``values`` in batches;
    the first column of every row returned (nothing for statements that return no rows)."""
    out: list[Any] = []
    for i in range(0, len(values), batch):
        part = values[i : i + batch]
        out += [r[0] for r in c.execute(sql.format(",".join("?" * len(part))), (*params, *part)).fetchall()]
    return out


# The new version's seq is one more than the key's highest, computed in the same statement.
_INSERT_VERSION = (
    f"INSERT INTO objects ({_OBJECT_COLS}, seq) SELECT {','.join('?' * 16)}, "
    "(SELECT COALESCE(MAX(seq), 0) + 1 FROM objects WHERE bucket=? AND key=?)"
)


_Settled = tuple[asyncio.Future[Any], bool, Any]  # a write's future, whether it succeeded, its value
_Outcome = tuple[bool, Any]  # whether a write succeeded, and its value or exception

# A write touching at most this many rows may run on the event loop (see the module
# docstring): ~1 ms of statements at most. A put indexing more chunks goes to the thread.
LIGHT_ROWS = 256


# How long close() lets queued writes finish before failing the rest.
CLOSE_DRAIN_SECONDS = 30.0


def _closed_error() -> RuntimeError:
    return RuntimeError("the metadata store is closed")


def _settle(settled: list[_Settled]) -> None:
    """On a waiter's loop: hand each write its outcome (unless it was cancelled meanwhile)."""
    for fut, ok, value in settled:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _event(name: str, bucket: str, key: str, **detail: Any) -> str:
    return json.dumps({"eventName": name, "bucket": bucket, "key": key, "time": time.time(), **detail})


outbox_event = _event  # the object-change event JSON, shared with the PostgreSQL store


class SqliteMetadataStore:
    """The embedded metadata store: one SQLite file in the data dir."""

    index_survives_failed_commit = False  # the index rows are in the commit's transaction

    def __init__(self, path: Path) -> None:
        self._path = path
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meta-write")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meta-read")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._queue: list[_Queued] = []
        self._queue_lock = threading.Lock()
        self._draining = False  # someone owns the lane: a group is queued, running or committing
        self._committing = False  # a group is being committed (what pool_usage reports)
        self._closed = False  # close() began: no new writes are taken

    # -- plumbing -----------------------------------------------------------------------
    async def open(self) -> None:
        def setup() -> None:
            self._wconn = _connect(self._path)
            _migrate(self._wconn)

        await self._run_write_raw(setup)
        self._rconn = await asyncio.get_running_loop().run_in_executor(self._reader, _connect, self._path)

    async def close(self) -> None:
        """Take no new writes, let the queued ones commit (or fail) as usual, then close.

        Writes still queued after :data:`CLOSE_DRAIN_SECONDS` (the writer stuck behind
        another process's lock) fail with the store's "closed" error rather than being left
        unanswered."""
        with self._queue_lock:
            self._closed = True
        deadline = time.monotonic() + CLOSE_DRAIN_SECONDS
        while self._draining and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # light groups run on this loop: keep it turning
        with self._queue_lock:
            left, self._queue = self._queue, []
        if left:
            self._finish(left, [(False, _closed_error())] * len(left))
        for conn, pool in ((self._wconn, self._writer), (self._rconn, self._reader)):
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(pool, conn.close)
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    async def _run_write_raw(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn)

    async def _write(self, fn: Callable[[sqlite3.Connection], T], *, light: bool = False) -> T:
        """Run ``fn`` atomically, group-committed with concurrent writes.

        Writes queued while a commit is in flight run together in the next transaction, each
        inside its own savepoint: one write's failure rolls back only that write, and one
        fsync covers the whole group. ``light`` says ``fn`` runs a bounded handful of
        statements, so it may run on the event loop (see the module docstring).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._queue_lock:
            if self._closed:
                raise _closed_error()
            self._queue.append(_Queued(fn, fut, light))
            start, self._draining = not self._draining, True
        if start:
            if light:
                loop.call_soon(self._group_on_loop)
            else:
                self._writer.submit(self._drain)
        return await fut

    def _take(self, on_loop: bool) -> list[_Queued] | None:
        """Under the lock: the queued writes for the lane owner's next group, or None when
        the lane is handed on (nothing queued: released; a loop may not run a heavy write:
        passed to the writer thread; the thread holds an all-light group: passed to a loop)."""
        with self._queue_lock:
            batch = self._queue
            if not batch:
                self._draining = False
                return None
            if all(q.light for q in batch):
                if not on_loop:
                    loop = batch[0].fut.get_loop()
                    if loop.is_running():
                        with contextlib.suppress(RuntimeError):  # closed meanwhile: run it here
                            loop.call_soon_threadsafe(self._group_on_loop)
                            return None
            elif on_loop:
                self._writer.submit(self._drain)
                return None
            self._queue = []
            return batch

    def _group_on_loop(self) -> None:
        """On an event loop: run a group of light writes, then let the writer thread COMMIT."""
        batch = self._take(on_loop=True)
        if batch is None:
            return
        assert self._wconn is not None
        conn = self._wconn
        if not _begin_without_waiting(conn):
            self._writer.submit(self._run_and_drain, batch)
            return
        self._committing = True
        try:
            outcomes = self._run_writes(conn, [q.fn for q in batch])
        except BaseException as exc:  # a savepoint statement failed: the group is rolled back
            self._finish(batch, [(False, exc)] * len(batch))
            self._writer.submit(self._drain)
            return
        self._writer.submit(self._commit_and_drain, batch, outcomes)

    def _run_and_drain(self, batch: list[_Queued]) -> None:
        """On the writer thread: run and commit a group a loop could not start (another
        process held the write lock), then drain as usual."""
        self._commit_here(batch)
        self._drain()

    def _commit_and_drain(self, batch: list[_Queued], outcomes: list[_Outcome]) -> None:
        """On the writer thread: COMMIT the group a loop ran, answer it, and go on draining."""
        assert self._wconn is not None
        try:
            self._wconn.execute("COMMIT")
        except BaseException as exc:  # the COMMIT itself failed: nothing in the group happened
            _rollback(self._wconn)
            outcomes = [(False, exc)] * len(batch)
        self._finish(batch, outcomes)
        self._drain()

    def _drain(self) -> None:
        """On the writer thread: commit queued writes group after group until none is left
        (or a group of light writes goes to a loop), posting each group's outcomes to the
        loops its writers wait on."""
        while (batch := self._take(on_loop=False)) is not None:
            self._commit_here(batch)

    def _commit_here(self, batch: list[_Queued]) -> None:
        """On the writer thread: run and commit one group, then answer its writers."""
        assert self._wconn is not None
        conn = self._wconn
        self._committing = True
        try:
            conn.execute("BEGIN IMMEDIATE")
            outcomes = self._run_writes(conn, [q.fn for q in batch])
            conn.execute("COMMIT")
        except BaseException as exc:  # BEGIN, a savepoint or the COMMIT failed: nothing happened
            _rollback(conn)
            outcomes = [(False, exc)] * len(batch)
        self._finish(batch, outcomes)

    def _finish(self, batch: list[_Queued], outcomes: list[_Outcome]) -> None:
        """Post each write's outcome to the loop it waits on (the group is over)."""
        self._committing = False  # before any writer hears back
        by_loop: dict[asyncio.AbstractEventLoop, list[_Settled]] = {}
        for q, (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(q.fut.get_loop(), []).append((q.fut, ok, value))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these
                loop.call_soon_threadsafe(_settle, settled)

    @staticmethod
    def _run_writes(
        conn: sqlite3.Connection, fns: list[Callable[[sqlite3.Connection], Any]]
    ) -> list[_Outcome]:
        """Inside an open transaction: run each write in its own savepoint, so a write that
        raises is rolled back alone. A failing savepoint statement rolls back everything and
        raises."""
        outcomes: list[_Outcome] = []
        try:
            for fn in fns:
                conn.execute("SAVEPOINT w")
                try:
                    outcomes.append((True, fn(conn)))
                except Exception as exc:
                    conn.execute("ROLLBACK TO w")
                    outcomes.append((False, exc))
                conn.execute("RELEASE w")
        except BaseException:
            _rollback(conn)
            raise
        return outcomes

    async def _read_aside(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a long read (whole-table aggregates) on a connection and thread of its own, so
        it never holds up the request path's reader thread."""

        def run() -> T:
            conn = _connect(self._path)
            try:
                return fn(conn)
            finally:
                conn.close()

        return await asyncio.to_thread(run)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            assert self._rconn is not None
            return fn(self._rconn)

        return await asyncio.get_running_loop().run_in_executor(self._reader, run)

    # -- users and keys -----------------------------------------------------------------
    async def create_user(self, name: str, wrapped_dedup_key: WrappedKey) -> User:
        def tx(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO users VALUES (?,?,?,?,?)",
                (
                    name,
                    wrapped_dedup_key.kek_id,
                    wrapped_dedup_key.kek_version,
                    wrapped_dedup_key.blob,
                    time.time(),
                ),
            )

        await self._write(tx)
        return User(name, wrapped_dedup_key)

    async def get_user(self, name: str) -> User | None:
        row = await self._read(
            lambda c: c.execute(
                "SELECT name, kek_id, kek_version, dedup_key FROM users WHERE name=?", (name,)
            ).fetchone()
        )
        return None if row is None else User(row[0], WrappedKey(row[1], row[2], row[3]))

    async def put_access_key(self, key: AccessKey) -> None:
        w = key.wrapped_secret
        await self._write(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO access_keys VALUES (?,?,?,?,?,?)",
                (key.access_key, key.user, w.kek_id, w.kek_version, w.blob, time.time()),
            )
        )

    async def get_access_key(self, access_key: str) -> AccessKey | None:
        row = await self._read(
            lambda c: c.execute(
                "SELECT access_key, user, kek_id, kek_version, secret FROM access_keys WHERE access_key=?",
                (access_key,),
            ).fetchone()
        )
        return None if row is None else AccessKey(row[0], row[1], WrappedKey(row[2], row[3], row[4]))

    async def has_access_key_for(self, user: str) -> bool:
        row = await self._read(
            lambda c: c.execute("SELECT 1 FROM access_keys WHERE user=? LIMIT 1", (user,)).fetchone()
        )
        return row is not None

    # -- buckets ------------------------------------------------------------------------
    async def create_bucket(self, bucket: Bucket) -> bool:
        def tx(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "INSERT OR IGNORE INTO buckets VALUES (?,?,?,?)",
                (bucket.name, bucket.owner, bucket.region, bucket.created),
            )
            return cur.rowcount == 1

        return await self._write(tx)

    async def get_bucket(self, name: str) -> Bucket | None:
        row = await self._read(
            lambda c: c.execute(
                "SELECT name, owner, region, created FROM buckets WHERE name=?", (name,)
            ).fetchone()
        )
        return None if row is None else Bucket(*row)

    async def list_buckets(self, owner: str) -> list[Bucket]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT name, owner, region, created FROM buckets WHERE owner=? ORDER BY name", (owner,)
            ).fetchall()
        )
        return [Bucket(*r) for r in rows]

    async def delete_bucket(self, name: str) -> None:
        def tx(c: sqlite3.Connection) -> None:
            if c.execute("SELECT 1 FROM objects WHERE bucket=? LIMIT 1", (name,)).fetchone():
                raise S3Error("BucketNotEmpty", BucketName=name)
            c.execute(
                "DELETE FROM parts WHERE upload_id IN (SELECT upload_id FROM uploads WHERE bucket=?)", (name,)
            )
            c.execute("DELETE FROM uploads WHERE bucket=?", (name,))
            c.execute("DELETE FROM bucket_configs WHERE bucket=?", (name,))
            c.execute("DELETE FROM buckets WHERE name=?", (name,))

        await self._write(tx)

    async def put_bucket_config(self, bucket: str, name: str, body: str | None) -> None:
        def tx(c: sqlite3.Connection) -> None:
            if body is None:
                c.execute("DELETE FROM bucket_configs WHERE bucket=? AND name=?", (bucket, name))
            else:
                c.execute("INSERT OR REPLACE INTO bucket_configs VALUES (?,?,?)", (bucket, name, body))

        await self._write(tx)

    async def get_bucket_config(self, bucket: str, name: str) -> str | None:
        row = await self._read(
            lambda c: c.execute(
                "SELECT body FROM bucket_configs WHERE bucket=? AND name=?", (bucket, name)
            ).fetchone()
        )
        return None if row is None else row[0]

    # -- objects ------------------------------------------------------------------------
    @staticmethod
    def _index(c: sqlite3.Connection, staged: StagedData) -> tuple[int, int]:
        """Insert the packs' and chunks' rows (existing rows are kept); returns how many of
        each were new."""
        if not staged.packs and not staged.chunks:  # an inline object or a whole dedup hit
            return 0, 0
        now = time.time()
        packs = c.executemany(
            "INSERT OR IGNORE INTO packs (pack_id, kek_id, kek_version, wrapped_dek, size, created) "
            "VALUES (?,?,?,?,?,?)",
            [
                (p.pack_id, p.wrapped_dek.kek_id, p.wrapped_dek.kek_version, p.wrapped_dek.blob, p.size, now)
                for p in staged.packs
            ],
        ).rowcount
        chunks = c.executemany(
            "INSERT OR IGNORE INTO chunks (chunk_id, pack_id, offset, length, plain_len, flags, created) "
            "VALUES (?,?,?,?,?,?,?)",
            [
                (
                    n.chunk_id,
                    n.location.pack_id,
                    n.location.offset,
                    n.location.length,
                    n.location.plain_len,
                    n.location.flags,
                    now,
                )
                for n in staged.chunks
            ],
        ).rowcount
        return max(packs, 0), max(chunks, 0)

    @staticmethod
    def _claim(c: sqlite3.Connection, staged: StagedData, manifest: Manifest) -> None:
        """In a commit that makes ``manifest`` visible: revive every chunk it names (and every
        pack it wrote) that gc condemned or retired, and fail, committing nothing, if gc
        already swept one. So a dedup hit racing gc either keeps its chunks or is refused
        with a retryable error; an acknowledged object never points at swept data."""
        packs = [p.pack_id for p in staged.packs]
        if _in_batches(c, "SELECT pack_id FROM pack_tombstones WHERE pack_id IN ({})", packs):
            raise S3Error("SlowDown", "A pack of this upload was garbage-collected meanwhile; retry.")
        _in_batches(c, "UPDATE packs SET retired_at=NULL WHERE pack_id IN ({})", packs)
        ids = list(dict.fromkeys(manifest.indexed_ids))
        if len(_in_batches(c, "SELECT chunk_id FROM chunks WHERE chunk_id IN ({})", ids)) != len(ids):
            raise S3Error("SlowDown", "A chunk this upload reuses was garbage-collected meanwhile; retry.")
        _in_batches(c, _REVIVE, ids)

    @staticmethod
    def _latest(c: sqlite3.Connection, bucket: str, key: str) -> tuple[str, str, int] | None:
        """(version id, etag, delete marker) of the key's latest version."""
        return c.execute(
            "SELECT version_id, etag, delete_marker FROM objects WHERE bucket=? AND key=? AND latest=1",
            (bucket, key),
        ).fetchone()

    @classmethod
    def _put_version(
        cls, c: sqlite3.Connection, v: ObjectVersion, event: str, condition: WriteCondition | None = None
    ) -> None:
        """Make ``v`` the key's latest version; a "null" version replaces the previous null one."""
        if condition is not None:
            latest = cls._latest(c, v.bucket, v.key)
            condition.check(None if latest is None or latest[2] else latest[1])
        if v.version_id == NULL_VERSION:
            c.execute(
                "DELETE FROM objects WHERE bucket=? AND key=? AND version_id=?",
                (v.bucket, v.key, NULL_VERSION),
            )
        c.execute("UPDATE objects SET latest=0 WHERE bucket=? AND key=? AND latest=1", (v.bucket, v.key))
        c.execute(_INSERT_VERSION, (*version_values(v), 1, v.bucket, v.key))
        detail = {} if v.delete_marker else {"size": v.size, "eTag": v.etag}
        c.execute(
            "INSERT INTO outbox (created, event) VALUES (?, ?)",
            (time.time(), _event(event, v.bucket, v.key, versionId=v.version_id, **detail)),
        )

    async def put_object(
        self,
        version: ObjectVersion,
        staged: StagedData,
        event: str = "ObjectCreated:Put",
        condition: WriteCondition | None = None,
    ) -> None:
        def tx(c: sqlite3.Connection) -> None:
            if not c.execute("SELECT 1 FROM buckets WHERE name=?", (version.bucket,)).fetchone():
                raise S3Error("NoSuchBucket", BucketName=version.bucket)
            self._index(c, staged)
            self._claim(c, staged, version.manifest)
            self._put_version(c, version, event, condition)

        rows = len(staged.packs) + len(staged.chunks) + len(version.manifest.indexed_ids)
        await self._write(tx, light=rows <= LIGHT_ROWS)

    async def get_object(self, bucket: str, key: str, version_id: str | None = None) -> ObjectVersion | None:
        if version_id is None:
            sql, params = (
                f"SELECT {_OBJECT_COLS} FROM objects WHERE bucket=? AND key=? AND latest=1",
                (bucket, key),
            )
        else:
            sql = f"SELECT {_OBJECT_COLS} FROM objects WHERE bucket=? AND key=? AND version_id=?"
            params = (bucket, key, version_id)
        row = await self._read(lambda c: c.execute(sql, params).fetchone())
        return None if row is None else version_from_row(row)

    async def delete_object(
        self, bucket: str, key: str, version_id: str | None = None, marker: ObjectVersion | None = None
    ) -> DeleteOutcome:
        """Delete one version (``version_id``), or the key's current state: with ``marker`` a
        delete marker becomes the latest version (versioned buckets), without it the null
        version is removed (unversioned buckets)."""

        def tx(c: sqlite3.Connection) -> DeleteOutcome:
            if version_id is None and marker is not None:
                self._put_version(c, marker, "ObjectRemoved:DeleteMarkerCreated")
                return DeleteOutcome(marker.version_id, True, True)
            target = NULL_VERSION if version_id is None else version_id
            row = c.execute(
                "SELECT delete_marker, latest FROM objects WHERE bucket=? AND key=? AND version_id=?",
                (bucket, key, target),
            ).fetchone()
            if row is None:
                return DeleteOutcome(version_id, False, False)
            c.execute("DELETE FROM objects WHERE bucket=? AND key=? AND version_id=?", (bucket, key, target))
            if row[1]:  # the latest version went: the next most recent one becomes latest
                c.execute(
                    "UPDATE objects SET latest=1 WHERE bucket=? AND key=? AND seq="
                    "(SELECT MAX(seq) FROM objects WHERE bucket=? AND key=?)",
                    (bucket, key, bucket, key),
                )
            c.execute(
                "INSERT INTO outbox (created, event) VALUES (?, ?)",
                (time.time(), _event("ObjectRemoved:Delete", bucket, key, versionId=target)),
            )
            return DeleteOutcome(version_id, bool(row[0]), True)

        return await self._write(tx, light=True)

    async def set_object_tags(
        self, bucket: str, key: str, version_id: str | None, tags: dict[str, str]
    ) -> bool:
        def tx(c: sqlite3.Connection) -> bool:
            where = "version_id=?" if version_id is not None else "latest=1 AND delete_marker=0"
            params = (json.dumps(tags), bucket, key, *([version_id] if version_id is not None else []))
            cur = c.execute(f"UPDATE objects SET tags=? WHERE bucket=? AND key=? AND {where}", params)
            return cur.rowcount > 0

        return await self._write(tx)

    async def list_versions(
        self, bucket: str, prefix: str, key: str, inclusive: bool, version_marker: str, limit: int
    ) -> list[ObjectVersion]:
        """Every version and delete marker, by key, newest first, after (key, version_marker)."""
        where, params = _prefix_range(prefix)
        sql = f"SELECT {_OBJECT_COLS} FROM objects WHERE bucket=?{where}"
        params.insert(0, bucket)
        if inclusive:
            sql += " AND key >= ?"
            params.append(key)
        elif key and version_marker:
            sql += (
                " AND (key > ? OR (key = ? AND seq < "
                "(SELECT seq FROM objects WHERE bucket=? AND key=? AND version_id=?)))"
            )
            params += [key, key, bucket, key, version_marker]
        elif key:
            sql += " AND key > ?"
            params.append(key)
        sql += " ORDER BY key, seq DESC LIMIT ?"
        params.append(limit)
        rows = await self._read(lambda c: c.execute(sql, params).fetchall())
        return [version_from_row(r) for r in rows]

    async def list_objects(
        self, bucket: str, prefix: str, after: str, inclusive: bool, limit: int
    ) -> list[ListedObject]:
        where, params = _prefix_range(prefix)
        sql = (
            "SELECT key, size, etag, last_modified, storage_class FROM objects "
            f"WHERE bucket=? AND latest=1 AND delete_marker=0{where} AND key {'>=' if inclusive else '>'} ?"
        )
        params = [bucket, *params, after]
        sql += " ORDER BY key LIMIT ?"
        params.append(limit)
        rows = await self._read(lambda c: c.execute(sql, params).fetchall())
        return [ListedObject(*r) for r in rows]

    # -- multipart ----------------------------------------------------------------------
    async def create_upload(self, upload: MultipartUpload) -> None:
        u = upload
        await self._write(
            lambda c: c.execute(
                f"INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                upload_values(u),
            )
        )

    async def get_upload(self, bucket: str, upload_id: str) -> MultipartUpload | None:
        row = await self._read(
            lambda c: c.execute(
                f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE upload_id=? AND bucket=?", (upload_id, bucket)
            ).fetchone()
        )
        return None if row is None else upload_from_row(row)

    async def list_uploads(
        self, bucket: str, prefix: str, key: str, inclusive: bool, upload_id_marker: str, limit: int
    ) -> list[MultipartUpload]:
        where, params = _prefix_range(prefix)
        sql = f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE bucket=?{where}"
        params.insert(0, bucket)
        key_marker = key
        if inclusive:
            sql += " AND key >= ?"
            params.append(key_marker)
        elif key_marker:
            if upload_id_marker:
                # Resume after (key_marker, upload_id_marker) in (key, initiated, upload_id) order.
                sql += (
                    " AND (key > ? OR (key = ? AND (initiated, upload_id) >"
                    " (SELECT initiated, upload_id FROM uploads WHERE upload_id = ?)))"
                )
                params += [key_marker, key_marker, upload_id_marker]
            else:
                sql += " AND key > ?"
                params.append(key_marker)
        sql += " ORDER BY key, initiated, upload_id LIMIT ?"
        params.append(limit)
        rows = await self._read(lambda c: c.execute(sql, params).fetchall())
        return [upload_from_row(r) for r in rows]

    async def put_part(self, upload_id: str, part: Part, staged: StagedData) -> None:
        def tx(c: sqlite3.Connection) -> None:
            if not c.execute("SELECT 1 FROM uploads WHERE upload_id=?", (upload_id,)).fetchone():
                raise S3Error("NoSuchUpload", UploadId=upload_id)
            self._index(c, staged)
            self._claim(c, staged, part.manifest)
            c.execute(
                "INSERT OR REPLACE INTO parts VALUES (?,?,?,?,?,?,?)",
                (
                    upload_id,
                    part.part_number,
                    part.size,
                    part.etag,
                    part.last_modified,
                    part.manifest.encode(),
                    json.dumps(part.checksum),
                ),
            )

        await self._write(tx)

    async def list_parts(self, upload_id: str, after: int, limit: int) -> list[Part]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT part_number, size, etag, last_modified, manifest, checksum FROM parts "
                "WHERE upload_id=? AND part_number>? ORDER BY part_number LIMIT ?",
                (upload_id, after, limit),
            ).fetchall()
        )
        return [Part(r[0], r[1], r[2], r[3], Manifest.decode(r[4]), json.loads(r[5])) for r in rows]

    async def complete_upload(
        self, upload_id: str, version: ObjectVersion, condition: WriteCondition | None = None
    ) -> bool:
        def tx(c: sqlite3.Connection) -> bool:
            cur = c.execute("DELETE FROM uploads WHERE upload_id=?", (upload_id,))
            if cur.rowcount == 0:
                return False
            c.execute("DELETE FROM parts WHERE upload_id=?", (upload_id,))
            self._put_version(c, version, "ObjectCreated:CompleteMultipartUpload", condition)
            return True

        return await self._write(tx)

    async def abort_upload(self, upload_id: str) -> bool:
        def tx(c: sqlite3.Connection) -> bool:
            c.execute("DELETE FROM parts WHERE upload_id=?", (upload_id,))
            return c.execute("DELETE FROM uploads WHERE upload_id=?", (upload_id,)).rowcount > 0

        return await self._write(tx)

    # -- chunk index and packs ----------------------------------------------------------
    async def lookup_chunks(
        self, chunk_ids: list[bytes], *, live_only: bool = False
    ) -> dict[bytes, ChunkLocation]:
        if not chunk_ids:
            return {}
        live = " AND condemned_at IS NULL" if live_only else ""

        def run(c: sqlite3.Connection) -> dict[bytes, ChunkLocation]:
            found: dict[bytes, ChunkLocation] = {}
            for i in range(0, len(chunk_ids), 500):
                batch = chunk_ids[i : i + 500]
                rows = c.execute(
                    "SELECT chunk_id, pack_id, offset, length, plain_len, flags FROM chunks "
                    f"WHERE chunk_id IN ({','.join('?' * len(batch))}){live}",
                    batch,
                ).fetchall()
                for r in rows:
                    found[r[0]] = ChunkLocation(r[1], r[2], r[3], r[4], r[5])
            return found

        return await self._read(run)

    async def get_pack(self, pack_id: str) -> PackRecord | None:
        row = await self._read(
            lambda c: c.execute(
                "SELECT pack_id, kek_id, kek_version, wrapped_dek, size FROM packs WHERE pack_id=?",
                (pack_id,),
            ).fetchone()
        )
        return None if row is None else PackRecord(row[0], WrappedKey(row[1], row[2], row[3]), row[4])

    # -- maintenance scans --------------------------------------------------------------
    async def scan_versions(self, after: tuple[str, str, str] | None, limit: int) -> list[ObjectVersion]:
        return await self._scan_versions(after, limit, [])

    async def scan_inline_versions(
        self, after: tuple[str, str, str] | None, limit: int
    ) -> list[ObjectVersion]:
        return await self._scan_versions(after, limit, [_INLINE])

    async def _scan_versions(
        self, after: tuple[str, str, str] | None, limit: int, where: list[str]
    ) -> list[ObjectVersion]:
        """One keyset page of the versions matching every condition of ``where``."""
        params: list[Any] = []
        if after is not None:
            where = ["(bucket, key, version_id) > (?, ?, ?)", *where]
            params += after
        sql = f"SELECT {_OBJECT_COLS} FROM objects"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY bucket, key, version_id LIMIT ?"
        rows = await self._read(lambda c: c.execute(sql, [*params, limit]).fetchall())
        return [version_from_row(r) for r in rows]

    async def scan_parts(
        self, after: tuple[str, int] | None, limit: int
    ) -> list[tuple[MultipartUpload, Part]]:
        cols = ", ".join(f"u.{col.strip()}" for col in UPLOAD_COLUMNS.split(","))
        sql = (
            f"SELECT {cols}, p.part_number, p.size, p.etag, p.last_modified, p.manifest, p.checksum "
            "FROM parts p JOIN uploads u ON u.upload_id = p.upload_id"
        )
        params: list[Any] = []
        if after is not None:
            sql += " WHERE (p.upload_id, p.part_number) > (?, ?)"
            params += after
        sql += " ORDER BY p.upload_id, p.part_number LIMIT ?"
        rows = await self._read(lambda c: c.execute(sql, [*params, limit]).fetchall())
        n = len(UPLOAD_COLUMNS.split(","))
        return [
            (
                upload_from_row(r[:n]),
                Part(r[n], r[n + 1], r[n + 2], r[n + 3], Manifest.decode(r[n + 4]), json.loads(r[n + 5])),
            )
            for r in rows
        ]

    async def restore_index(self, staged: StagedData) -> tuple[int, int]:
        return await self._write(lambda c: self._index(c, staged))

    async def storage_stats(self) -> StorageStats:
        def run(c: sqlite3.Connection) -> StorageStats:
            c.execute("BEGIN")  # one snapshot for every aggregate
            try:
                versions = c.execute(
                    "SELECT COALESCE(SUM(delete_marker = 0), 0), COALESCE(SUM(delete_marker), 0), "
                    "COALESCE(SUM(size), 0), COALESCE(SUM(CASE WHEN latest = 1 AND delete_marker = 0 "
                    "THEN 1 ELSE 0 END), 0), COALESCE(SUM(CASE WHEN latest = 1 AND delete_marker = 0 "
                    "THEN size ELSE 0 END), 0), "
                    f"COALESCE(SUM({_INLINE}), 0), COALESCE(SUM(CASE WHEN {_INLINE} THEN size END), 0), "
                    f"COALESCE(SUM(CASE WHEN {_INLINE} THEN length(manifest) END), 0) FROM objects"
                ).fetchone()
                by_class = c.execute(
                    "SELECT storage_class, SUM(size) FROM objects WHERE delete_marker = 0 "
                    "GROUP BY storage_class"
                ).fetchall()
                parts = c.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM parts").fetchone()
                chunks = c.execute(
                    "SELECT COUNT(*), COALESCE(SUM(plain_len), 0), COALESCE(SUM(length), 0) FROM chunks"
                ).fetchone()
                packs = c.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM packs").fetchone()
            finally:
                c.execute("COMMIT")
            return StorageStats(
                objects=versions[3],
                versions=versions[0],
                delete_markers=versions[1],
                version_bytes=versions[2],
                current_bytes=versions[4],
                parts=parts[0],
                part_bytes=parts[1],
                chunks=chunks[0],
                chunk_plain_bytes=chunks[1],
                chunk_stored_bytes=chunks[2],
                packs=packs[0],
                pack_bytes=packs[1],
                bytes_by_class={name: total for name, total in by_class},
                inline_versions=versions[5],
                inline_plain_bytes=versions[6],
                inline_bytes=versions[7],
            )

        return await self._read_aside(run)

    # -- garbage collection and key jobs (MaintenanceStore) -----------------------------
    async def settle_commits(self) -> None:
        """Nothing to wait for: a commit's claim and its version are one transaction."""

    async def scan_chunks(self, after: bytes | None, limit: int) -> list[IndexedChunk]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT chunk_id, pack_id, length, created, condemned_at FROM chunks "
                "WHERE chunk_id > ? ORDER BY chunk_id LIMIT ?",
                (after or b"", limit),
            ).fetchall()
        )
        return [IndexedChunk(*r) for r in rows]

    async def condemn_chunks(self, chunk_ids: list[bytes], at: float) -> int:
        sql = "UPDATE chunks SET condemned_at=? WHERE condemned_at IS NULL AND chunk_id IN ({}) RETURNING 1"
        return await self._write(lambda c: len(_in_batches(c, sql, chunk_ids, (at,))))

    async def revive_chunks(self, chunk_ids: list[bytes]) -> int:
        return await self._write(lambda c: len(_in_batches(c, _REVIVE + " RETURNING 1", chunk_ids)))

    async def sweep_chunks(self, chunk_ids: list[bytes], condemned_before: float) -> tuple[int, int]:
        sql = "DELETE FROM chunks WHERE condemned_at < ? AND chunk_id IN ({}) RETURNING length"

        def tx(c: sqlite3.Connection) -> tuple[int, int]:
            lengths = _in_batches(c, sql, chunk_ids, (condemned_before,))
            return len(lengths), sum(lengths)

        return await self._write(tx)

    _PACK_COLS = "p.pack_id, p.kek_id, p.kek_version, p.wrapped_dek, p.size, p.created, p.retired_at"

    async def scan_pack_usage(self, after: str | None, limit: int) -> list[PackUsage]:
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {self._PACK_COLS}, "
                "(SELECT COUNT(*) FROM chunks WHERE chunks.pack_id = p.pack_id), "
                "(SELECT COALESCE(SUM(length), 0) FROM chunks WHERE chunks.pack_id = p.pack_id) "
                "FROM packs p WHERE p.pack_id > ? ORDER BY p.pack_id LIMIT ?",
                (after or "", limit),
            ).fetchall()
        )
        return [PackUsage(_pack_record(r), r[5], r[6], r[7], r[8]) for r in rows]

    async def pack_chunks(self, pack_id: str, after_offset: int, limit: int) -> list[NewChunk]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT chunk_id, pack_id, offset, length, plain_len, flags FROM chunks "
                "WHERE pack_id=? AND offset>? ORDER BY offset LIMIT ?",
                (pack_id, after_offset, limit),
            ).fetchall()
        )
        return [NewChunk(r[0], ChunkLocation(*r[1:])) for r in rows]

    async def retire_packs(self, pack_ids: list[str], at: float) -> list[str]:
        sql = (
            "UPDATE packs SET retired_at=? WHERE retired_at IS NULL AND pack_id IN ({}) "
            "AND NOT EXISTS (SELECT 1 FROM chunks WHERE chunks.pack_id = packs.pack_id) RETURNING pack_id"
        )
        return await self._write(lambda c: _in_batches(c, sql, pack_ids, (at,)))

    async def delete_retired_packs(self, retired_before: float, limit: int) -> list[PackRecord]:
        def tx(c: sqlite3.Connection) -> list[PackRecord]:
            rows = c.execute(
                "DELETE FROM packs WHERE pack_id IN (SELECT pack_id FROM packs WHERE retired_at < ? "
                "AND NOT EXISTS (SELECT 1 FROM chunks WHERE chunks.pack_id = packs.pack_id) LIMIT ?) "
                "RETURNING pack_id, kek_id, kek_version, wrapped_dek, size",
                (retired_before, limit),
            ).fetchall()
            now = time.time()
            c.executemany("INSERT OR IGNORE INTO pack_tombstones VALUES (?, ?)", [(r[0], now) for r in rows])
            return [_pack_record(r) for r in rows]

        return await self._write(tx)

    async def tombstone_orphans(self, pack_ids: list[str], at: float) -> list[str]:
        def tx(c: sqlite3.Connection) -> list[str]:
            rowed = set(_in_batches(c, "SELECT pack_id FROM packs WHERE pack_id IN ({})", pack_ids))
            orphans = [p for p in pack_ids if p not in rowed]
            c.executemany("INSERT OR IGNORE INTO pack_tombstones VALUES (?, ?)", [(p, at) for p in orphans])
            return orphans

        return await self._write(tx)

    async def prune_tombstones(self, before: float) -> int:
        return await self._write(
            lambda c: c.execute("DELETE FROM pack_tombstones WHERE deleted < ?", (before,)).rowcount
        )

    async def repoint_chunks(self, pack: PackRecord, moves: list[ChunkMove]) -> int:
        def tx(c: sqlite3.Connection) -> int:
            self._index(c, StagedData([pack], []))
            moved = 0
            for m in moves:
                loc = m.location
                moved += c.execute(
                    "UPDATE chunks SET pack_id=?, offset=?, length=?, flags=? "
                    "WHERE chunk_id=? AND pack_id=? AND offset=?",
                    (loc.pack_id, loc.offset, loc.length, loc.flags, m.chunk_id, m.old_pack_id, m.old_offset),
                ).rowcount
            return moved

        return await self._write(tx)

    # (table, id column, wrapped-key column) of each kind of row that holds a wrapped key
    _WRAPPED: dict[str, tuple[str, str, str]] = {
        "pack": ("packs", "pack_id", "wrapped_dek"),
        "user": ("users", "name", "dedup_key"),
        "access_key": ("access_keys", "access_key", "secret"),
    }

    async def scan_wrapped_keys(
        self, kind: WrappedKeyKind, kek_id: str, below_version: int, after: str | None, limit: int
    ) -> list[tuple[str, WrappedKey]]:
        table, id_col, blob_col = self._WRAPPED[kind]
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {id_col}, kek_id, kek_version, {blob_col} FROM {table} "
                f"WHERE kek_id=? AND kek_version<? AND {id_col}>? ORDER BY {id_col} LIMIT ?",
                (kek_id, below_version, after or "", limit),
            ).fetchall()
        )
        return [(r[0], WrappedKey(r[1], r[2], r[3])) for r in rows]

    async def rewrap_keys(self, kind: WrappedKeyKind, rows: list[tuple[str, WrappedKey, WrappedKey]]) -> int:
        table, id_col, blob_col = self._WRAPPED[kind]

        def tx(c: sqlite3.Connection) -> int:
            return sum(
                c.execute(
                    f"UPDATE {table} SET kek_id=?, kek_version=?, {blob_col}=? "
                    f"WHERE {id_col}=? AND kek_id=? AND kek_version=? AND {blob_col}=?",
                    (new.kek_id, new.kek_version, new.blob, row_id, old.kek_id, old.kek_version, old.blob),
                ).rowcount
                for row_id, old, new in rows
            )

        return await self._write(tx)

    async def replace_manifest(
        self, bucket: str, key: str, version_id: str, old: Manifest, new: Manifest
    ) -> bool:
        check_replacement(old, new)
        sql = "UPDATE objects SET manifest=? WHERE bucket=? AND key=? AND version_id=? AND manifest=?"
        params = (new.encode(), bucket, key, version_id, old.encode())
        return await self._write(lambda c: c.execute(sql, params).rowcount == 1)

    async def claim_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        return await self._write(lambda c: _claim(c, "leases", "name", name, owner, ttl_seconds))

    async def release_lease(self, name: str, owner: str) -> None:
        await self._write(lambda c: c.execute("DELETE FROM leases WHERE name=? AND owner=?", (name, owner)))

    async def lease_holder(self, name: str) -> str | None:
        row = await self._read(
            lambda c: c.execute(
                "SELECT owner FROM leases WHERE name=? AND expires >= ?", (name, time.time())
            ).fetchone()
        )
        return None if row is None else str(row[0])

    async def get_job(self, name: str) -> dict[str, Any] | None:
        row = await self._read(
            lambda c: c.execute("SELECT state FROM maintenance_jobs WHERE name=?", (name,)).fetchone()
        )
        return None if row is None else json.loads(row[0])

    async def put_job(self, name: str, state: dict[str, Any] | None) -> None:
        def tx(c: sqlite3.Connection) -> None:
            if state is None:
                c.execute("DELETE FROM maintenance_jobs WHERE name=?", (name,))
            else:
                row = (name, json.dumps(state), time.time())
                c.execute("INSERT OR REPLACE INTO maintenance_jobs VALUES (?, ?, ?)", row)

        await self._write(tx)

    # -- event outbox -------------------------------------------------------------------
    async def outbox_shards(self) -> int:
        return 1

    async def read_outbox(self, after: int, limit: int, shard: int = 0) -> list[OutboxEvent]:
        if shard != 0:
            raise ValueError(f"no outbox shard {shard} (there is 1)")
        rows = await self._read(
            lambda c: c.execute(
                "SELECT seq, created, event FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        )
        return [OutboxEvent.from_row(*r) for r in rows]

    # -- event relay: cursor and lease (one row per outbox shard) -----------------------
    async def get_relay_cursor(self, shard: int) -> int:
        row = await self._read(
            lambda c: c.execute("SELECT cursor FROM relay_state WHERE shard=?", (shard,)).fetchone()
        )
        return 0 if row is None else int(row[0])

    async def advance_relay_cursor(self, shard: int, seq: int) -> None:
        await self._write(
            lambda c: c.execute(
                "INSERT INTO relay_state (shard, cursor) VALUES (?, ?) "
                "ON CONFLICT (shard) DO UPDATE SET cursor = MAX(cursor, excluded.cursor)",
                (shard, seq),
            )
        )

    async def claim_relay(self, shard: int, owner: str, ttl_seconds: float) -> bool:
        """Take the shard's lease if it is free, expired or already ours; renew it."""

        return await self._write(lambda c: _claim(c, "relay_state", "shard", shard, owner, ttl_seconds))

    async def release_relay(self, shard: int, owner: str) -> None:
        await self._write(
            lambda c: c.execute(
                "UPDATE relay_state SET owner = NULL, expires = 0 WHERE shard=? AND owner=?", (shard, owner)
            )
        )

    async def trim_outbox(self, shard: int, before: int, limit: int) -> int:
        """Delete up to ``limit`` outbox rows with seq < ``before`` that the relay published."""
        return await self._write(
            lambda c: (
                c.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE seq < ? AND seq <= "
                    "(SELECT COALESCE(MAX(cursor), 0) FROM relay_state WHERE shard=?) ORDER BY seq LIMIT ?)",
                    (before, shard, limit),
                ).rowcount
            )
        )

    async def expire_outbox(self, shard: int, created_before: float, limit: int, published_only: bool) -> int:
        """Delete those of the ``limit`` oldest outbox rows that were created before
        ``created_before`` (and, with ``published_only``, that the relay published). Only the
        oldest rows are looked at, so a call costs the same however long the outbox is."""
        return await self._write(
            lambda c: (
                c.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM (SELECT seq, created FROM outbox "
                    "ORDER BY seq LIMIT ?) WHERE created < ? AND (NOT ? OR seq <= "
                    "(SELECT COALESCE(MAX(cursor), 0) FROM relay_state WHERE shard=?)))",
                    (limit, created_before, published_only, shard),
                ).rowcount
            )
        )

    # -- audit log ----------------------------------------------------------------------
    _AUDIT_COLS = (
        "time, request_id, user, access_key, action, bucket, key, version_id, ip, user_agent, status"
    )

    async def append_audit(self, records: list[AuditRecord]) -> None:
        if not records:
            return

        def tx(c: sqlite3.Connection) -> None:
            c.executemany(
                f"INSERT INTO audit ({self._AUDIT_COLS}) VALUES ({','.join('?' * 11)})",
                [
                    (r.time, r.request_id, r.user, r.access_key, r.action, r.bucket, r.key,
                     r.version_id, r.ip, r.user_agent, r.status)
                    for r in records
                ],
            )  # fmt: skip
            now = time.time()
            c.executemany(
                "INSERT INTO outbox (created, event) VALUES (?, ?)",
                [(now, json.dumps(r.to_event())) for r in records],
            )

        await self._write(tx, light=len(records) <= LIGHT_ROWS)

    async def read_audit(self, after: int, limit: int) -> list[AuditRecord]:
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {self._AUDIT_COLS}, seq FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        )
        return [AuditRecord(*r) for r in rows]

    # -- health -------------------------------------------------------------------------
    async def ping(self) -> None:
        """A read on the reader and an (empty) write transaction through the writer's group
        commit: fails or hangs when the file is unreadable, or locked by another process."""
        await self._read(lambda c: c.execute("SELECT version FROM schema_version").fetchone())
        await self._write(lambda c: c.execute("SELECT 1").fetchone())

    def pool_usage(self) -> PoolUsage:
        """The one writer connection: busy while a write group commits; ``waiting`` writes
        are queued for the next group."""
        return PoolUsage(in_use=int(self._committing), size=1, waiting=len(self._queue))
