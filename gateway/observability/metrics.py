"""Prometheus metrics of one gateway process, in a registry of its own (never the global
default registry, so several apps in one process do not collide).

:class:`Metrics` owns every metric and the ways they are fed:

* :meth:`Metrics.observe_request` (a request finisher, see ``record.py``): per-operation
  request counts and latency, uploads, downloads, upload errors;
* :meth:`Metrics.ingested` (called by the ingest pipeline): upload payload bytes and the
  bytes of chunks that were already stored (dedup savings);
* the backend observer protocol that ``ResilientBackend`` calls: :meth:`Metrics.request`
  and :meth:`Metrics.breaker`;
* :func:`refresh_storage` (a background task): the storage gauges from one store aggregate
  every ~30 s, never per scrape, and the data dir's disk capacity;
* at scrape time, cheap callbacks only: uploads in flight, the metadata pool's usage, the
  GET chunk cache's counters and size (:meth:`Metrics.watch_chunk_cache`).

Labels are bounded: operation names come from the router, error types from the S3 error
table or the backend's exception class names, each capped by :class:`BoundedLabel`. Bucket
names, keys, users and access keys are never labels.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from gateway.chunkcache import ChunkCache
from gateway.meta.models import PoolUsage
from gateway.meta.store import MetadataStore, StorageStats
from gateway.observability.record import DOWNLOAD_OPERATIONS, UPLOAD_OPERATIONS, RequestRecord, current

log = logging.getLogger("strata.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
STORAGE_REFRESH_SECONDS = 30.0
# Request latencies span 4 KiB GETs (ms) to multi-GiB PUTs (minutes).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BACKEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# circuit_breaker_state values: higher is worse.
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
OTHER = "other"
MAX_CACHED_SERIES = 4096  # (operation, status) pairs whose metric children are kept


class BoundedLabel:
    """Caps the distinct values of one label: the first ``limit`` values seen are kept, any
    later one becomes ``"other"`` (a bug or a hostile client cannot blow up the series)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        value = value or "none"
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit or len(value) > 64:
            return OTHER
        self._seen.add(value)
        return value


def ratio(numerator: int, denominator: int) -> float:
    """``numerator / denominator``, 1.0 when there is nothing to divide (no data yet)."""
    return numerator / denominator if denominator > 0 else 1.0


