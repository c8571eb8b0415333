"""Versioned schema migrations of the sharded PostgreSQL metadata store, and the schema check
that every process runs when it opens the store.

Every shard database holds the data tables (objects, uploads, parts, bucket configs, the
bucket's home row, packs, chunks, pack tombstones, the outbox with its sequencer and relay
state) and the two functions of a commit's pack step; shard 0 also holds the catalog (users,
access keys, the bucket -> shard map), the audit log and the state of maintenance jobs.
Each database has one ``strata_schema`` row: its schema version, and which shard of how
many it is (written by the first migration, so a reordered or resized ``meta.dsns`` list is
refused instead of silently misrouting rows).

``strata db migrate`` applies the pending versions to every shard, one transaction per
version, under a session advisory lock so two migrators never race. ``strata serve`` never
migrates PostgreSQL: it checks each shard's version and refuses to start on a mismatch.
Append new versions to :data:`MIGRATIONS`; never edit an applied one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from gateway.config import MetaConfig
from gateway.meta.shards import advisory_key

MIGRATE_LOCK = advisory_key("strata-migrate")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    catalog: str  # SQL for shard 0 only
    data: str  # SQL for every shard


_V1_CATALOG = """
CREATE TABLE users (
    name TEXT COLLATE "C" PRIMARY KEY, kek_id TEXT NOT NULL, kek_version INTEGER NOT NULL,
    dedup_key BYTEA NOT NULL, created DOUBLE PRECISION NOT NULL);
CREATE TABLE access_keys (
    access_key TEXT COLLATE "C" PRIMARY KEY, user_name TEXT COLLATE "C" NOT NULL REFERENCES users(name),
    kek_id TEXT NOT NULL, kek_version INTEGER NOT NULL, secret BYTEA NOT NULL,
    created DOUBLE PRECISION NOT NULL);
CREATE INDEX access_keys_by_user ON access_keys (user_name);
CREATE TABLE buckets (
    name TEXT COLLATE "C" PRIMARY KEY, owner TEXT COLLATE "C" NOT NULL, region TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL, shard INTEGER NOT NULL CHECK (shard >= 0));
CREATE INDEX buckets_by_owner ON buckets (owner, name);
CREATE INDEX buckets_by_shard ON buckets (shard);
CREATE TABLE audit (
    seq BIGSERIAL PRIMARY KEY, time DOUBLE PRECISION NOT NULL, request_id TEXT NOT NULL,
    user_name TEXT, access_key TEXT, action TEXT NOT NULL, bucket TEXT, key TEXT, version_id TEXT,
    ip TEXT, user_agent TEXT, status INTEGER NOT NULL);
CREATE INDEX audit_by_time ON audit (time);
"""

_V1_DATA = """
CREATE TABLE bucket_homes (name TEXT COLLATE "C" PRIMARY KEY, created DOUBLE PRECISION NOT NULL);
CREATE TABLE objects (
    bucket TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL, version_id TEXT COLLATE "C" NOT NULL,
    size BIGINT NOT NULL, etag TEXT NOT NULL, last_modified DOUBLE PRECISION NOT NULL,
    manifest BYTEA NOT NULL, content_type TEXT NOT NULL, headers TEXT NOT NULL, user_meta TEXT NOT NULL,
    checksum TEXT NOT NULL, parts INTEGER NOT NULL, storage_class TEXT NOT NULL,
    delete_marker BOOLEAN NOT NULL, tags TEXT NOT NULL, seq BIGINT NOT NULL, latest BOOLEAN NOT NULL,
    PRIMARY KEY (bucket, key, version_id));
