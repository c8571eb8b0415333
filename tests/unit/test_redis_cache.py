"""The Redis cache against a real (private) redis-server: shared between "processes" (two
cache clients), refusing stale fills, failing open when Redis dies or freezes, and never
serving an entry that a write during an outage should have invalidated."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
import typing
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from support.redis_server import PrivateRedis

from dedup.manifest import Manifest
from gateway.cache import (
    PASS_THROUGH,
    CachedMetadataStore,
    LocalCache,
    NullCache,
    RedisCache,
    open_cache,
)
from gateway.config import Config, MetaConfig, RedisConfig
from gateway.meta.models import Bucket, ObjectVersion, StagedData
from gateway.meta.sqlite import SqliteMetadataStore
from gateway.meta.store import MaintenanceStore, MetadataStore

EMPTY = StagedData([], [])
BACKOFF = 0.3


def _v(key: str, n: int) -> ObjectVersion:
    """Version ``n`` of ``key``: empty, so that it references no chunk the store must hold."""
    return ObjectVersion("bkt", key, "null", 0, f"{n:032x}", float(n), Manifest((), ()))


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_up(private_redis: PrivateRedis) -> Iterator[PrivateRedis]:
    """The private server, running and thawed before and after the test."""
    if private_redis.proc is None:
        private_redis.start()
    yield private_redis
    if private_redis.proc is not None:
        private_redis.thaw()
    else:
        private_redis.start()


@pytest.fixture
def rconf(redis_up: PrivateRedis) -> RedisConfig:
    return RedisConfig(
        url=redis_up.url, prefix=f"t{secrets.token_hex(4)}:", ttl_seconds=60, socket_timeout=0.2
    )


@pytest.fixture
async def inner(tmp_path: Path) -> AsyncIterator[SqliteMetadataStore]:
    store = SqliteMetadataStore(tmp_path / "m.sqlite")
    await store.open()
    await store.create_bucket(Bucket("bkt", "root", "us-east-1", 0.0))
    yield store
    await store.close()


@pytest.fixture
async def caches(rconf: RedisConfig) -> AsyncIterator[list[RedisCache]]:
    """Two independent clients of one Redis prefix: two gateway processes."""
    made = [RedisCache(rconf, backoff=BACKOFF), RedisCache(rconf, backoff=BACKOFF)]
    yield made
    for cache in made:
        await cache.close()


async def _etag(store: CachedMetadataStore, key: str = "k") -> str | None:
    v = await store.get_object("bkt", key)
    return None if v is None else v.etag


# -- the Cache protocol ----------------------------------------------------------------------


async def test_fill_then_hit_and_invalidate(caches: list[RedisCache]) -> None:
    a, b = caches
    hit, ticket = await a.lookup("x")
    assert hit is None
    await a.fill(ticket, b"one")
    assert (await a.lookup("x"))[0] == b"one"
    assert (await b.lookup("x"))[0] == b"one"  # shared between clients
    await b.invalidate("x")
    assert (await a.lookup("x"))[0] is None


async def test_fill_with_a_ticket_older_than_an_invalidation_is_refused(caches: list[RedisCache]) -> None:
    a, b = caches
    _, stale = await a.lookup("x")
    await b.invalidate("x")  # a write committed after a's ticket
    await a.fill(stale, b"old")
    assert (await a.lookup("x"))[0] is None
    _, fresh = await a.lookup("x")
    await a.fill(fresh, b"new")
    assert (await b.lookup("x"))[0] == b"new"


async def test_invalidating_a_dependency_drops_its_dependents(caches: list[RedisCache]) -> None:
    a, b = caches
    _, ticket = await a.lookup("cfg", deps=("bucket",))
    await a.fill(ticket, b"doc")
    assert (await a.lookup("cfg", deps=("bucket",)))[0] == b"doc"
    await b.invalidate("bucket")
    assert (await a.lookup("cfg", deps=("bucket",)))[0] is None


async def test_every_redis_key_carries_the_prefix(caches: list[RedisCache], rconf: RedisConfig) -> None:
    a, _ = caches
    _, ticket = await a.lookup("x", deps=("d",))
    await a.fill(ticket, b"v")
    await a.invalidate("y")
    raw = aioredis.Redis.from_url(typing.cast(str, rconf.url))
    try:
        ours = [k async for k in raw.scan_iter(match=f"{rconf.prefix}*")]
        assert len(ours) >= 4  # value, epoch, generations of x, d and y
        assert all(k.startswith(rconf.prefix.encode()) for k in ours)
        assert await raw.ttl(f"{rconf.prefix}v:x") > 0 and await raw.ttl(f"{rconf.prefix}g:x") > 0
    finally:
        await raw.aclose()


async def test_evicted_generation_never_revalidates_an_old_entry(
    caches: list[RedisCache], rconf: RedisConfig
) -> None:
    """Generations are random tokens: losing one (eviction, expiry) only causes misses."""
    a, b = caches
    _, ticket = await a.lookup("x")
    await a.fill(ticket, b"v1")
    raw = aioredis.Redis.from_url(typing.cast(str, rconf.url))
    try:
        await b.invalidate("x")
        await raw.delete(f"{rconf.prefix}g:x")  # as if evicted
        assert (await a.lookup("x"))[0] is None
    finally:
        await raw.aclose()


# -- the metadata store on Redis, across "processes" ----------------------------------------


async def test_a_write_in_one_process_is_seen_by_the_other(
    inner: SqliteMetadataStore, caches: list[RedisCache]
) -> None:
    a, b = (CachedMetadataStore(inner, c) for c in caches)
    await a.put_object(_v("k", 1), EMPTY)
    assert await _etag(a) == _v("k", 1).etag  # cached now
    await inner.put_object(_v("k", 9), EMPTY)  # behind every cache: proves a serves from Redis
    assert await _etag(a) == _v("k", 1).etag
    await b.put_object(_v("k", 2), EMPTY)
    assert await _etag(a) == _v("k", 2).etag
    await b.delete_object("bkt", "k")
    assert await _etag(a) is None


class _GatedStore:
    """A store whose latest-version reads pause after loading until released."""

    def __init__(self, inner: MetadataStore) -> None:
        self._inner = inner
        self.loaded = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> typing.Any:
        return getattr(self._inner, name)

    async def get_object(self, bucket: str, key: str, version_id: str | None = None) -> ObjectVersion | None:
        v = await self._inner.get_object(bucket, key, version_id)
        self.loaded.set()
        await self.release.wait()
        return v


async def test_cross_process_read_racing_a_write_does_not_cache_the_old_version(
    inner: SqliteMetadataStore, caches: list[RedisCache]
) -> None:
    gated = _GatedStore(inner)
    a = CachedMetadataStore(typing.cast(MetadataStore, gated), caches[0])
    b = CachedMetadataStore(inner, caches[1])
    await inner.put_object(_v("k", 1), EMPTY)
    reader = asyncio.ensure_future(a.get_object("bkt", "k"))
    await gated.loaded.wait()  # a has read v1 from the store ...
    await b.put_object(_v("k", 2), EMPTY)  # ... b commits v2 and invalidates ...
    gated.release.set()
    assert (await reader).etag == _v("k", 1).etag  # ... a answers its (concurrent) read ...
    assert await _etag(b) == _v("k", 2).etag  # ... but did not put v1 into the cache
    assert await _etag(a) == _v("k", 2).etag


async def test_bucket_config_goes_with_its_bucket_across_processes(
    inner: SqliteMetadataStore, caches: list[RedisCache]
) -> None:
    a, b = (CachedMetadataStore(inner, c) for c in caches)
    await a.put_bucket_config("bkt", "versioning", "Enabled")
    assert await a.get_bucket_config("bkt", "versioning") == "Enabled"
    assert (await a.get_bucket("bkt")).owner == "root"  # type: ignore[union-attr]
    await b.delete_bucket("bkt")  # b never looked at this config document
    await b.create_bucket(Bucket("bkt", "alice", "us-east-1", 1.0))
    assert (await a.get_bucket("bkt")).owner == "alice"  # type: ignore[union-attr]
    assert await a.get_bucket_config("bkt", "versioning") is None


async def test_concurrent_writers_and_readers_in_two_processes_stay_consistent(
    inner: SqliteMetadataStore, caches: list[RedisCache]
) -> None:
    """Random PUT/DELETE/GET on a few keys from both sides at once; once the writes of a
    round are acknowledged, both sides read exactly what the store holds."""
    stores = [CachedMetadataStore(inner, c) for c in caches]
    rng = random.Random(7)
    keys = ["a", "b", "c"]
    n = 0

    async def op(store: CachedMetadataStore) -> None:
        nonlocal n
        key = rng.choice(keys)
        roll = rng.random()
        if roll < 0.4:
            n += 1
            await store.put_object(_v(key, n), EMPTY)
        elif roll < 0.55:
            await store.delete_object("bkt", key)
        else:
            await store.get_object("bkt", key)

    for _ in range(40):
        await asyncio.gather(*(op(rng.choice(stores)) for _ in range(8)))
        for key in keys:
            truth = await inner.get_object("bkt", key)
            for store in stores:
                assert await _etag(store, key) == (truth.etag if truth else None)


# -- Redis going away ----------------------------------------------------------------------


async def test_dead_redis_is_a_miss_and_is_skipped_during_the_backoff(inner: SqliteMetadataStore) -> None:
    # Nothing listens on this port: every Redis call fails; answers come from the store.
    dead = RedisCache(RedisConfig(url="redis://127.0.0.1:1/0", socket_timeout=0.2), backoff=60)
    store = CachedMetadataStore(inner, dead)
    try:
        await store.put_object(_v("k", 1), EMPTY)
        assert not dead.available and dead.flush_pending
        assert await _etag(store) == _v("k", 1).etag
        await store.put_object(_v("k", 2), EMPTY)
        assert await _etag(store) == _v("k", 2).etag
    finally:
        await dead.close()


async def test_frozen_redis_costs_little_per_request(
    inner: SqliteMetadataStore, redis_up: PrivateRedis, rconf: RedisConfig
) -> None:
    cache = RedisCache(rconf, backoff=60)
    store = CachedMetadataStore(inner, cache)
    try:
        await store.put_object(_v("k", 1), EMPTY)
        redis_up.freeze()
        started = time.monotonic()
        for _ in range(200):  # 200 socket timeouts would take 40 s; the back-off skips them
            assert await _etag(store) == _v("k", 1).etag
        assert time.monotonic() - started < 10
        assert not cache.available
    finally:
        redis_up.thaw()
        await cache.close()


async def test_write_during_an_outage_is_never_hidden_by_the_old_entry(
    inner: SqliteMetadataStore, caches: list[RedisCache], redis_up: PrivateRedis, rconf: RedisConfig
) -> None:
    """Write v1 (cached), Redis freezes with its data, write v2 (its invalidation cannot
    reach Redis), Redis comes back still holding v1's entry: both processes read v2."""
    writer, other = (CachedMetadataStore(inner, c) for c in caches)
    await writer.put_object(_v("k", 1), EMPTY)
    assert await _etag(writer) == _v("k", 1).etag
    assert await _etag(other) == _v("k", 1).etag  # cached for both
    redis_up.freeze()
    assert await _etag(writer) == _v("k", 1).etag  # times out -> miss -> store; backs off
    await writer.put_object(_v("k", 2), EMPTY)  # invalidation skipped: a debt
    assert caches[0].flush_pending
    assert await _etag(writer) == _v("k", 2).etag
    redis_up.thaw()
    raw = aioredis.Redis.from_url(typing.cast(str, rconf.url))
    try:
        assert await raw.exists(f"{rconf.prefix}v:v1:obj:3:bkt:k")  # v1's entry survived
        # The writer pays its debt in the background, without further traffic.
        deadline = time.monotonic() + 10
        while caches[0].flush_pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not caches[0].flush_pending
        assert await _etag(other) == _v("k", 2).etag
        assert await _etag(writer) == _v("k", 2).etag
    finally:
        await raw.aclose()


