"""The running gateway's parts, built from the config and closed together.

The embedded default wires SQLite metadata (behind an in-process LRU for version lookups), a
local-directory blob backend, a local keyring under ``storage.data_dir``, and an outbox-only
event sink. Production implementations plug into the same slots.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from crypto import KEKProvider
from gateway.backends.base import BlobBackend
from gateway.backends.factory import backend_jobs, open_backend
from gateway.backends.local import LocalBlobBackend
from gateway.cache import CachedMetadataStore, open_cache
from gateway.config import Config
from gateway.events import EventSink, OutboxRelay, expire_outbox_periodically, open_sink
from gateway.identity import Identities
from gateway.ingest import Ingestor
from gateway.kek import close_kek, open_kek
from gateway.maintenance.lease import exclusive
from gateway.memory import trim_when_idle
from gateway.meta.factory import open_store
from gateway.meta.store import MaintenanceStore, MetadataStore
from gateway.observability.audit import AuditLog
from gateway.observability.metrics import Metrics, refresh_storage
from gateway.readpath import ChunkReader


@dataclass
class Runtime:
    config: Config
    meta: MetadataStore
    backend: BlobBackend
    kek: KEKProvider
    pool: ThreadPoolExecutor
    send_pool: ThreadPoolExecutor | None  # large GET bodies out, raw PUT bodies in (socket_send/recv)
    identities: Identities
    ingestor: Ingestor
    reader: ChunkReader
    events: EventSink
    metrics: Metrics
    audit: AuditLog
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @classmethod
    async def open(cls, config: Config) -> Runtime:
        kek, store = await open_metadata(config)
        meta = CachedMetadataStore(store, open_cache(config))
        metrics = Metrics()
        metrics.watch_pool(lambda: meta.pool_usage())
        backend = open_backend(config, metrics)  # metrics observe backend requests and breaker
        pool = ThreadPoolExecutor(max_workers=config.storage.cpu_workers, thread_name_prefix="cpu")
        sends = config.storage.send_threads
        reader = ChunkReader(
            backend,
            meta,
            kek,
            pool,
            config.storage.read_ahead,
            run_bytes=config.storage.read_run,
            chunk_cache=config.storage.chunk_cache,
            ahead_budget=config.storage.read_ahead_budget,
        )
        metrics.watch_chunk_cache(reader.cache)
        metrics.watch_read_ahead(lambda: reader.ahead_bytes)
        if isinstance(backend, LocalBlobBackend):
            maps = backend.maps
            metrics.watch_mapped_packs(lambda: maps.held_bytes)
        return cls(
            config=config,
            meta=meta,
            backend=backend,
            kek=kek,
            pool=pool,
            send_pool=ThreadPoolExecutor(max_workers=sends, thread_name_prefix="send") if sends > 0 else None,
            identities=Identities(meta, kek),
            ingestor=Ingestor(backend, meta, kek, pool, config.storage, on_ingest=metrics.ingested),
            events=open_sink(config),
            reader=reader,
            metrics=metrics,
            audit=AuditLog(meta, metrics, enabled=config.log.audit),
        )

    async def start(self) -> None:
        """Start the background jobs of a serving process (called once the app runs)."""
        self.spawn(self.audit.run())
        self.spawn(refresh_storage(self.metrics, self.meta, self.config.storage.data_dir))
        for job in backend_jobs(self.backend):  # replication to the replica backend
            self.spawn(job)
        if self.config.kafka.bootstrap:  # publish the outbox to Kafka
            self.spawn(OutboxRelay(self.meta, self.events, self.config).run())
        self.spawn(expire_outbox_periodically(self.meta, self.config.kafka))
        idle_trim = self.config.server.idle_trim_seconds
        if idle_trim > 0:  # free memory goes back to the kernel when the process is idle
            in_flight = self.metrics.in_flight
            trims = trim_when_idle(
                lambda: bool(in_flight), self.reader.release_buffers, idle_trim, on_trim=self.metrics.trimmed
            )
            self.spawn(trims)
        from gateway.maintenance import gc, keys

        self.spawn(keys.follow_keyring(self.kek))  # new wraps use the version `keys rotate` adds
        if self.config.gc.interval_seconds > 0:  # scheduled garbage collection
            meta = cast(MaintenanceStore, self.meta)
            self.spawn(gc.run_periodically(meta, self.backend, self.kek, self.pool, self.config))

    def spawn(self, job: Coroutine[Any, Any, Any]) -> None:
        """Run ``job`` in the background until :meth:`close` cancels it."""
        self.tasks.append(asyncio.ensure_future(job))

    async def close(self) -> None:
        await self.audit.close()  # before the store closes: writes the queued records
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.meta.close()
        await self.backend.close()
        await close_kek(self.kek)
        self.pool.shutdown(wait=True)
        if self.send_pool is not None:
            self.send_pool.shutdown(wait=True)


@dataclass
class AdminStores:
    """What an admin or maintenance command works on, opened next to a live gateway."""

    meta: MetadataStore
    backend: BlobBackend
    kek: KEKProvider
    pool: ThreadPoolExecutor


@asynccontextmanager
async def admin_stores(config: Config, job: str | None = None) -> AsyncIterator[AdminStores]:
    """The metadata store, blob backend (without the serving process's start-up cleanup),
    KEK provider and a CPU pool for an admin command; all closed on exit. Safe beside a
    running gateway on the same stores. With ``job``, the command is an exclusive maintenance
    job: it holds the maintenance lease throughout (:mod:`gateway.maintenance.lease`; raises
    ``LeaseBusy`` if another process's job holds it)."""
    kek, meta = await open_metadata(config)
    backend = open_backend(config, serving=False)
    pool = ThreadPoolExecutor(max_workers=config.storage.cpu_workers, thread_name_prefix="job")
    try:
        stores = AdminStores(meta, backend, kek, pool)
        if job is None:
            yield stores
        else:
            async with exclusive(cast(MaintenanceStore, meta), job):
                yield stores
    finally:
        pool.shutdown(wait=True)
        await backend.close()
        await meta.close()
        await close_kek(kek)


async def open_metadata(config: Config) -> tuple[KEKProvider, MetadataStore]:
    """The KEK provider and metadata store alone: what admin commands need, and safe to open
    beside a running server (unlike the blob backend, which clears stale temp files)."""
    data_dir = config.storage.data_dir
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    kek = await open_kek(config)
    return kek, await open_store(config)
