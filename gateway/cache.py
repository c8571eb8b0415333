"""The cache interface (in-process LRU now; Redis in the production profile) and the
metadata-store decorator that caches object-version lookups through it.

A cache only ever costs or saves time: every write invalidates the keys it touches after it
commits, and a lookup that raced with any write is not cached, so a reader never gets an
answer older than the last write this process acknowledged.
"""

from __future__ import annotations

import base64
import collections
import json
import time
from typing import Any, Protocol

from dedup.manifest import Manifest
from gateway.meta.models import DeleteOutcome, ObjectVersion, StagedData, WriteCondition
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


def encode_version(v: ObjectVersion) -> bytes:
    fields: dict[str, Any] = {k: getattr(v, k) for k in v.__dataclass_fields__ if k != "manifest"}
    fields["manifest"] = base64.b64encode(v.manifest.encode()).decode()
    return json.dumps(fields).encode()


def decode_version(data: bytes) -> ObjectVersion:
    fields = json.loads(data)
    fields["manifest"] = Manifest.decode(base64.b64decode(fields["manifest"]))
    return ObjectVersion(**fields)


class CachedMetadataStore:
    """Wraps a metadata store: object-version lookups go through ``cache``."""

    def __init__(self, inner: MetadataStore, cache: Cache, ttl: float = 300.0) -> None:
        self._inner = inner
        self._cache = cache
        self._ttl = ttl
        self._writes = 0  # bumped by every write: a lookup that overlapped one is not cached

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @staticmethod
    def _key(bucket: str, key: str) -> str:
        return f"v1:obj:{len(bucket)}:{bucket}:{key}"

    async def get_object(self, bucket: str, key: str, version_id: str | None = None) -> ObjectVersion | None:
        if version_id is not None:
            return await self._inner.get_object(bucket, key, version_id)
        ck = self._key(bucket, key)
        hit = await self._cache.get(ck)
        if hit is not None:
            return decode_version(hit)
        before = self._writes
        version = await self._inner.get_object(bucket, key)
        if version is not None and before == self._writes:
            await self._cache.set(ck, encode_version(version), self._ttl)
        return version

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
