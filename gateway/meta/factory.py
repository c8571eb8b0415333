"""Builds the metadata store that the config asks for: the embedded SQLite file, or (with
``meta.dsns``) sharded PostgreSQL."""

from __future__ import annotations

from gateway.config import Config
from gateway.meta.sqlite import SqliteMetadataStore
from gateway.meta.store import MetadataStore


def make_store(config: Config) -> MetadataStore:
    """The configured store, not yet opened."""
    if config.meta.dsns:
        from gateway.meta.postgres import PostgresMetadataStore  # asyncpg loads only here

        return PostgresMetadataStore(config.meta)
    return SqliteMetadataStore(config.storage.data_dir / "meta.sqlite")


async def open_store(config: Config) -> MetadataStore:
    """An opened store: SQLite migrates itself; PostgreSQL checks every shard's schema and
    refuses to open one that ``strata db migrate`` has not brought up to date."""
    store = make_store(config)
    await store.open()
    return store
