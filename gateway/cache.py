"""The cache interface, its three implementations (in-process LRU, Redis, pass-through), and
the metadata-store decorator that caches version, bucket and bucket-config lookups through it.

A cache only ever costs or saves time. The interface is built so that an implementation can
refuse a stale fill, not merely drop a key:

* ``lookup(key, deps)`` returns the cached value (or ``None``) together with a
  :class:`Ticket`, taken *before* the caller reads the authoritative store;
* ``fill(ticket, value)`` stores the value only if neither ``key`` nor any of ``deps`` was
  invalidated since the ticket was issued;
* ``invalidate(*keys)`` is called by every write after it commits, and drops ``keys`` and
  every entry that named one of them in its ``deps``.

A cache that ``holds_objects`` (the in-process :class:`LocalCache`) is filled with the
records themselves, never serialized, so a hit costs no decoding. The records it hands out
are shared by every reader: they are frozen dataclasses, and nobody may mutate their dict
fields either. A cache that does not (Redis) is filled with their encoded bytes.

So a reader that loaded v1 from the store while a writer committed v2 cannot put v1 back
after the writer's invalidation, in this process or (Redis) in any other.

Which cache (:func:`open_cache`)
--------------------------------
* ``redis.url`` set: :class:`RedisCache`, shared by every gateway process;
* embedded default (no ``meta.dsns``): :class:`LocalCache`, an in-process LRU. This assumes
  one serving process per data dir (admin commands do not touch cached records);
* shared metadata store without Redis: :class:`NullCache` (no caching): in-process caches
  of several processes could not see each other's writes.

Redis protocol
--------------
Keys (all under ``redis.prefix``): ``v:<key>`` a hash ``{s: stamp, v: value}`` with the
entry TTL; ``g:<key>`` the key's *generation*, a random token (TTL twice the entry TTL);
``epoch``, one random token for the whole prefix. An entry's stamp is the epoch and the
generations of its key and deps at the time its ticket was issued; it is served only while
they are all unchanged, and a fill is stored only if they are unchanged (both checks run
atomically in Lua). Writers set a *new random* generation (and delete the entry). Tokens are
random rather than counters, so a generation that expires or is evicted and is created again
can never equal an old stamp: eviction only ever causes misses.

The cross-process race that an in-process counter cannot see (A reads v1 from the store, B
commits v2 and invalidates, A then fills v1) is closed the same way: A's ticket holds the
generation from before its store read, B's invalidation replaced it, so A's fill is refused.
Every commit is followed by an invalidation; if that invalidation happens after A's ticket,
A's fill is refused (or dropped, if it came first); if it happened before, A's store read
already sees the commit.

Fail open
---------
A Redis error or timeout (``redis.socket_timeout``; no client retries) makes a lookup a
miss and a fill a no-op, and makes the cache skip Redis entirely for ``backoff`` seconds:
a dead Redis costs one clock read per request. The first operation after the window is
the probe. Every failure, and every invalidation that fails or is skipped, leaves a *debt*:
before this process uses Redis again it replaces ``epoch``, which invalidates every entry
under the prefix (a Redis that comes back with its data must not serve what was written
meanwhile, by this process or, during a real outage that every process noticed, by any
other). A background task retries that bump every ``backoff`` seconds, so the debt is paid
even if no further request arrives. An outage therefore costs one cache flush per process.

Known windows: a gateway that could not invalidate (Redis unreachable from it) leaves its
old entries valid for gateways that did not notice the outage, until it reaches Redis again
(its bump is retried every ``backoff``) or the entries' TTL ends. A process killed between
its commit and its invalidation leaves the same window, bounded by the TTL. Redis Cluster is
not supported (the scripts touch several keys); use one primary.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from dedup.manifest import Manifest
from gateway.config import Config, RedisConfig
from gateway.meta.models import Bucket, DeleteOutcome, ObjectVersion, StagedData, WriteCondition
from gateway.meta.store import MetadataStore

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Ticket:
    """Permission to fill ``key``, issued by :meth:`Cache.lookup` before the store read.
    ``stamp`` is implementation-specific; ``None`` means "do not fill"."""

    key: str
    deps: tuple[str, ...]
    stamp: object


class Cache(Protocol):
    ttl: float  # seconds an entry lives unless ``fill`` is given another TTL
    # True: values are kept as given (any object); False: values are bytes (serialized)
    holds_objects: bool

    async def lookup(self, key: str, deps: tuple[str, ...] = ()) -> tuple[Any, Ticket]: ...
    async def fill(self, ticket: Ticket, value: Any, ttl: float | None = None) -> None: ...
    async def invalidate(self, *keys: str) -> None: ...
    async def close(self) -> None: ...


class LocalCache:
    """A bounded in-process LRU with per-entry expiry (the embedded default). It holds the
    values it is filled with as they are (``holds_objects``): no copy, no serialization.

    Tickets carry a counter that every invalidation bumps: a lookup that overlapped any
    write is not filled (coarse, but it costs no per-key state).
    """

    holds_objects = True

    def __init__(self, max_entries: int = 100_000, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self._data: collections.OrderedDict[str, tuple[float, Any, tuple[str, ...]]] = (
            collections.OrderedDict()
        )
        self._dependents: dict[str, set[str]] = {}  # dep -> keys of live entries naming it
        self._max = max_entries
        self._clock = 0

    def __len__(self) -> int:
        return len(self._data)

    async def lookup(self, key: str, deps: tuple[str, ...] = ()) -> tuple[Any, Ticket]:
        ticket = Ticket(key, deps, self._clock)
        item = self._data.get(key)
        if item is None:
            return None, ticket
        if item[0] < time.monotonic():
            self._drop(key)
            return None, ticket
        self._data.move_to_end(key)
        return item[1], ticket

    async def fill(self, ticket: Ticket, value: Any, ttl: float | None = None) -> None:
        if ticket.stamp != self._clock:
            return
        self._drop(ticket.key)
        self._data[ticket.key] = (time.monotonic() + (self.ttl if ttl is None else ttl), value, ticket.deps)
        for dep in ticket.deps:
            self._dependents.setdefault(dep, set()).add(ticket.key)
        while len(self._data) > self._max:
            self._drop(next(iter(self._data)))

    async def invalidate(self, *keys: str) -> None:
        self._clock += 1
        for key in keys:
            self._drop(key)
            for dependent in self._dependents.pop(key, ()):
                self._drop(dependent)

    def _drop(self, key: str) -> None:
        item = self._data.pop(key, None)
        if item is None:
            return
        for dep in item[2]:
            keys = self._dependents.get(dep)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._dependents[dep]

    async def close(self) -> None:
        self._data.clear()
        self._dependents.clear()


class NullCache:
    """No caching: every lookup misses (a shared metadata store without Redis)."""

    ttl = 0.0
    holds_objects = False

    async def lookup(self, key: str, deps: tuple[str, ...] = ()) -> tuple[bytes | None, Ticket]:
        return None, Ticket(key, deps, None)

    async def fill(self, ticket: Ticket, value: bytes, ttl: float | None = None) -> None:
        return None

    async def invalidate(self, *keys: str) -> None:
        return None

    async def close(self) -> None:
        return None


# KEYS: [value, epoch, generation of key, generations of deps...]; ARGV: [token, gen ttl ms].
# Creates missing generations (random, so never equal to an old stamp); returns the stamp
# and, if the stored entry carries exactly that stamp, its value.
_LOOKUP = """
local stamp = {}
for i = 2, #KEYS do
  local g = redis.call('GET', KEYS[i])
  if not g then
    g = ARGV[1] .. '.' .. i
    if i == 2 then redis.call('SET', KEYS[i], g) else redis.call('SET', KEYS[i], g, 'PX', ARGV[2]) end
  end
  stamp[i - 1] = g
