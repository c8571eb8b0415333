"""The S3 blob backend: blobs are objects in one bucket of an S3 endpoint (aiobotocore).

This module owns talking S3 for the blob backend: one aiobotocore client per backend,
created on first use and reused for every request, and the mapping of the blob operations
onto S3 calls. aiobotocore itself (~18 MiB of the process) is imported when a backend is
built, at start-up, so the embedded default, which builds none, does not carry it. Never on
first use: the import holds the event loop for ~0.25 s, and in the middle of traffic that
stalls every request (long enough to time out the Redis cache's calls).

* A writer spools the blob to a temp file under ``spool_dir`` (memory stays bounded: a pack
  is never held in RAM) and uploads it on ``commit``: one PutObject, or a multipart upload
  above ``multipart_threshold``. The upload re-reads the file, so a failed commit can be
  retried by calling ``commit`` again; ``abort`` deletes the spool file. Nothing is visible
  in the bucket before the upload completes, and S3 makes an upload visible atomically.
* ``read_range`` is a ranged GetObject, ``size`` a HeadObject, ``list``/``list_info`` a
  ListObjectsV2 paginator, ``delete`` a DeleteObject, ``ping`` a HeadBucket.
* A missing blob raises :class:`FileNotFoundError` (as the local backend does); a short
  read or a range past the end raises :class:`OSError`. Every other failure propagates as
  botocore raised it: retries, timeouts and the circuit breaker are
  :class:`gateway.backends.resilient.ResilientBackend`'s job, so botocore's own retries are
  off (one attempt per call).

Checksums: botocore computes none by itself (``request_checksum_calculation`` and
``response_checksum_validation`` are ``when_required``), and the payload is not SHA-256
signed (that would hash every pack on the event loop). Instead the writer computes a
CRC32C of the blob while spooling (off the event loop, at GB/s) and sends it as
``x-amz-checksum-crc32c`` (per part for multipart uploads), so the backend verifies every
byte it stores. Reads are protected by the packs' own AES-GCM tags.

Addressing is path style (``endpoint/bucket/key``), which every S3 implementation serves.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from awscrt import checksums
from botocore.exceptions import ClientError

from gateway.backends.base import BlobInfo

if TYPE_CHECKING:
    from aiobotocore.config import AioConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
MiB = 1024 * 1024
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
ABORT_TIMEOUT = 2.0  # seconds for the best-effort abort of a failed multipart upload


@dataclass(frozen=True)
class S3Settings:
    """Where one S3 backend lives and how its client behaves (built from ``BackendConfig``)."""

    bucket: str
    endpoint: str | None = None  # None: AWS S3 itself
    region: str = "us-east-1"
    access_key: str | None = None  # None: the default AWS credential chain
    secret_key: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    max_connections: int = 64
    multipart_threshold: int = 64 * MiB
    part_size: int = 16 * MiB

    def __repr__(self) -> str:  # never show the keys
        return f"S3Settings(endpoint={self.endpoint!r}, bucket={self.bucket!r}, region={self.region!r})"


def client_config(settings: S3Settings) -> AioConfig:
    """The botocore config of the backend client: our timeouts, no botocore retries, no
    checksums unless an operation requires one, unsigned payloads, path-style addressing."""
    from aiobotocore.config import AioConfig  # loaded by S3BlobBackend() already: a lookup

    return AioConfig(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=settings.max_connections,
        s3={"addressing_style": "path", "payload_signing_enabled": False},
    )


def crc32c_b64(crc: int) -> str:
    """The wire form of a CRC32C (``x-amz-checksum-crc32c``): base64 of 4 big-endian bytes."""
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def byte_range(offset: int, length: int) -> str:
    """The HTTP Range header for ``length`` (> 0) bytes at ``offset``."""
    return f"bytes={offset}-{offset + length - 1}"


def part_spans(size: int, part_size: int) -> list[tuple[int, int]]:
    """(offset, length) of each multipart part of a ``size``-byte blob."""
    return [(off, min(part_size, size - off)) for off in range(0, size, part_size)]


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_not_found(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 404 or error_code(exc) in NOT_FOUND_CODES


class S3BlobWriter:
    """Spools one blob to a temp file (with its running CRC32C); uploads it on commit."""

    def __init__(self, backend: S3BlobBackend, name: str, path: Path, fh: Any) -> None:
        self._backend = backend
        self._name = name
        self._path = path
        self._fh = fh
        self._size = 0
        self._crc = 0
        self._committed = False
        self._discarded = False

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    async def write(self, data: bytes | memoryview) -> None:
        await self.write_all([data])

    async def write_all(self, pieces: Sequence[bytes | memoryview]) -> None:
        def append() -> None:
            for piece in pieces:
                self._fh.write(piece)
                self._crc = checksums.crc32c(piece, self._crc)
                self._size += len(piece)

        if self._committed or self._discarded:
            raise RuntimeError(f"blob writer for {self._name} is closed")
        await self._backend.run(append)

    async def commit(self) -> None:
        """Upload the spooled blob. On failure the spool stays: call again, or ``abort``."""
        if self._discarded:
            raise RuntimeError(f"blob writer for {self._name} was aborted")
        if self._committed:
            return
        if not self._fh.closed:
            await self._backend.run(self._fh.close)
        await self._backend.upload(self._name, self._path, self._size, self._crc)
        self._committed = True
        await self._discard()

    async def abort(self) -> None:
        if not self._committed:
            await self._discard()

    async def _discard(self) -> None:
        if self._discarded:
            return
        self._discarded = True

        def remove() -> None:
            self._fh.close()
            self._path.unlink(missing_ok=True)

        await self._backend.run(remove)


class S3BlobBackend:
    """Blobs as objects of one bucket; writers spool under ``spool_dir``."""

    def __init__(self, settings: S3Settings, spool_dir: Path, *, clear_stale: bool = True) -> None:
        """``clear_stale=False`` for admin commands beside a live gateway, whose in-flight
        uploads own the spool files."""
        self.settings = settings
        self.bucket = settings.bucket
        self._spool = spool_dir
        self._spool.mkdir(parents=True, exist_ok=True)
        for stale in self._spool.iterdir() if clear_stale else ():  # left by a crash mid-upload
            stale.unlink(missing_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="s3-spool")
        from aiobotocore.session import get_session  # now, not at the first request (module docstring)

        self._new_session = get_session
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._client_lock = asyncio.Lock()

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def client(self) -> Any:
        """The backend's one aiobotocore client (created on first use, then reused)."""
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    s = self.settings
                    self._client = await self._stack.enter_async_context(
                        self._new_session().create_client(
                            "s3",
                            endpoint_url=s.endpoint,
                            region_name=s.region,
                            aws_access_key_id=s.access_key,
                            aws_secret_access_key=s.secret_key,
                            config=client_config(s),
                        )
                    )
        return self._client

    # -- writing --------------------------------------------------------------------------
    async def open_writer(self, name: str) -> S3BlobWriter:
        if not name:
            raise ValueError("empty blob name")
        path = self._spool / f"{secrets.token_hex(16)}.spool"
        fh = await self.run(lambda: open(path, "xb"))  # noqa: SIM115 - closed by the writer
        return S3BlobWriter(self, name, path, fh)

    async def upload(self, name: str, path: Path, size: int, crc: int) -> None:
        """Upload the file at ``path`` as blob ``name`` (re-reading it: safe to repeat)."""
        if size > self.settings.multipart_threshold:
            await self._upload_multipart(name, path, size)
            return
        client = await self.client()
        fh = await self.run(lambda: open(path, "rb"))  # noqa: SIM115 - closed below
        try:
            await client.put_object(
                Bucket=self.bucket,
                Key=name,
                Body=fh if size else b"",
                ContentLength=size,
                ChecksumCRC32C=crc32c_b64(crc),
            )
        finally:
            fh.close()

    async def _upload_multipart(self, name: str, path: Path, size: int) -> None:
        """One part at a time: memory holds at most one part."""

        def read_part(offset: int, length: int) -> tuple[bytes, int]:
            with open(path, "rb", buffering=0) as fh:
                data = os.pread(fh.fileno(), length, offset)
            return data, checksums.crc32c(data)

        client = await self.client()
        created = await client.create_multipart_upload(
            Bucket=self.bucket, Key=name, ChecksumAlgorithm="CRC32C"
        )
        upload_id = created["UploadId"]
        try:
            parts = []
            for number, (offset, length) in enumerate(part_spans(size, self.settings.part_size), 1):
                data, crc = await self.run(lambda o=offset, n=length: read_part(o, n))  # type: ignore[misc]
                answer = await client.upload_part(
                    Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number,
                    Body=data, ChecksumCRC32C=crc32c_b64(crc),
                )  # fmt: skip
                del data
                parts.append(
                    {"PartNumber": number, "ETag": answer["ETag"], "ChecksumCRC32C": crc32c_b64(crc)}
                )
            await client.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except Exception:
            # Best effort; a cancelled upload is left to the bucket's lifecycle rule
            # (AbortIncompleteMultipartUpload), see docs/backends.md.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id),
                    ABORT_TIMEOUT,
                )
            raise

    # -- reading --------------------------------------------------------------------------
    async def read_range(self, name: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        client = await self.client()
        try:
            answer = await client.get_object(Bucket=self.bucket, Key=name, Range=byte_range(offset, length))
        except ClientError as exc:
            if is_not_found(exc):
                raise FileNotFoundError(name) from exc
            if error_code(exc) == "InvalidRange":
                raise OSError(f"short read from {name}: range {offset}+{length} is past its end") from exc
            raise
        async with answer["Body"] as body:
            data: bytes = await body.read()
        if len(data) != length:
            raise OSError(f"short read from {name}: {len(data)} of {length} bytes at {offset}")
        return data

    async def size(self, name: str) -> int:
        client = await self.client()
        try:
            answer = await client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if is_not_found(exc):
                raise FileNotFoundError(name) from exc
            raise
        return int(answer["ContentLength"])

    async def delete(self, name: str) -> None:
        client = await self.client()
        await client.delete_object(Bucket=self.bucket, Key=name)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        async for info in self.list_info(prefix):
            yield info.name

    async def list_info(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        client = await self.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        async for page in pages:
            for obj in page.get("Contents", ()):
                yield BlobInfo(obj["Key"], int(obj["Size"]), obj["LastModified"].timestamp())

    async def ping(self) -> None:
        """Raises unless the bucket answers (HeadBucket)."""
        client = await self.client()
        await client.head_bucket(Bucket=self.bucket)

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None
        self._pool.shutdown(wait=True)
