"""SQLite implementation of the metadata store, for the embedded default.

One writer thread owns the write connection, so each write transaction runs start to finish
in one synchronous call (no interleaving between coroutines); writes that arrive while a
commit is in flight are group-committed together, each in its own savepoint. A second
connection in its own thread serves reads concurrently (WAL mode). ``synchronous=FULL`` makes a commit durable
before the client is answered.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from crypto.kek import WrappedKey
from dedup.manifest import Manifest
from dedup.pack import ChunkLocation
from gateway.events import OutboxEvent
from gateway.meta.keyorder import prefix_successor
from gateway.meta.models import (
    NULL_VERSION,
    AccessKey,
    Bucket,
    DeleteOutcome,
    ListedObject,
    MultipartUpload,
    ObjectVersion,
    PackRecord,
    Part,
    StagedData,
    User,
    WriteCondition,
)
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
}
SCHEMA_VERSION = max(MIGRATIONS)

_OBJECT_COLS = (
    "bucket, key, version_id, size, etag, last_modified, manifest, content_type, headers, "
    "user_meta, checksum, parts, storage_class, delete_marker, tags, latest"
)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


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


def _row_to_version(row: tuple[Any, ...]) -> ObjectVersion:
    return ObjectVersion(
        bucket=row[0],
        key=row[1],
        version_id=row[2],
        size=row[3],
        etag=row[4],
        last_modified=row[5],
        manifest=Manifest.decode(row[6]),
        content_type=row[7],
        headers=json.loads(row[8]),
        user_meta=json.loads(row[9]),
        checksum=json.loads(row[10]),
        parts=row[11],
        storage_class=row[12],
        delete_marker=bool(row[13]),
        tags=json.loads(row[14]),
        is_latest=bool(row[15]),
    )


def _version_params(v: ObjectVersion) -> tuple[Any, ...]:
    return (
        v.bucket,
        v.key,
        v.version_id,
        v.size,
        v.etag,
        v.last_modified,
        v.manifest.encode(),
        v.content_type,
        json.dumps(v.headers),
        json.dumps(v.user_meta),
        json.dumps(v.checksum),
        v.parts,
        v.storage_class,
        int(v.delete_marker),
        json.dumps(v.tags),
    )


def _prefix_range(prefix: str) -> tuple[str, list[Any]]:
    """SQL (and parameters) restricting ``key`` to keys starting with ``prefix``, as an
    index range: ``key >= prefix AND key < successor(prefix)``."""
    upper = prefix_successor(prefix)
    if upper is None:
        return " AND key >= ?", [prefix]
    return " AND key >= ? AND key < ?", [prefix, upper]


def _event(name: str, bucket: str, key: str, **detail: Any) -> str:
    return json.dumps({"eventName": name, "bucket": bucket, "key": key, "time": time.time(), **detail})


class SqliteMetadataStore:
    """The embedded metadata store: one SQLite file in the data dir."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meta-write")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meta-read")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._queue: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Future[None] | None = None

    # -- plumbing -----------------------------------------------------------------------
    async def open(self) -> None:
        def setup() -> None:
            self._wconn = _connect(self._path)
            _migrate(self._wconn)

        await self._run_write_raw(setup)
        self._rconn = await asyncio.get_running_loop().run_in_executor(self._reader, _connect, self._path)

    async def close(self) -> None:
        for conn, pool in ((self._wconn, self._writer), (self._rconn, self._reader)):
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(pool, conn.close)
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    async def _run_write_raw(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` atomically on the writer thread, group-committed with concurrent writes.

        Writes queued while a commit is in flight run together in the next transaction, each
        inside its own savepoint: one write's failure rolls back only that write, and one
        fsync covers the whole group.
        """
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return await fut

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                outcomes = await self._run_write_raw(lambda b=batch: self._commit_group([fn for fn, _ in b]))
            except BaseException as exc:  # the COMMIT itself failed: nothing in the group happened
                outcomes = [(False, exc)] * len(batch)
            for (_, fut), (ok, value) in zip(batch, outcomes, strict=True):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def _commit_group(self, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
        assert self._wconn is not None
        conn = self._wconn
        outcomes: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
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
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return outcomes

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
    def _index(c: sqlite3.Connection, staged: StagedData) -> None:
        now = time.time()
        c.executemany(
            "INSERT OR IGNORE INTO packs VALUES (?,?,?,?,?,?)",
            [
                (p.pack_id, p.wrapped_dek.kek_id, p.wrapped_dek.kek_version, p.wrapped_dek.blob, p.size, now)
                for p in staged.packs
            ],
        )
        c.executemany(
            "INSERT OR IGNORE INTO chunks VALUES (?,?,?,?,?,?,?)",
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
        )

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
        (seq,) = c.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM objects WHERE bucket=? AND key=?", (v.bucket, v.key)
        ).fetchone()
        c.execute("UPDATE objects SET latest=0 WHERE bucket=? AND key=? AND latest=1", (v.bucket, v.key))
        c.execute(
            f"INSERT INTO objects ({_OBJECT_COLS}, seq) VALUES ({','.join('?' * 17)})",
            (*_version_params(v), 1, seq),
        )
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
            self._put_version(c, version, event, condition)

        await self._write(tx)

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
        return None if row is None else _row_to_version(row)

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

        return await self._write(tx)

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
        return [_row_to_version(r) for r in rows]

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
                "INSERT INTO uploads VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    u.upload_id,
                    u.bucket,
                    u.key,
                    u.initiated,
                    u.owner,
                    u.content_type,
                    json.dumps(u.headers),
                    json.dumps(u.user_meta),
                    u.checksum_algorithm,
                    u.checksum_type,
                    json.dumps(u.tags),
                ),
            )
        )

    _UPLOAD_COLS = (
        "upload_id, bucket, key, initiated, owner, content_type, headers, user_meta, "
        "checksum_algorithm, checksum_type, tags"
    )

    @staticmethod
    def _row_to_upload(row: tuple[Any, ...]) -> MultipartUpload:
        return MultipartUpload(
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            json.loads(row[6]),
            json.loads(row[7]),
            row[8],
            row[9],
            json.loads(row[10]),
        )

    async def get_upload(self, bucket: str, upload_id: str) -> MultipartUpload | None:
        row = await self._read(
            lambda c: c.execute(
                f"SELECT {self._UPLOAD_COLS} FROM uploads WHERE upload_id=? AND bucket=?", (upload_id, bucket)
            ).fetchone()
        )
        return None if row is None else self._row_to_upload(row)

    async def list_uploads(
        self, bucket: str, prefix: str, key: str, inclusive: bool, upload_id_marker: str, limit: int
    ) -> list[MultipartUpload]:
        where, params = _prefix_range(prefix)
        sql = f"SELECT {self._UPLOAD_COLS} FROM uploads WHERE bucket=?{where}"
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
        return [self._row_to_upload(r) for r in rows]

    async def put_part(self, upload_id: str, part: Part, staged: StagedData) -> None:
        def tx(c: sqlite3.Connection) -> None:
            if not c.execute("SELECT 1 FROM uploads WHERE upload_id=?", (upload_id,)).fetchone():
                raise S3Error("NoSuchUpload", UploadId=upload_id)
            self._index(c, staged)
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
    async def lookup_chunks(self, chunk_ids: list[bytes]) -> dict[bytes, ChunkLocation]:
        if not chunk_ids:
            return {}

        def run(c: sqlite3.Connection) -> dict[bytes, ChunkLocation]:
            found: dict[bytes, ChunkLocation] = {}
            for i in range(0, len(chunk_ids), 500):
                batch = chunk_ids[i : i + 500]
                rows = c.execute(
                    "SELECT chunk_id, pack_id, offset, length, plain_len, flags FROM chunks "
                    f"WHERE chunk_id IN ({','.join('?' * len(batch))})",
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

    # -- event outbox -------------------------------------------------------------------
    async def read_outbox(self, after: int, limit: int) -> list[OutboxEvent]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT seq, created, event FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        )
        return [OutboxEvent.from_row(*r) for r in rows]
