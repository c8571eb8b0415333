"""The blob backend interface: named immutable blobs, written once and read by range.

A writer streams a blob and makes it durable and visible atomically on ``commit``; until
then nothing is visible under the name, and ``abort`` leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol


class BackendUnavailable(Exception):
    """The backend cannot serve requests now (retries exhausted, or its circuit breaker is
    open). Clients get 503 SlowDown and retry; nothing was committed."""


@dataclass(frozen=True)
class BlobInfo:
    """A committed blob as a listing shows it (gc deletes unindexed blobs older than its grace)."""

    name: str
    size: int
    modified: float  # epoch seconds of the commit (local: the file's mtime; S3: LastModified)


class BlobWriter(Protocol):
    async def write(self, data: bytes | memoryview) -> None: ...
    async def write_all(self, pieces: Sequence[bytes | memoryview]) -> None: ...  # in order
    async def commit(self) -> None: ...
    async def abort(self) -> None: ...


class BlobBackend(Protocol):
    async def open_writer(self, name: str) -> BlobWriter: ...
    async def read_range(self, name: str, offset: int, length: int) -> bytes: ...
    async def size(self, name: str) -> int: ...
    async def delete(self, name: str) -> None: ...
    def list(self, prefix: str = "") -> AsyncIterator[str]: ...
    def list_info(self, prefix: str = "") -> AsyncIterator[BlobInfo]: ...  # committed blobs, by name
    async def close(self) -> None: ...


def pack_blob_name(pack_id: str) -> str:
    """Where a pack lives in a backend: fanned out by its first two hex digits."""
    return f"packs/{pack_id[:2]}/{pack_id}.pack"