CREATE UNIQUE INDEX objects_latest ON objects (bucket, key) WHERE latest;
CREATE UNIQUE INDEX objects_history ON objects (bucket, key, seq);
CREATE TABLE uploads (
    upload_id TEXT COLLATE "C" PRIMARY KEY, bucket TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL,
    initiated DOUBLE PRECISION NOT NULL, owner TEXT NOT NULL, content_type TEXT NOT NULL,
    headers TEXT NOT NULL, user_meta TEXT NOT NULL, checksum_algorithm TEXT, checksum_type TEXT,
    tags TEXT NOT NULL);
CREATE INDEX uploads_by_key ON uploads (bucket, key, initiated, upload_id);
CREATE TABLE parts (
    upload_id TEXT COLLATE "C" NOT NULL, part_number INTEGER NOT NULL, size BIGINT NOT NULL,
    etag TEXT NOT NULL, last_modified DOUBLE PRECISION NOT NULL, manifest BYTEA NOT NULL,
    checksum TEXT NOT NULL, PRIMARY KEY (upload_id, part_number));
CREATE TABLE bucket_configs (
    bucket TEXT COLLATE "C" NOT NULL, name TEXT COLLATE "C" NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (bucket, name));
CREATE TABLE packs (
    pack_id TEXT COLLATE "C" PRIMARY KEY, kek_id TEXT NOT NULL, kek_version INTEGER NOT NULL,
    wrapped_dek BYTEA NOT NULL, size BIGINT NOT NULL, created DOUBLE PRECISION NOT NULL);
CREATE TABLE chunks (
    chunk_id BYTEA PRIMARY KEY, pack_id TEXT COLLATE "C" NOT NULL, pack_offset BIGINT NOT NULL,
    length INTEGER NOT NULL, plain_len INTEGER NOT NULL, flags INTEGER NOT NULL,
    created DOUBLE PRECISION NOT NULL, condemned_at DOUBLE PRECISION);
CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY, txid XID8 NOT NULL DEFAULT pg_current_xact_id(), seq BIGINT UNIQUE,
    created DOUBLE PRECISION NOT NULL, event TEXT NOT NULL);
CREATE INDEX outbox_pending ON outbox (txid, id) WHERE seq IS NULL;
CREATE TABLE outbox_sequencer (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row), last BIGINT NOT NULL);
CREATE TABLE relay_state (
    shard INTEGER PRIMARY KEY, cursor BIGINT NOT NULL DEFAULT 0, owner TEXT,
    expires DOUBLE PRECISION NOT NULL DEFAULT 0);
"""

# Garbage collection and key jobs (gateway/maintenance/), SQLite's migration 3 on shards:
# ``chunks.condemned_at`` already exists (version 1); packs get ``retired_at``; the rows that
# point into a pack are found by ``chunks_by_pack`` (on every shard: a pack's chunk rows are
# spread over the shards of their chunk ids); a deleted pack's id is kept in
# ``pack_tombstones`` on the pack's own shard; resumable jobs live on the catalog.
# ``strata_lock_packs`` takes per-pack advisory locks in one order (shared for a commit,
# exclusive for gc deleting or tombstoning packs); ``strata_claim_packs`` is a commit's pack
# step: under the shared locks, refuse tombstoned packs, else insert the pack records and
# revive retired ones. Being volatile PL/pgSQL, each of its statements reads a snapshot taken
# after the locks were granted, so it sees what a gc transaction committed while it waited;
# and it is one round trip (postgres.py, "Garbage collection").
PACK_LOCK_CLASS = 0x53545241  # "STRA": the first key of the two-key advisory locks on packs
_V2_CATALOG = """
CREATE TABLE maintenance_jobs (
    name TEXT COLLATE "C" PRIMARY KEY, state TEXT NOT NULL, updated DOUBLE PRECISION NOT NULL);
"""
_V2_DATA = f"""
ALTER TABLE packs ADD COLUMN retired_at DOUBLE PRECISION;
CREATE INDEX packs_retired ON packs (retired_at) WHERE retired_at IS NOT NULL;
CREATE INDEX chunks_by_pack ON chunks (pack_id, pack_offset);
CREATE TABLE pack_tombstones (
    pack_id TEXT COLLATE "C" PRIMARY KEY, deleted DOUBLE PRECISION NOT NULL);