class _ChunkCacheCollector(Collector):
    """``chunk_cache_{hits,misses,shared}_total`` and ``chunk_cache_bytes`` at scrape."""

    def __init__(self, cache: ChunkCache) -> None:
        self._cache = cache

    def collect(self) -> Iterable[Metric]:
        stats = self._cache.stats
        for name, doc, value in (
            ("chunk_cache_hits", "GET chunks answered from the chunk cache.", stats.hits),
            ("chunk_cache_misses", "Cacheable GET chunks fetched and decoded.", stats.misses),
            ("chunk_cache_shared", "GET chunks another request was already decoding.", stats.shared),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        held = self._cache.held_bytes
        yield GaugeMetricFamily("chunk_cache_bytes", "Plaintext bytes held by the chunk cache.", value=held)


class Metrics:
    """Every metric of a gateway process, registered in :attr:`registry`."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.in_flight: set[RequestRecord] = set()  # maintained by the request middleware
        self._pool: Callable[[], PoolUsage] | None = None
        self._pool_failed = False  # its failure was logged (once, not on every scrape)
        self._operation = BoundedLabel(128)
        self._error = BoundedLabel(64)
        self._status = BoundedLabel(64)
        self._backend_op = BoundedLabel(32)
        self._backend_error = BoundedLabel(64)
        self._tier = BoundedLabel(16)
        self._request_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

        # S3 operations
        self.s3_requests = Counter(
            "s3_requests_total", "S3 requests by operation and HTTP status.",
            ["operation", "status"], registry=r,
        )  # fmt: skip
        self.s3_duration = Histogram(
            "s3_request_duration_seconds", "S3 request latency by operation (until the last byte).",
            ["operation"], buckets=REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        # uploads
        self.upload_requests = Counter(
            "upload_requests_total", "Upload requests (PutObject, UploadPart, PostObject).", registry=r
        )
        self.upload_bytes = Counter(
            "upload_bytes_total", "Object payload bytes received by upload requests.", registry=r
        )
        self.upload_duration = Histogram(
            "upload_duration_seconds", "Upload request latency.", buckets=REQUEST_BUCKETS, registry=r
        )
        self.upload_errors = Counter(
            "upload_errors_total", "Upload requests that failed, by S3 error code.",
            ["error_type"], registry=r,
        )  # fmt: skip
        self.concurrent_uploads = Gauge("concurrent_uploads", "Upload requests being served.", registry=r)
        self.concurrent_uploads.set_function(self._uploads_in_flight)
        # downloads' read-ahead and the idle memory trim (gateway/readpath.py, gateway/memory.py)
        self.read_ahead = Gauge(
            "read_ahead_bytes",
            "Plaintext GETs decode beyond their next run (storage.read_ahead_budget).",
            registry=r,
        )
        self.mapped_packs = Gauge(
            "mapped_pack_bytes",
            "Bytes of local packs whose memory maps are kept for later GETs (storage.map_cache).",
            registry=r,
        )
        self.memory_trims = Counter(
            "memory_trims", "Times an idle process gave its free heap memory back to the kernel.", registry=r
        )
        self.memory_trimmed = Counter(
            "memory_trimmed_bytes", "Anonymous memory the idle trims gave back to the kernel.", registry=r
        )
        self.dedup_savings = Counter(
            "dedup_savings_bytes",
            "Uploaded payload bytes not stored again because their chunks were already stored "
            "(sample: dedup_savings_bytes_total).",
            registry=r,
        )
        # downloads
        self.download_requests = Counter("download_requests_total", "GetObject requests.", registry=r)
        self.download_bytes = Counter(
            "download_bytes_total", "Object bytes sent by completed GetObject requests.", registry=r
        )
        self.download_duration = Histogram(
            "download_duration_seconds", "GetObject latency (until the last byte).",
            buckets=REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        # storage (refreshed by refresh_storage)
        self.total_files = Gauge("total_files", "Current objects (not delete markers).", registry=r)
        self.total_storage_bytes = Gauge(
            "total_storage_bytes", "Bytes stored in the backend (packs, before GC).", registry=r
        )
        self.storage_by_tier = Gauge(
            "storage_by_tier", "Logical bytes of object versions by storage tier.", ["tier"], registry=r
        )
        self.dedup_ratio = Gauge(
            "dedup_ratio", "Logical bytes (versions and parts) / unique chunk bytes.", registry=r
        )
        self.compression_ratio = Gauge(
            "compression_ratio", "Unique chunk bytes / their stored (compressed, sealed) bytes.", registry=r
        )
        self.storage_capacity = Gauge(
            "storage_capacity_bytes", "Size of the filesystem holding the data dir.", registry=r
        )
        self.storage_used = Gauge(
            "storage_used_bytes", "Bytes used on the filesystem holding the data dir.", registry=r
        )
        self.storage_refreshed = Gauge(
            "storage_stats_timestamp_seconds", "When the storage gauges were last refreshed.", registry=r
        )
        # backend health (fed by ResilientBackend through the observer protocol)
        self.backend_duration = Histogram(
            "backend_request_duration_seconds", "Blob backend request latency by operation.",
            ["operation"], buckets=BACKEND_BUCKETS, registry=r,
        )  # fmt: skip
        self.backend_errors = Counter(
            "backend_errors_total", "Failed blob backend requests by operation and error type.",
            ["operation", "error_type"], registry=r,
        )  # fmt: skip
        self.breaker_state = Gauge(
            "circuit_breaker_state", "Backend circuit breaker: 0 closed, 1 half-open, 2 open.", registry=r
        )
        # metadata store
        self.pool_in_use = Gauge("metadata_pool_in_use", "Metadata connections in use.", registry=r)
        self.pool_size = Gauge("metadata_pool_size", "Metadata connections available at most.", registry=r)
        self.pool_waiting = Gauge(
            "metadata_pool_waiting", "Metadata writes queued for a connection (SQLite).", registry=r
        )
        self.pool_in_use.set_function(lambda: self._pool_usage().in_use)
        self.pool_size.set_function(lambda: self._pool_usage().size)
        self.pool_waiting.set_function(lambda: self._pool_usage().waiting)
        # audit log
        self.audit_records = Counter("audit_records_total", "Audit records written to the store.", registry=r)
        self.audit_dropped = Counter(
            "audit_dropped_total", "Audit records dropped (queue full or store failing).", registry=r
        )
        self.audit_queue = Gauge("audit_queue_depth", "Audit records waiting to be written.", registry=r)

    # -- scrape ---------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """The text exposition format (content type :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def watch_pool(self, usage: Callable[[], PoolUsage]) -> None:
        """Read the metadata pool gauges from ``usage`` (the store's ``pool_usage``) at scrape."""
        self._pool = usage

    def watch_read_ahead(self, held: Callable[[], int]) -> None:
        """Read ``read_ahead_bytes`` from ``held`` (the GET reader's ``ahead_bytes``) at scrape."""
        self.read_ahead.set_function(held)

    def watch_mapped_packs(self, held: Callable[[], int]) -> None:
        """Read ``mapped_pack_bytes`` from ``held`` (the local backend's kept maps) at scrape."""
        self.mapped_packs.set_function(held)

    def trimmed(self, freed: int) -> None:
        """An idle trim ran and gave back ``freed`` bytes of anonymous memory."""
        self.memory_trims.inc()
        self.memory_trimmed.inc(max(freed, 0))

    def watch_chunk_cache(self, cache: ChunkCache) -> None:
        """Export the GET chunk cache's counters and size, read at scrape."""
        self.registry.register(_ChunkCacheCollector(cache))

    def _pool_usage(self) -> PoolUsage:
        if self._pool is None:
            return PoolUsage(0, 0)
        try:
            return self._pool()
        except Exception:  # a scrape must not fail because one source did
            if not self._pool_failed:
                log.exception("metadata pool usage (reported as 0 until it works)")
                self._pool_failed = True
            return PoolUsage(0, 0)

    def _uploads_in_flight(self) -> int:
        return sum(1 for rec in self.in_flight if rec.operation in UPLOAD_OPERATIONS)

    # -- requests -------------------------------------------------------------------------
    def _request_series(self, operation: str, status: int) -> tuple[Counter, Histogram]:
        """The ``s3_requests_total`` and ``s3_request_duration_seconds`` children of one
        (operation, status), looked up once: ``labels()`` costs more than the observation.
        Neither metric is ever cleared, so a child stays the registered one."""
        key = (operation, status)
        series = self._request_children.get(key)
        if series is None:
            label = self._operation(operation)
            counted = self.s3_requests.labels(label, self._status(str(status)))
            series = (counted, self.s3_duration.labels(label))
            if len(self._request_children) < MAX_CACHED_SERIES:  # bounded like the labels
                self._request_children[key] = series
        return series

    def observe_request(self, rec: RequestRecord) -> None:
        """Count one finished S3 request (a request finisher)."""
        requests, duration = self._request_series(rec.operation, rec.status)
        requests.inc()
        duration.observe(rec.duration)
        if rec.operation in UPLOAD_OPERATIONS:
            self.upload_requests.inc()
            self.upload_duration.observe(rec.duration)
            self.upload_bytes.inc(rec.bytes_stored)
            if rec.status >= 400:
                self.upload_errors.labels(self._error(rec.error or f"HTTP{rec.status}")).inc()
        elif rec.operation in DOWNLOAD_OPERATIONS:
            self.download_requests.inc()
            self.download_duration.observe(rec.duration)
            if rec.status in (200, 206):
                self.download_bytes.inc(rec.bytes_out)

    def ingested(self, size: int, reused: int) -> None:
        """An ingest stored ``size`` payload bytes, ``reused`` of them in chunks that were
        already stored (called by :class:`gateway.ingest.Ingestor`)."""
        self.dedup_savings.inc(reused)
        rec = current()
        if rec is not None:
            rec.bytes_stored += size

    # -- backend observer protocol ----------------------------------------------------------
    def request(self, op: str, seconds: float, ok: bool, error_type: str | None) -> None:
        """One backend request (each attempt) took ``seconds`` and succeeded or failed."""
        operation = self._backend_op(op)
        self.backend_duration.labels(operation).observe(seconds)
        if not ok:
            self.backend_errors.labels(operation, self._backend_error(error_type)).inc()

    def breaker(self, state: str) -> None:
        """The backend circuit breaker moved to ``state`` (closed, open, half_open)."""
        value = BREAKER_STATES.get(state)
        if value is None:
            log.warning("unknown circuit breaker state %r", state)
            return
        self.breaker_state.set(value)

    # -- storage --------------------------------------------------------------------------
    def set_storage(self, stats: StorageStats) -> None:
        logical = stats.version_bytes + stats.part_bytes
        self.total_files.set(stats.objects)
        self.total_storage_bytes.set(stats.pack_bytes)
        self.dedup_ratio.set(ratio(logical, stats.chunk_plain_bytes))
        self.compression_ratio.set(ratio(stats.chunk_plain_bytes, stats.chunk_stored_bytes))
        self.storage_by_tier.clear()  # a class with no bytes left disappears
        for storage_class, size in stats.bytes_by_class.items():
            self.storage_by_tier.labels(self._tier(storage_class)).set(size)

    def set_disk(self, capacity: int, used: int) -> None:
        self.storage_capacity.set(capacity)
        self.storage_used.set(used)


async def refresh_storage(
    metrics: Metrics, meta: MetadataStore, data_dir: Path, interval: float = STORAGE_REFRESH_SECONDS
) -> None:
    """Refresh the storage gauges from one store aggregate, and the data dir's disk usage,
    every ``interval`` seconds until cancelled (failures are logged and retried)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            metrics.set_storage(await meta.storage_stats())
            disk = await loop.run_in_executor(None, shutil.disk_usage, data_dir)
            metrics.set_disk(disk.total, disk.used)
            metrics.storage_refreshed.set_to_current_time()
        except Exception:
            log.exception("refreshing storage metrics")
        await asyncio.sleep(interval)