end
local s = table.concat(stamp, ' ')
local hit = redis.call('HMGET', KEYS[1], 's', 'v')
if hit[1] == s then return {s, hit[2]} end
return {s}
"""

# KEYS as for _LOOKUP; ARGV: [stamp, value, entry ttl ms, gen ttl ms]. Stores the entry only
# if epoch and generations still equal the stamp.
_FILL = """
local stamp = {}
for i = 2, #KEYS do
  local g = redis.call('GET', KEYS[i])
  if not g then return 0 end
  stamp[i - 1] = g
end
if table.concat(stamp, ' ') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'v', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
for i = 3, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return 1
"""


def _token() -> str:
    return secrets.token_hex(8)


class RedisCache:
    """The shared cache on Redis (see the module docstring for the protocol).

    ``backoff``: seconds to skip Redis after a failure (then the next operation probes it).
    """

    holds_objects = False  # values cross processes: bytes only

    def __init__(self, config: RedisConfig, backoff: float = 1.0) -> None:
        if not config.url:
            raise ValueError("RedisCache needs redis.url")
        # redis (~7 MiB of the process) loads only when a Redis URL is configured.
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        # What counts as "Redis is not answering": client errors, socket errors, our hard timeout.
        self._failures = (RedisError, OSError, TimeoutError)
        self.ttl = float(config.ttl_seconds)
        self._prefix = config.prefix.encode()
        self._timeout = config.socket_timeout
        self._backoff = backoff
        self._redis = aioredis.Redis.from_url(
            config.url,
            socket_timeout=config.socket_timeout,
            socket_connect_timeout=config.socket_timeout,
            retry=Retry(NoBackoff(), 0),  # never retry inside a request: fail open instead
            decode_responses=False,
        )
        self._lookup = self._redis.register_script(_LOOKUP)
        self._fill = self._redis.register_script(_FILL)
        self._down_until = 0.0  # monotonic; Redis is skipped before this
        self._failing = False  # an outage was logged and its end is not yet
        self._debt = 0  # failures and missed invalidations (each needs a flush) ...
        self._paid = 0  # ... and how many of them an epoch bump has covered
        self._heal_lock = asyncio.Lock()
        self._healer: asyncio.Task[None] | None = None

    # -- keys ------------------------------------------------------------------------------
    def _k(self, kind: bytes, key: str) -> bytes:
        return self._prefix + kind + key.encode("utf-8", "surrogatepass")

    def _script_keys(self, ticket: Ticket) -> list[bytes]:
        return [
            self._k(b"v:", ticket.key),
            self._prefix + b"epoch",
            self._k(b"g:", ticket.key),
            *(self._k(b"g:", dep) for dep in ticket.deps),
        ]

    @property
    def _gen_ttl_ms(self) -> int:
        return max(1, int(self.ttl * 2000))

    # -- fail-open plumbing ----------------------------------------------------------------
    @property
    def available(self) -> bool:
        """False while inside a back-off window after a failure."""
        return time.monotonic() >= self._down_until

    @property
    def flush_pending(self) -> bool:
        """True after a failure or a missed invalidation, until an epoch bump covers it."""
        return self._debt != self._paid

    async def _guarded(self, op: Callable[[], Awaitable[T]], fallback: T) -> T:
        """Run ``op`` against Redis unless backing off; on failure back off and return
        ``fallback``. Flushes first (epoch bump) if one is pending."""
        if not self.available:
            return fallback
        try:
            async with asyncio.timeout(self._timeout * 4):  # hard cap beyond socket timeouts
                if self.flush_pending:
                    await self._bump_epoch()
                result = await op()
        except self._failures as e:
            await self._trip(e)
            return fallback
        if self._failing:
            self._failing = False
            log.info("redis cache reachable again")
        return result

    async def _trip(self, error: BaseException) -> None:
        self._down_until = time.monotonic() + self._backoff
        self._owe()  # flush before trusting Redis again
        if not self._failing:
            self._failing = True
            log.warning(
                "redis cache unavailable (%s: %s); serving from the metadata store, retrying in %.1fs",
                type(error).__name__, error, self._backoff,
            )  # fmt: skip
        with contextlib.suppress(*self._failures):  # drop every pooled connection: all
            await self._redis.connection_pool.disconnect()  # are fresh after the window

    async def _bump_epoch(self) -> None:
        async with self._heal_lock:
            owed = self._debt
            if owed == self._paid:
                return
            await self._redis.set(self._prefix + b"epoch", _token())
            self._paid = max(self._paid, owed)
            log.info("redis cache flushed (epoch replaced) after an outage or a missed invalidation")

    def _owe(self) -> None:
        self._debt += 1
        if self._healer is None or self._healer.done():
            self._healer = asyncio.ensure_future(self._heal_in_background())

    async def _heal_in_background(self) -> None:
        while self.flush_pending:
            await asyncio.sleep(max(self._down_until - time.monotonic(), 0.01))
            await self._guarded(self._noop, None)  # flushes if Redis answers

    @staticmethod
    async def _noop() -> None:
        return None

    # -- Cache -----------------------------------------------------------------------------
    async def lookup(self, key: str, deps: tuple[str, ...] = ()) -> tuple[bytes | None, Ticket]:
        ticket = Ticket(key, deps, None)

        async def op() -> tuple[bytes | None, Ticket]:
            reply = await self._lookup(keys=self._script_keys(ticket), args=[_token(), self._gen_ttl_ms])
            return (reply[1] if len(reply) > 1 else None), dataclasses.replace(ticket, stamp=reply[0])

        return await self._guarded(op, (None, ticket))

    async def fill(self, ticket: Ticket, value: bytes, ttl: float | None = None) -> None:
        if ticket.stamp is None:
            return
        ttl_ms = max(1, int((self.ttl if ttl is None else ttl) * 1000))
        args = [ticket.stamp, value, ttl_ms, self._gen_ttl_ms]
        await self._guarded(lambda: self._fill(keys=self._script_keys(ticket), args=args), None)

    async def invalidate(self, *keys: str) -> None:
        if not keys:
            return

        async def op() -> bool:
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.set(self._k(b"g:", key), _token(), px=self._gen_ttl_ms)
                pipe.delete(self._k(b"v:", key))
            await pipe.execute()
            return True

        if not await self._guarded(op, False):
            self._owe()

    async def close(self) -> None:
        if self._healer is not None:
            self._healer.cancel()
            await asyncio.gather(self._healer, return_exceptions=True)
        await self._redis.aclose()


def open_cache(config: Config) -> Cache:
    """The cache the config asks for (see the module docstring)."""
    ttl = float(config.redis.ttl_seconds)
    if config.redis.url:
        return RedisCache(config.redis)
    if not config.meta.dsns:
        return LocalCache(ttl=ttl)
    log.info("shared metadata store without redis.url: version lookups are not cached")
    return NullCache()


# -- records ---------------------------------------------------------------------------------


def encode_version(v: ObjectVersion) -> bytes:
    fields: dict[str, Any] = {k: getattr(v, k) for k in v.__dataclass_fields__ if k != "manifest"}
    fields["manifest"] = base64.b64encode(v.manifest.encode()).decode()
    return json.dumps(fields).encode()


def decode_version(data: bytes) -> ObjectVersion:
    fields = json.loads(data)
    fields["manifest"] = Manifest.decode(base64.b64decode(fields["manifest"]))
    return ObjectVersion(**fields)


def _encode_bucket(b: Bucket) -> bytes:
    return json.dumps(dataclasses.asdict(b)).encode()


def _decode_bucket(data: bytes) -> Bucket:
    return Bucket(**json.loads(data))


_ABSENT = b"\x00absent"  # a cached "does not exist"

# Store methods that CachedMetadataStore passes through untouched: reads it does not cache,
# and writes that change nothing it caches. Every other method of MetadataStore (and of
# MaintenanceStore, for jobs run on a serving gateway's store) must be defined on
# CachedMetadataStore (a unit test checks this), so that a new write method cannot silently
# bypass invalidation.
PASS_THROUGH = frozenset(
    {
        "open",
        "create_user",
        "get_user",
        "put_access_key",
        "get_access_key",
        "has_access_key_for",
        "list_buckets",
        "list_versions",
        "list_objects",
        "create_upload",
        "get_upload",
        "list_uploads",
        "put_part",
        "list_parts",
        "abort_upload",
        "lookup_chunks",
        "get_pack",
        "outbox_shards",
        "read_outbox",
        "get_relay_cursor",
        "advance_relay_cursor",
        "claim_relay",
        "release_relay",
        "trim_outbox",
        "expire_outbox",
        "append_audit",
        "read_audit",
        "ping",
        "pool_usage",
        "scan_versions",
        "scan_parts",
        "restore_index",  # pack and chunk rows only
        "storage_stats",
        # MaintenanceStore (gc, repack, key jobs): chunks, packs, wrapped keys and job rows
        # only. Manifests name chunk ids, not locations, so no cached record changes.
        "scan_chunks",
        "condemn_chunks",
        "revive_chunks",
        "sweep_chunks",
        "scan_pack_usage",
        "pack_chunks",
        "retire_packs",
        "delete_retired_packs",
        "tombstone_orphans",
        "prune_tombstones",
        "repoint_chunks",
        "scan_wrapped_keys",
        "rewrap_keys",
        "get_job",
        "claim_lease",
        "release_lease",
        "lease_holder",
        "put_job",
        "settle_commits",
        # inline manifests re-wrapped or re-sealed by key jobs: the same data, and a cached
        # ``old`` manifest still reads (MaintenanceStore.replace_manifest)
        "scan_inline_versions",
        "replace_manifest",
    }
)


class CachedMetadataStore:
    """Wraps a metadata store: latest-version, bucket and bucket-config lookups go through
    ``cache``; every write that changes one of them invalidates it after the commit (also
    when the write raised: it may have committed)."""

    def __init__(self, inner: MetadataStore, cache: Cache, ttl: float | None = None) -> None:
        self._inner = inner
        self._cache = cache
        self._ttl = ttl

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def cache(self) -> Cache:
        return self._cache

    @staticmethod
    def _key(bucket: str, key: str) -> str:
        return f"v1:obj:{len(bucket)}:{bucket}:{key}"

    @staticmethod
    def _bucket_key(name: str) -> str:
        return f"v1:bkt:{name}"

    async def _cached(
        self, ck: str, load: Callable[[], Awaitable[Any]], encode: Callable[[Any], bytes],
        decode: Callable[[bytes], Any], deps: tuple[str, ...] = (), negative: bool = False,
    ) -> Any:  # fmt: skip
        """Read-through: a hit is the record (decoded first unless the cache holds objects);
        a miss loads and fills with the pre-load ticket."""
        objects = self._cache.holds_objects
        hit, ticket = await self._cache.lookup(ck, deps)
        if hit is not None:
            if hit is _ABSENT or (not objects and hit == _ABSENT):
                return None
            if objects:
                return hit
            try:
                return decode(hit)
            except (ValueError, TypeError, KeyError):  # another build's record: a miss
                pass
        value = await load()
        if value is not None or negative:
            stored = _ABSENT if value is None else (value if objects else encode(value))
            await self._cache.fill(ticket, stored, self._ttl)
        return value

    async def close(self) -> None:
        try:
            await self._inner.close()
        finally:
            await self._cache.close()

    async def get_object(self, bucket: str, key: str, version_id: str | None = None) -> ObjectVersion | None:
        if version_id is not None:
            return await self._inner.get_object(bucket, key, version_id)
        load = lambda: self._inner.get_object(bucket, key)  # noqa: E731
        return await self._cached(self._key(bucket, key), load, encode_version, decode_version)

    async def get_bucket(self, name: str) -> Bucket | None:
        return await self._cached(
            self._bucket_key(name), lambda: self._inner.get_bucket(name), _encode_bucket, _decode_bucket
        )

    async def get_bucket_config(self, bucket: str, name: str) -> str | None:
        return await self._cached(
            f"v1:cfg:{len(bucket)}:{bucket}:{name}",
            lambda: self._inner.get_bucket_config(bucket, name),
            str.encode,
            bytes.decode,
            deps=(self._bucket_key(bucket),),  # goes with the bucket
            negative=True,  # most buckets have no such document: remember that too
        )

    async def put_bucket_config(self, bucket: str, name: str, body: str | None) -> None:
        try:
            await self._inner.put_bucket_config(bucket, name, body)
        finally:
            await self._cache.invalidate(f"v1:cfg:{len(bucket)}:{bucket}:{name}")

    async def create_bucket(self, bucket: Bucket) -> bool:
        try:
            return await self._inner.create_bucket(bucket)
        finally:
            await self._cache.invalidate(self._bucket_key(bucket.name))

    async def delete_bucket(self, name: str) -> None:
        try:
            await self._inner.delete_bucket(name)
        finally:
            await self._cache.invalidate(self._bucket_key(name))

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
            await self._cache.invalidate(self._key(version.bucket, version.key))

    async def delete_object(
        self, bucket: str, key: str, version_id: str | None = None, marker: ObjectVersion | None = None
    ) -> DeleteOutcome:
        try:
            return await self._inner.delete_object(bucket, key, version_id, marker)
        finally:
            await self._cache.invalidate(self._key(bucket, key))

    async def set_object_tags(
        self, bucket: str, key: str, version_id: str | None, tags: dict[str, str]
    ) -> bool:
        try:
            return await self._inner.set_object_tags(bucket, key, version_id, tags)
        finally:
            await self._cache.invalidate(self._key(bucket, key))

    async def complete_upload(
        self, upload_id: str, version: ObjectVersion, condition: WriteCondition | None = None
    ) -> bool:
        try:
            return await self._inner.complete_upload(upload_id, version, condition)
        finally:
            await self._cache.invalidate(self._key(version.bucket, version.key))
