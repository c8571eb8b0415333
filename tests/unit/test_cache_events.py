"""The version cache never serves an answer older than an acknowledged write, and every
change leaves an ordered outbox event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crypto.kek import WrappedKey
from dedup.manifest import Manifest
from dedup.pack import ChunkLocation
from gateway.cache import CachedMetadataStore, LocalCache, decode_version, encode_version
from gateway.meta.models import Bucket, NewChunk, ObjectVersion, PackRecord, StagedData
from gateway.meta.sqlite import SqliteMetadataStore

# the chunk every test version names, indexed by each commit (a commit refuses unindexed chunks)
STAGED = StagedData(
    [PackRecord("p1", WrappedKey("local:k", 1, b"w"), 100)],
    [NewChunk(b"\2" * 32, ChunkLocation("p1", 0, 80, 3, 0))],
)


def _v(key: str, etag: str) -> ObjectVersion:
    return ObjectVersion(
        "bkt", key, "null", 3, etag, 2.5, Manifest((b"\2" * 32,), (3,)), "text/plain", {"cache-control": "x"},
        {"m": "1"}, {"algorithm": "CRC32", "value": "AAAAAA==", "type": "FULL_OBJECT"}, 0,
    )  # fmt: skip


@pytest.fixture
async def stores(
    tmp_path: Path,
) -> AsyncIterator[tuple[SqliteMetadataStore, CachedMetadataStore, LocalCache]]:
    inner = SqliteMetadataStore(tmp_path / "m.sqlite")
    await inner.open()
    await inner.create_bucket(Bucket("bkt", "root", "us-east-1", 0.0))
    cache = LocalCache()
    yield inner, CachedMetadataStore(inner, cache), cache
    await inner.close()


def test_version_codec_roundtrip() -> None:
    v = _v("k", "a" * 32)
    assert decode_version(encode_version(v)) == v


async def test_reads_are_cached_and_writes_invalidate(stores) -> None:
    inner, cached, _cache = stores
    await cached.put_object(_v("k", "1" * 32), STAGED)
    assert (await cached.get_object("bkt", "k")).etag == "1" * 32  # type: ignore[union-attr]
    # A write behind the cache's back is not seen while the entry lives: it was cached.
    await inner.put_object(_v("k", "2" * 32), STAGED)
    assert (await cached.get_object("bkt", "k")).etag == "1" * 32  # type: ignore[union-attr]
    # A write through the cache invalidates.
    await cached.put_object(_v("k", "3" * 32), STAGED)
    assert (await cached.get_object("bkt", "k")).etag == "3" * 32  # type: ignore[union-attr]
    await cached.delete_object("bkt", "k")
    assert await cached.get_object("bkt", "k") is None


async def test_lookup_racing_a_write_is_not_cached(stores) -> None:
    import asyncio

    _, cached, _cache = stores
    await cached.put_object(_v("k", "1" * 32), STAGED)
    # Start a read and a write together; whatever the read returns must not stay cached.
    await asyncio.gather(cached.get_object("bkt", "k"), cached.put_object(_v("k", "2" * 32), STAGED))
    assert (await cached.get_object("bkt", "k")).etag == "2" * 32  # type: ignore[union-attr]


async def test_every_change_writes_an_ordered_outbox_event(stores) -> None:
    inner, cached, _ = stores
    await cached.put_object(_v("a", "1" * 32), STAGED)
    await cached.delete_object("bkt", "a")
    await cached.delete_object("bkt", "never-existed")
    events = await inner.read_outbox(0, 10)
    assert [e.body["eventName"] for e in events] == ["ObjectCreated:Put", "ObjectRemoved:Delete"]
    assert events[0].seq < events[1].seq
    assert events[0].body["key"] == "a" and events[0].body["eTag"] == "1" * 32
    assert await inner.read_outbox(events[-1].seq, 10) == []


async def test_bucket_and_config_lookups_are_cached_and_invalidated(stores) -> None:
    inner, cached, _ = stores
    assert await cached.get_bucket_config("bkt", "versioning") is None  # absence is cached
    await inner.put_bucket_config("bkt", "versioning", "Enabled")  # behind the cache's back
    assert await cached.get_bucket_config("bkt", "versioning") is None
    await cached.put_bucket_config("bkt", "versioning", "Suspended")  # through it: invalidated
    assert await cached.get_bucket_config("bkt", "versioning") == "Suspended"
    assert (await cached.get_bucket("bkt")).owner == "root"  # type: ignore[union-attr]
    await cached.delete_bucket("bkt")
    assert await cached.get_bucket("bkt") is None
    await cached.create_bucket(Bucket("bkt", "alice", "us-east-1", 1.0))
    assert (await cached.get_bucket("bkt")).owner == "alice"  # type: ignore[union-attr]
    assert await cached.get_bucket_config("bkt", "versioning") is None  # went with the old bucket
