"""Administrative operations run from the command line against a gateway's stores:
users and access keys. Safe to run while ``strata serve`` is running on the same stores
(the server looks up keys it has not seen in the metadata store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.config import Config
from gateway.identity import Identities, new_access_key
from gateway.meta.store import MetadataStore
from gateway.runtime import admin_stores


class AdminError(Exception):
    """A user-facing failure of an admin command (printed, exit status 1)."""


@asynccontextmanager
async def _stores(config: Config) -> AsyncIterator[tuple[MetadataStore, Identities]]:
    async with admin_stores(config) as s:
        yield s.meta, Identities(s.meta, s.kek)


async def add_user(config: Config, name: str) -> tuple[str, str]:
    """Create user ``name`` (with its own dedup key) and a first access key."""
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise AdminError(f"invalid user name {name!r}: use letters, digits, '-', '_' and '.' (max 64)")
    async with _stores(config) as (meta, identities):
        if await meta.get_user(name) is not None:
            raise AdminError(f"user {name!r} already exists")
        await identities.ensure_user(name)
        ak, sk = new_access_key()
        await identities.add_key(name, ak, sk)
        return ak, sk


async def create_key(config: Config, name: str) -> tuple[str, str]:
    """Add an access key to an existing user."""
    async with _stores(config) as (meta, identities):
        if await meta.get_user(name) is None:
            raise AdminError(f"no such user {name!r}")
        ak, sk = new_access_key()
        await identities.add_key(name, ak, sk)
        return ak, sk