async def test_restarted_redis_serves_fresh_answers_and_caches_again(
    inner: SqliteMetadataStore, caches: list[RedisCache], redis_up: PrivateRedis
) -> None:
    store = CachedMetadataStore(inner, caches[0])
    await store.put_object(_v("k", 1), EMPTY)
    assert await _etag(store) == _v("k", 1).etag
    redis_up.stop()
    await store.put_object(_v("k", 2), EMPTY)
    await store.delete_object("bkt", "k")
    assert await _etag(store) is None
    await store.put_object(_v("k", 3), EMPTY)
    assert await _etag(store) == _v("k", 3).etag
    redis_up.start()
    await asyncio.sleep(BACKOFF * 1.5)
    assert await _etag(store) == _v("k", 3).etag
    assert caches[0].available and not caches[0].flush_pending
    await inner.put_object(_v("k", 9), EMPTY)  # behind the cache: it caches again
    assert await _etag(store) == _v("k", 3).etag


# -- selection and the in-process caches ----------------------------------------------------


async def test_open_cache_picks_redis_local_or_none() -> None:
    with_redis = open_cache(Config(redis=RedisConfig(url="redis://127.0.0.1:1/0", ttl_seconds=7)))
    assert isinstance(with_redis, RedisCache) and with_redis.ttl == 7
    await with_redis.close()
    assert isinstance(open_cache(Config()), LocalCache)
    assert isinstance(open_cache(Config(meta=MetaConfig(dsns=("postgresql://x/y",)))), NullCache)


