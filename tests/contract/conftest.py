"""Fixtures of the metadata-store contract suite: every test runs once per implementation.

* ``sqlite``: the embedded store, a fresh file per test.
* ``pg4``: sharded PostgreSQL with four shards (four databases on the test server, created
  and migrated once per session, emptied before each test).

``open_store()`` opens another store instance on the same databases (a second gateway
process, as far as the store can tell); ``store`` is the first one, with bucket ``bkt``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.postgres import pg4_dsns, pg_databases, pg_server, reset_databases

from gateway.config import MetaConfig
from gateway.meta.models import Bucket
from gateway.meta.postgres import PostgresMetadataStore
from gateway.meta.sqlite import SqliteMetadataStore
from gateway.meta.store import MetadataStore

__all__ = ["pg4_dsns", "pg_databases", "pg_server"]

StoreOpener = Callable[[], Awaitable[MetadataStore]]


@pytest.fixture(params=["sqlite", "pg4"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreOpener]:
    if request.param == "sqlite":
        path = tmp_path / "meta.sqlite"

        def make() -> Any:
            return SqliteMetadataStore(path)
    else:
        dsns = request.getfixturevalue("pg4_dsns")
        reset_databases(dsns)

        def make() -> Any:
            return PostgresMetadataStore(MetaConfig(dsns=dsns, pool_min=1, pool_max=8))

    opened: list[MetadataStore] = []

    async def opener() -> MetadataStore:
        store = make()
        await store.open()
        opened.append(store)
        return store

    yield opener
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: StoreOpener) -> MetadataStore:
    s = await open_store()
    assert await s.create_bucket(Bucket("bkt", "root", "us-east-1", 0.0))
    return s
