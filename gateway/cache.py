"""The cache interface (in-process LRU now; Redis in the production profile) and the
metadata-store decorator that caches object-version lookups through it.

A cache only ever costs or saves time: every write invalidates the keys it touches after it
commits, and a lookup that raced with any write is not cached, so a reader never gets an
answer older than the last write this process acknowledged.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from dedup.manifest import Manifest
from gateway.config import Config
from gateway.meta.models import Bucket, DeleteOutcome, ObjectVersion, StagedData, WriteCondition
from gateway.meta.store import MetadataStore


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl: float) -> None: ...
    async def delete(self, *keys: str) -> None: ...


class LocalCache:
    """A bounded in-process LRU with per-entry expiry (the embedded default)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._data: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()
        self._max = max_entries

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires < time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._data[key] = (time.monotonic() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._data.pop(key, None)


def open_cache(config: Config) -> Cache:
    """The cache the config asks for (in-process LRU by default)."""
    return LocalCache()


def encode_version(v: ObjectVersion) -> bytes:
    fields: dict[str, Any] = {k: getattr(v, k) for k in v.__dataclass_fields__ if k != "manifest"}
    fields["manifest"] = base64.b64encode(v.manifest.encode()).decode()
    return json.dumps(fields).encode()


def decode_version(data: bytes) -> ObjectVersion:
    fields = json.loads(data)
    fields["manifest"] = Manifest.decode(base64.b64decode(fields["manifest"]))
    return ObjectVersion(**fields)


_ABSENT = b"\x00absent"  # a cached "does not exist"


class CachedMetadataStore:
    """Wraps a metadata store: latest-version, bucket and bucket-config lookups go through
    ``cache``."""

    def __init__(self, inner: MetadataStore, cache: Cache, ttl: float = 300.0) -> None:
        self._inner = inner
        self._cache = cache
        self._ttl = ttl
        self._writes = 0  # bumped by every write: a lookup that overlapped one is not cached
        self._config_names: set[str] = set()  # bucket config names seen, to drop with the bucket

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @staticmethod
    def _key(bucket: str, key: str) -> str:
        return f"v1:obj:{len(bucket)}:{bucket}:{key}"

    async def _cached(
        self, ck: str, load: Callable[[], Awaitable[Any]], encode: Callable[[Any], bytes],
        decode: Callable[[bytes], Any], negative: bool = False,
    ) -> Any:  # fmt: skip
        """Read-through: a hit decodes; a miss loads and caches unless a write overlapped."""
        hit = await self._cache.get(ck)
        if hit is not None:
            return None if hit == _ABSENT else decode(hit)
        before = self._writes
        value = await load()
        if before == self._writes and (value is not None or negative):
            await self._cache.set(ck, _ABSENT if value is None else encode(value), self._ttl)
        return value

    async def get_object(self, bucket: str, key: str, version_id: str | None = None) -> ObjectVersion | None:
        if version_id is not None:
            return await self._inner.get_object(bucket, key, version_id)
        return await self._cached(
            self._key(bucket, key),
            lambda: self._inner.get_object(bucket, key),
            encode_version,
            decode_version,
        )

    async def get_bucket(self, name: str) -> Bucket | None:
        return await self._cached(
            f"v1:bkt:{name}",
            lambda: self._inner.get_bucket(name),
            lambda b: json.dumps(dataclasses.asdict(b)).encode(),
            lambda d: Bucket(**json.loads(d)),
        )

    async def get_bucket_config(self, bucket: str, name: str) -> str | None:
        self._config_names.add(name)
        return await self._cached(
            f"v1:cfg:{bucket}:{name}",
            lambda: self._inner.get_bucket_config(bucket, name),
            str.encode,
            bytes.decode,
            negative=True,  # most buckets have no such document: remember that too
        )

    async def put_bucket_config(self, bucket: str, name: str, body: str | None) -> None:
        try:
            await self._inner.put_bucket_config(bucket, name, body)
        finally:
            self._writes += 1
            await self._cache.delete(f"v1:cfg:{bucket}:{name}")

    async def create_bucket(self, bucket: Bucket) -> bool:
        try:
            return await self._inner.create_bucket(bucket)
        finally:
            await self._forget_bucket(bucket.name)

    async def delete_bucket(self, name: str) -> None:
        try:
            await self._inner.delete_bucket(name)
        finally:
            await self._forget_bucket(name)

    async def _forget_bucket(self, name: str) -> None:
        self._writes += 1
        await self._cache.delete(f"v1:bkt:{name}", *(f"v1:cfg:{name}:{c}" for c in self._config_names))

    async def _invalidate(self, bucket: str, key: str) -> None:
        self._writes += 1
        await self._cache.delete(self._key(bucket, key))

    async def put_object(
        self,
        version: ObjectVersion,
        staged: StagedData,
        event: str = "ObjectCreated:Put",
        condition: WriteCondition | None = None,
    ) -> None:
        try:
            await self._inner.put_object(version, staged, event, condition)
        finally:
            await self._invalidate(version.bucket, version.key)

    async def delete_object(
        self, bucket: str, key: str, version_id: str | None = None, marker: ObjectVersion | None = None
    ) -> DeleteOutcome:
        try:
            return await self._inner.delete_object(bucket, key, version_id, marker)
        finally:
            await self._invalidate(bucket, key)

    async def set_object_tags(
        self, bucket: str, key: str, version_id: str | None, tags: dict[str, str]
    ) -> bool:
        try:
            return await self._inner.set_object_tags(bucket, key, version_id, tags)
        finally:
            await self._invalidate(bucket, key)

    async def complete_upload(
        self, upload_id: str, version: ObjectVersion, condition: WriteCondition | None = None
    ) -> bool:
        try:
            return await self._inner.complete_upload(upload_id, version, condition)
        finally:
            await self._invalidate(version.bucket, version.key)
