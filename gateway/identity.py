"""Users, access keys and per-tenant dedup keys.

Secrets and dedup keys are stored wrapped by the KEK; unwrapped values live only in this
process's memory. The root user is bootstrapped on first start: from the configured
credentials if given, otherwise generated and returned once for printing.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass

from crypto import KEKProvider
from dedup import new_dedup_key
from gateway.config import RootConfig
from gateway.meta.models import AccessKey
from gateway.meta.store import MetadataStore

ROOT_USER = "root"
_AK_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class Principal:
    access_key: str
    user: str
    secret: str


def new_access_key() -> tuple[str, str]:
    """A fresh (access key id, secret) pair: 20 and 40 characters, >=160 random bits each."""
    ak = "STR" + "".join(secrets.choice(_AK_ALPHABET) for _ in range(17))
    return ak, secrets.token_urlsafe(30)


class Identities:
    """Looks up principals by access key and tenants' dedup keys, with in-memory caches."""

    def __init__(self, meta: MetadataStore, kek: KEKProvider) -> None:
        self._meta = meta
        self._kek = kek
        self._principals: dict[str, Principal] = {}
        self._dedup_keys: dict[str, bytes] = {}

    async def ensure_user(self, name: str) -> None:
        if await self._meta.get_user(name) is None:
            await self._meta.create_user(name, await self._kek.wrap(new_dedup_key()))

    async def add_key(self, user: str, access_key: str, secret: str) -> None:
        await self._meta.put_access_key(AccessKey(access_key, user, await self._kek.wrap(secret.encode())))
        self._principals.pop(access_key, None)

    async def bootstrap_root(self, root: RootConfig) -> tuple[str, str] | None:
        """Make sure the root user and a root key exist; return a generated pair to print once."""
        await self.ensure_user(ROOT_USER)
        if root.access_key and root.secret_key:
            existing = await self.principal(root.access_key)
            if existing is None or existing.secret != root.secret_key or existing.user != ROOT_USER:
                await self.add_key(ROOT_USER, root.access_key, root.secret_key)
            return None
        if await self._meta.has_access_key_for(ROOT_USER):
            return None
        ak, sk = new_access_key()
        await self.add_key(ROOT_USER, ak, sk)
        return ak, sk

    async def principal(self, access_key: str) -> Principal | None:
        found = self._principals.get(access_key)
        if found is None:
            record = await self._meta.get_access_key(access_key)
            if record is None:
                return None
            secret = (await self._kek.unwrap(record.wrapped_secret)).decode()
            found = self._principals[access_key] = Principal(access_key, record.user, secret)
        return found

    def cached_secret(self, access_key: str) -> str | None:
        found = self._principals.get(access_key)
        return None if found is None else found.secret

    async def dedup_key(self, user: str) -> bytes:
        key = self._dedup_keys.get(user)
        if key is None:
            record = await self._meta.get_user(user)
            if record is None:
                raise KeyError(user)
            key = self._dedup_keys[user] = await self._kek.unwrap(record.wrapped_dedup_key)
        return key
