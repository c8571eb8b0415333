"""Builds the blob backend that the config asks for: the embedded local directory, or (in
the production profile) S3 buckets behind retries and a circuit breaker, with an optional
asynchronous replica.

* No ``backend.endpoint`` and no ``backend.bucket``: ``storage.data_dir/blobs``.
* ``backend.bucket`` (``endpoint`` unset means AWS S3 itself): ``Resilient(S3)`` on the
  bucket of the tier (new packs go to the hot tier, ``backend.bucket``).
* ``backend.replica_bucket`` as well: wrapped in :class:`ReplicatedBackend`, the replica
  being ``Resilient(S3)`` on ``replica_endpoint`` (default: the primary's endpoint) with
  the ``replica_*`` credentials (default: the primary's).

S3 writers spool under ``storage.data_dir/spool/<tier or "replica">``. See docs/backends.md.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from gateway.backends.base import BlobBackend
from gateway.backends.local import LocalBlobBackend
from gateway.backends.replicated import ReplicatedBackend
from gateway.backends.resilient import BackendObserver, ReplicaObserver, ResilientBackend
from gateway.backends.s3 import S3BlobBackend, S3Settings
from gateway.config import BackendConfig, Config

TIERS = ("hot", "warm", "cold")


def tier_bucket(config: BackendConfig, tier: str) -> str | None:
    """The bucket that holds packs of ``tier``: warm and cold default to the hot bucket."""
    if tier not in TIERS:
        raise ValueError(f"unknown storage tier {tier!r} (expected one of {', '.join(TIERS)})")
    explicit = {"hot": config.bucket, "warm": config.warm_bucket, "cold": config.cold_bucket}[tier]
    return explicit or config.bucket


def check_backend_config(config: BackendConfig) -> None:
    """Refuse half-configured backends with a clear message (before anything starts)."""
    if config.endpoint and not config.bucket:
        raise ValueError("backend.endpoint is set but backend.bucket is not (STRATA_BACKEND_BUCKET)")
    if not config.bucket and (config.warm_bucket or config.cold_bucket or config.replica_bucket):
        raise ValueError("backend.warm_bucket/cold_bucket/replica_bucket need backend.bucket as well")
    if config.replica_endpoint and not config.replica_bucket:
        raise ValueError("backend.replica_endpoint is set but backend.replica_bucket is not")
    if (config.access_key is None) != (config.secret_key is None):
        raise ValueError("backend.access_key and backend.secret_key go together")
    if config.max_attempts < 1 or config.breaker_failures < 1:
        raise ValueError("backend.max_attempts and backend.breaker_failures must be at least 1")


def s3_settings(config: BackendConfig, tier: str = "hot", *, replica: bool = False) -> S3Settings:
    """Where the S3 backend of ``tier`` (or the replica) lives."""
    if replica:
        assert config.replica_bucket is not None
        own_keys = config.replica_access_key is not None
        return S3Settings(
            bucket=config.replica_bucket,
            endpoint=config.replica_endpoint or config.endpoint,
            region=config.replica_region,
            access_key=config.replica_access_key if own_keys else config.access_key,
            secret_key=config.replica_secret_key if own_keys else config.secret_key,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
        )
    bucket = tier_bucket(config, tier)
    assert bucket is not None
    return S3Settings(
        bucket=bucket,
        endpoint=config.endpoint,
        region=config.region,
        access_key=config.access_key,
        secret_key=config.secret_key,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
    )


def open_backend(
    config: Config, observer: BackendObserver | None = None, *, tier: str = "hot", serving: bool = True
) -> BlobBackend:
    """The blob backend of ``tier``. ``observer`` sees every backend request and breaker
    change (the replica's requests as ``replica_<op>``, its breaker not at all).
    ``serving=False``: for admin commands beside a live gateway (no start-up cleanup)."""
    b = config.backend
    check_backend_config(b)
    if not b.bucket:
        return LocalBlobBackend(
            config.storage.data_dir / "blobs",
            clear_stale=serving,
            direct_writes=config.storage.direct_writes,
            write_cache_window=config.storage.write_cache_window,
            map_cache=config.storage.map_cache,
        )
    spool = config.storage.data_dir / "spool"
    primary = ResilientBackend(
        S3BlobBackend(s3_settings(b, tier), spool / tier, clear_stale=serving), b, observer
    )
    if not b.replica_bucket:
        return primary
    replica = ResilientBackend(
        S3BlobBackend(s3_settings(b, replica=True), spool / "replica", clear_stale=serving),
        b,
        ReplicaObserver(observer) if observer is not None else None,
    )
    return ReplicatedBackend(primary, replica)


def backend_jobs(backend: BlobBackend) -> list[Coroutine[Any, Any, None]]:
    """The background work a serving process must spawn for ``backend`` (replication)."""
    return backend.jobs() if isinstance(backend, ReplicatedBackend) else []
