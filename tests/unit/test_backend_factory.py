"""open_backend builds what the config asks for, and refuses half-configured backends."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.backends.factory import backend_jobs, open_backend, s3_settings, tier_bucket
from gateway.backends.local import LocalBlobBackend
from gateway.backends.replicated import ReplicatedBackend
from gateway.backends.resilient import ResilientBackend
from gateway.backends.s3 import S3BlobBackend
from gateway.config import BackendConfig, Config, StorageConfig


def config(tmp_path: Path, **backend: object) -> Config:
    return Config(storage=StorageConfig(data_dir=tmp_path), backend=BackendConfig(**backend))  # type: ignore[arg-type]


async def test_local_by_default(tmp_path: Path) -> None:
    backend = open_backend(config(tmp_path))
    try:
        assert isinstance(backend, LocalBlobBackend) and backend_jobs(backend) == []
        assert backend.root == (tmp_path / "blobs").resolve()
        assert backend.recent_writes.window == StorageConfig().write_cache_window == 1024**3
    finally:
        await backend.close()
    cfg = Config(storage=StorageConfig(data_dir=tmp_path, write_cache_window=0))
    backend = open_backend(cfg)
    try:
        assert isinstance(backend, LocalBlobBackend) and backend.recent_writes.window == 0
    finally:
        await backend.close()


async def test_s3_behind_retries_and_a_replica(tmp_path: Path) -> None:
    cfg = config(tmp_path, endpoint="http://127.0.0.1:1", bucket="hot", access_key="k", secret_key="s")
    backend = open_backend(cfg)
    try:
        assert isinstance(backend, ResilientBackend) and isinstance(backend.inner, S3BlobBackend)
        assert backend.inner.bucket == "hot" and (tmp_path / "spool" / "hot").is_dir()
        assert backend_jobs(backend) == []
    finally:
        await backend.close()
    cfg = dataclasses.replace(cfg, backend=dataclasses.replace(cfg.backend, replica_bucket="rep"))
    replicated = open_backend(cfg)
    try:
        assert isinstance(replicated, ReplicatedBackend)
        assert isinstance(replicated.replica, ResilientBackend)
        replica = replicated.replica.inner
        assert isinstance(replica, S3BlobBackend) and replica.bucket == "rep"
        assert replica.settings.endpoint == "http://127.0.0.1:1" and replica.settings.access_key == "k"
        jobs = backend_jobs(replicated)
        assert len(jobs) == 3  # the backfill loop and two copy workers
        for job in jobs:
            job.close()
    finally:
        await replicated.close()


def test_replica_settings_use_their_own_keys_when_given() -> None:
    b = BackendConfig(
        endpoint="http://a", bucket="hot", access_key="k", secret_key="s",
        replica_endpoint="http://b", replica_bucket="rep", replica_access_key="rk", replica_secret_key="rs",
        replica_region="eu-west-1",
    )  # fmt: skip
    s = s3_settings(b, replica=True)
    assert (s.endpoint, s.bucket, s.access_key, s.secret_key, s.region) == (
        "http://b",
        "rep",
        "rk",
        "rs",
        "eu-west-1",
    )
    assert "rs" not in repr(s) and "rk" not in repr(s)


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ({"endpoint": "http://x"}, "backend.bucket is not"),
        ({"replica_bucket": "r"}, "need backend.bucket"),
        ({"bucket": "b", "replica_endpoint": "http://r"}, "replica_bucket is not"),
        ({"bucket": "b", "access_key": "k"}, "go together"),
        ({"bucket": "b", "max_attempts": 0}, "at least 1"),
    ],
)
def test_half_configured_backends_are_refused(
    tmp_path: Path, backend: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        open_backend(config(tmp_path, **backend))
    assert not (tmp_path / "spool").exists() and not (tmp_path / "blobs").exists()  # nothing created


@pytest.mark.parametrize(
    ("warm", "cold", "expected"),
    [(None, None, ("hot", "hot", "hot")), ("w", None, ("hot", "w", "hot")), ("w", "c", ("hot", "w", "c"))],
)
def test_tier_buckets_default_to_the_hot_bucket(
    warm: str | None, cold: str | None, expected: tuple[str, ...]
) -> None:
    b = BackendConfig(bucket="hot", warm_bucket=warm, cold_bucket=cold)
    assert tuple(tier_bucket(b, t) for t in ("hot", "warm", "cold")) == expected
    with pytest.raises(ValueError, match="unknown storage tier"):
        tier_bucket(b, "lukewarm")