CREATE INDEX pack_tombstones_by_time ON pack_tombstones (deleted);
CREATE FUNCTION strata_lock_packs(p_ids TEXT[], p_exclusive BOOLEAN) RETURNS VOID
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    h INTEGER;
BEGIN
    FOR h IN SELECT DISTINCT hashtext(i) FROM unnest(p_ids) AS i ORDER BY 1 LOOP
        IF p_exclusive THEN
            PERFORM pg_advisory_xact_lock({PACK_LOCK_CLASS}, h);
        ELSE
            PERFORM pg_advisory_xact_lock_shared({PACK_LOCK_CLASS}, h);
        END IF;
    END LOOP;
END $$;
CREATE FUNCTION strata_claim_packs(
    p_ids TEXT[], p_kek_ids TEXT[], p_kek_versions INTEGER[], p_deks BYTEA[], p_sizes BIGINT[],
    p_created DOUBLE PRECISION) RETURNS TEXT[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    dead TEXT[];
BEGIN
    PERFORM strata_lock_packs(p_ids, false);
    dead := ARRAY(SELECT t.pack_id FROM pack_tombstones t WHERE t.pack_id = ANY(p_ids));
    IF cardinality(dead) = 0 THEN
        INSERT INTO packs AS p (pack_id, kek_id, kek_version, wrapped_dek, size, created)
        SELECT u.*, p_created FROM unnest(p_ids, p_kek_ids, p_kek_versions, p_deks, p_sizes) AS u
        ON CONFLICT (pack_id) DO UPDATE SET retired_at = NULL WHERE p.retired_at IS NOT NULL;
    END IF;
    RETURN dead;
END $$;
"""

_V3_CATALOG = """
CREATE TABLE leases (
    name TEXT COLLATE "C" PRIMARY KEY, owner TEXT NOT NULL, expires DOUBLE PRECISION NOT NULL);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _V1_CATALOG, _V1_DATA),
    Migration(2, "garbage collection and key jobs", _V2_CATALOG, _V2_DATA),
    Migration(3, "leases of exclusive maintenance jobs", _V3_CATALOG, ""),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

_SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS strata_schema (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    version INTEGER NOT NULL, shard INTEGER NOT NULL, shards INTEGER NOT NULL)
"""


class SchemaError(RuntimeError):
    """A shard's schema does not fit this Strata or this shard list (message says what to do)."""


@dataclass(frozen=True)
class ShardSchema:
    version: int  # 0: never migrated
    shard: int | None  # which shard this database says it is (None: never migrated)
    shards: int | None


@dataclass(frozen=True)
class ShardStatus:
    shard: int
    schema: ShardSchema
    buckets: int | None  # buckets the catalog maps to this shard (None: catalog not migrated)


def check_identity(schema: ShardSchema, shard: int, shards: int) -> None:
    """Refuse a database that was migrated as another shard or for another shard count."""
    if schema.shard is None:
        return
    if schema.shard != shard:
        raise SchemaError(
            f"the database of shard {shard} was set up as shard {schema.shard}: "
            "meta.dsns must list the shards in their original order"
        )
    if schema.shards != shards:
        raise SchemaError(
            f"shard {shard} belongs to a deployment of {schema.shards} shards, meta.dsns lists {shards}: "
            "changing the shard count is not supported"
        )


def check_schema(schema: ShardSchema, shard: int, shards: int) -> None:
    """What ``open()`` requires of every shard: the right identity and exactly this version."""
    check_identity(schema, shard, shards)
    if schema.version > SCHEMA_VERSION:
        raise SchemaError(
            f"metadata schema on shard {shard} is at version {schema.version}, "
            f"newer than this Strata ({SCHEMA_VERSION}): upgrade Strata"
        )
    if schema.version < SCHEMA_VERSION:
        raise SchemaError(
            f"metadata schema on shard {shard} is at version {schema.version}; "
            f"this Strata needs {SCHEMA_VERSION}: run `strata db migrate`"
        )