async def test_null_cache_never_caches(inner: SqliteMetadataStore) -> None:
    store = CachedMetadataStore(inner, NullCache())
    await store.put_object(_v("k", 1), EMPTY)
    assert await _etag(store) == _v("k", 1).etag
    await inner.put_object(_v("k", 2), EMPTY)  # behind its back: seen at once
    assert await _etag(store) == _v("k", 2).etag


async def test_local_cache_drops_dependents_and_bounds_its_size() -> None:
    cache = LocalCache(max_entries=2)
    for name in ("c1", "c2", "c3"):
        _, ticket = await cache.lookup(name, deps=("bucket",))
        await cache.fill(ticket, name.encode())
    assert len(cache) == 2 and (await cache.lookup("c1"))[0] is None
    await cache.invalidate("bucket")
    assert len(cache) == 0 and not cache._dependents


def test_every_store_method_is_cached_or_declared_pass_through() -> None:
    """A new MetadataStore method must be either wrapped by CachedMetadataStore (writes that
    change cached records invalidate them) or listed in gateway.cache.PASS_THROUGH."""
    protocol = {
        name
        for proto in (MetadataStore, MaintenanceStore)
        for name, member in vars(proto).items()
        if not name.startswith("_") and callable(member)
    }
    wrapped = set(vars(CachedMetadataStore))
    unclassified = sorted(protocol - wrapped - PASS_THROUGH)
    assert not unclassified, f"classify in gateway/cache.py (wrap, or add to PASS_THROUGH): {unclassified}"
    assert not PASS_THROUGH & wrapped
