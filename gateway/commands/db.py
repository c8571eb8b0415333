"""``strata db migrate`` and ``strata db status``: the metadata schema of the configured store.

With ``meta.dsns`` (sharded PostgreSQL) ``migrate`` brings every shard to this Strata's
schema version (one transaction per version, serialized across migrators) and ``status``
prints each shard's version and how many buckets the catalog maps to it. ``strata serve``
never migrates PostgreSQL; it refuses to start until ``strata db migrate`` has run. The
embedded SQLite store migrates itself when opened, so ``migrate`` just opens it.
Exit status: 0 done, 1 a shard failed or is not up to date (``status``), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from gateway.config import Config
from gateway.meta.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from gateway.meta.sqlite import SqliteMetadataStore


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    db = sub.add_parser(
        "db",
        help="metadata schema: migrate, status",
        description="Manage the metadata store's schema (sharded PostgreSQL or the embedded SQLite file).",
    )
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    migrate = db_sub.add_parser(
        "migrate",
        help="apply pending schema migrations to every metadata shard",
        description="Apply the pending schema versions to every shard listed in meta.dsns "
        "(STRATA_META_DSNS), in order. Safe to run twice and while gateways run.",
    )
    common(migrate)
    migrate.set_defaults(run=run_migrate)
    status = db_sub.add_parser("status", help="print each shard's schema version and bucket count")
    common(status)
    status.set_defaults(run=run_status)


def _postgres() -> tuple[ModuleType, tuple[type[BaseException], ...]]:
    """``pg_migrations`` and the failures a PostgreSQL command reports, imported when a
    command needs them: every ``strata`` command registers this module, ``serve`` too, and
    the embedded default has no use for asyncpg."""
    import asyncpg

    from gateway.meta import pg_migrations

    return pg_migrations, (OSError, asyncpg.PostgresError, pg_migrations.SchemaError, asyncio.TimeoutError)


async def _migrate_sqlite(config: Config) -> None:
    config.storage.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = SqliteMetadataStore(config.storage.data_dir / "meta.sqlite")
    await store.open()
    await store.close()


def run_migrate(args: argparse.Namespace, config: Config) -> int:
    if not config.meta.dsns:
        asyncio.run(_migrate_sqlite(config))
        print(f"sqlite {config.storage.data_dir / 'meta.sqlite'}: schema version {SQLITE_SCHEMA_VERSION}")
        return 0
    pg_migrations, failures = _postgres()
    try:
        applied = asyncio.run(pg_migrations.migrate(config.meta))
    except failures as exc:
        print(f"strata db migrate: {exc}", file=sys.stderr)
        return 1
    for shard, versions in enumerate(applied):
        done = f"applied {', '.join(map(str, versions))}" if versions else "already up to date"
        print(f"shard {shard}: {done} (schema version {pg_migrations.SCHEMA_VERSION})")
    return 0


def run_status(args: argparse.Namespace, config: Config) -> int:
    if not config.meta.dsns:
        print(
            f"sqlite {config.storage.data_dir / 'meta.sqlite'}: migrates itself when opened "
            f"(this Strata uses schema version {SQLITE_SCHEMA_VERSION})"
        )
        return 0
    pg_migrations, failures = _postgres()
    try:
        statuses = asyncio.run(pg_migrations.status(config.meta))
    except failures as exc:
        print(f"strata db status: {exc}", file=sys.stderr)
        return 1
    print("\n".join(pg_migrations.describe(statuses)))
    return 0 if all(s.schema.version == pg_migrations.SCHEMA_VERSION for s in statuses) else 1