def pending(current: int) -> list[Migration]:
    return [m for m in MIGRATIONS if m.version > current]


async def read_schema(conn: asyncpg.Connection) -> ShardSchema:
    if not await conn.fetchval("SELECT to_regclass('strata_schema') IS NOT NULL"):
        return ShardSchema(0, None, None)
    row = await conn.fetchrow("SELECT version, shard, shards FROM strata_schema")
    return ShardSchema(0, None, None) if row is None else ShardSchema(row[0], row[1], row[2])


async def migrate_shard(
    conn: asyncpg.Connection, shard: int, shards: int, target: int = SCHEMA_VERSION
) -> list[int]:
    """Bring one shard to version ``target`` (by default :data:`SCHEMA_VERSION`); return the
    versions applied (none: no-op)."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATE_LOCK)
    try:
        async with conn.transaction():
            await conn.execute(_SCHEMA_TABLE)
            await conn.execute(
                "INSERT INTO strata_schema (version, shard, shards) VALUES (0, $1, $2) "
                "ON CONFLICT DO NOTHING",
                shard,
                shards,
            )
        schema = await read_schema(conn)
        check_identity(schema, shard, shards)
        if schema.version > SCHEMA_VERSION:
            check_schema(schema, shard, shards)  # raises: newer than this Strata
        applied: list[int] = []
        for m in pending(schema.version):
            if m.version > target:
                break
            async with conn.transaction():
                if shard == 0 and m.catalog.strip():
                    await conn.execute(m.catalog)
                if m.data.strip():
                    await conn.execute(m.data)
                await conn.execute("UPDATE strata_schema SET version = $1", m.version)
            applied.append(m.version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATE_LOCK)


async def connect(dsn: str, config: MetaConfig) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, timeout=config.command_timeout, command_timeout=config.command_timeout)


async def migrate(config: MetaConfig, target: int = SCHEMA_VERSION) -> list[list[int]]:
    """Migrate every shard in ``config.dsns`` (in order) up to version ``target``; the
    versions applied per shard. (A lower ``target`` builds an older schema, for tests of
    the upgrade path.)"""
    done: list[list[int]] = []
    for shard, dsn in enumerate(config.dsns):
        conn = await connect(dsn, config)
        try:
            done.append(await migrate_shard(conn, shard, len(config.dsns), target))
        finally:
            await conn.close()
    return done


async def status(config: MetaConfig) -> list[ShardStatus]:
    """Each shard's schema and how many buckets the catalog maps to it."""
    schemas: list[ShardSchema] = []
    counts: dict[int, int] | None = None
    for shard, dsn in enumerate(config.dsns):
        conn = await connect(dsn, config)
        try:
            schemas.append(await read_schema(conn))
            if shard == 0 and schemas[0].version >= 1:
                rows = await conn.fetch("SELECT shard, count(*) FROM buckets GROUP BY shard")
                counts = {r[0]: r[1] for r in rows}
        finally:
            await conn.close()
    return [ShardStatus(i, s, None if counts is None else counts.get(i, 0)) for i, s in enumerate(schemas)]


def describe(statuses: Sequence[ShardStatus]) -> list[str]:
    """``strata db status`` lines: one per shard."""
    lines = []
    for st in statuses:
        role = "catalog+data" if st.shard == 0 else "data"
        buckets = "?" if st.buckets is None else str(st.buckets)
        state = "up to date" if st.schema.version == SCHEMA_VERSION else f"needs {SCHEMA_VERSION}"
        lines.append(
            f"shard {st.shard} ({role}): schema version {st.schema.version} ({state}), buckets {buckets}"
        )
    return lines
