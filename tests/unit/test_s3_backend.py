"""The S3 blob backend against moto's S3 server (in-process): the BlobBackend contract
(commit publishes, abort and uncommitted blobs leave nothing visible, ranged reads, size,
list, delete), multipart uploads, the spool, and what goes on the wire (through the fault
proxy): our CRC32C, no botocore checksums or retries, unsigned payloads."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from awscrt import checksums
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer
from support.faultproxy import FaultProxy

from gateway.backends.s3 import MiB, S3BlobBackend, S3Settings, crc32c_b64, part_spans

KEY, SECRET = "testing-key", "testing-secret"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[tuple[str, int]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield host, port
    server.stop()


@pytest.fixture
def bucket(moto_endpoint: tuple[str, int]) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    boto3_client(moto_endpoint).create_bucket(Bucket=name)
    return name


def boto3_client(endpoint: tuple[str, int]) -> Any:
    return boto3.client(
        "s3", endpoint_url=f"http://{endpoint[0]}:{endpoint[1]}", region_name="us-east-1",
        aws_access_key_id=KEY, aws_secret_access_key=SECRET,
    )  # fmt: skip


def settings(endpoint: str, bucket: str, **kw: Any) -> S3Settings:
    return S3Settings(bucket, endpoint, access_key=KEY, secret_key=SECRET, **kw)


@pytest.fixture
async def backend(
    moto_endpoint: tuple[str, int], bucket: str, tmp_path: Path
) -> AsyncIterator[S3BlobBackend]:
    host, port = moto_endpoint
    b = S3BlobBackend(settings(f"http://{host}:{port}", bucket), tmp_path / "spool")
    yield b
    await b.close()


def spooled(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "spool").iterdir())


async def test_write_commit_read_size_list_delete(backend: S3BlobBackend, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    writer = await backend.open_writer("packs/ab/one.pack")
    await writer.write(data[:1000])
    await writer.write_all([memoryview(data)[1000:200_000], data[200_000:]])
    await writer.commit()
    assert spooled(tmp_path) == []  # the spool file is gone after the upload
    assert await backend.size("packs/ab/one.pack") == len(data)
    assert await backend.read_range("packs/ab/one.pack", 0, len(data)) == data
    assert await backend.read_range("packs/ab/one.pack", 123_456, 7) == data[123_456:123_463]
    assert await backend.read_range("packs/ab/one.pack", 5, 0) == b""
    with pytest.raises(OSError, match="short read"):
        await backend.read_range("packs/ab/one.pack", len(data) - 3, 10)
    with pytest.raises(OSError, match="short read"):
        await backend.read_range("packs/ab/one.pack", len(data) + 10, 10)
    empty = await backend.open_writer("packs/cd/empty.pack")
    await empty.commit()
    assert await backend.size("packs/cd/empty.pack") == 0
    assert [n async for n in backend.list()] == ["packs/ab/one.pack", "packs/cd/empty.pack"]
    assert [n async for n in backend.list("packs/c")] == ["packs/cd/empty.pack"]
    infos = [i async for i in backend.list_info("packs/ab")]
    assert [(i.name, i.size) for i in infos] == [("packs/ab/one.pack", len(data))] and infos[0].modified > 0
    await backend.delete("packs/ab/one.pack")
    await backend.delete("packs/ab/one.pack")  # deleting a missing blob is fine
    assert [n async for n in backend.list()] == ["packs/cd/empty.pack"]
    with pytest.raises(FileNotFoundError):
        await backend.read_range("packs/ab/one.pack", 0, 1)
    with pytest.raises(FileNotFoundError):
        await backend.size("packs/ab/one.pack")


async def test_uncommitted_blob_is_invisible_and_abort_leaves_nothing(
    backend: S3BlobBackend, moto_endpoint: tuple[str, int], bucket: str, tmp_path: Path
) -> None:
    writer = await backend.open_writer("packs/ef/pending.pack")
    await writer.write(b"x" * 100_000)
    assert [p.stat().st_size for p in spooled(tmp_path)] == [100_000]  # on disk, not in RAM
    assert [n async for n in backend.list()] == []
    with pytest.raises(FileNotFoundError):
        await backend.size("packs/ef/pending.pack")
    with pytest.raises(FileNotFoundError):
        await backend.read_range("packs/ef/pending.pack", 0, 1)
    await writer.abort()
    await writer.abort()  # idempotent
    assert spooled(tmp_path) == []
    assert boto3_client(moto_endpoint).list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    with pytest.raises(RuntimeError):
        await writer.write(b"more")


async def test_multipart_upload_above_the_threshold(
    moto_endpoint: tuple[str, int], bucket: str, tmp_path: Path
) -> None:
    host, port = moto_endpoint
    backend = S3BlobBackend(
        settings(f"http://{host}:{port}", bucket, multipart_threshold=6 * MiB, part_size=5 * MiB),
        tmp_path / "spool",
    )
    try:
        data = os.urandom(12 * MiB + 17)
        writer = await backend.open_writer("packs/12/big.pack")
        for off in range(0, len(data), MiB):
            await writer.write(memoryview(data)[off : off + MiB])
        await writer.commit()
        assert await backend.size("packs/12/big.pack") == len(data)
        assert await backend.read_range("packs/12/big.pack", 0, len(data)) == data
        assert (
            await backend.read_range("packs/12/big.pack", 5 * MiB - 3, 6) == data[5 * MiB - 3 : 5 * MiB + 3]
        )
        assert spooled(tmp_path) == []
        assert "Uploads" not in boto3_client(moto_endpoint).list_multipart_uploads(Bucket=bucket)
    finally:
        await backend.close()


def test_part_spans_and_crc_wire_form() -> None:
    assert part_spans(12, 5) == [(0, 5), (5, 5), (10, 2)]
    assert part_spans(10, 5) == [(0, 5), (5, 5)]
    assert part_spans(0, 5) == []
    assert crc32c_b64(checksums.crc32c(b"hello")) == "mnG7TA=="  # as S3 documents CRC32C


async def test_stale_spool_files_are_cleared_only_when_serving(
    moto_endpoint: tuple[str, int], tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "left-by-a-crash.spool").write_bytes(b"junk")
    host, port = moto_endpoint
    admin = S3BlobBackend(settings(f"http://{host}:{port}", "any"), spool, clear_stale=False)
    await admin.close()
    assert (spool / "left-by-a-crash.spool").exists()
    serving = S3BlobBackend(settings(f"http://{host}:{port}", "any"), spool)
    await serving.close()
    assert list(spool.iterdir()) == []


async def test_wire_one_attempt_per_call_our_crc32c_and_no_sdk_checksums(
    moto_endpoint: tuple[str, int], bucket: str, tmp_path: Path
) -> None:
    with FaultProxy(*moto_endpoint) as proxy:
        backend = S3BlobBackend(settings(proxy.endpoint, bucket), tmp_path / "spool")
        try:
            data = os.urandom(50_000)
            writer = await backend.open_writer("packs/aa/w.pack")
            await writer.write(data)
            proxy.fail_next(1)
            with pytest.raises(ClientError) as failed:
                await writer.commit()
            assert failed.value.response["Error"]["Code"] == "SlowDown"
            assert proxy.requests == 1  # botocore did not retry: retries are ResilientBackend's
            await writer.commit()  # the spool survived the failed commit: commit again
            assert spooled(tmp_path) == []
            assert await backend.read_range("packs/aa/w.pack", 0, len(data)) == data
            puts = [h.lower() for h in proxy.heads() if h.startswith(b"PUT ")]
            gets = [h.lower() for h in proxy.heads() if h.startswith(b"GET ")]
            want_crc = f"x-amz-checksum-crc32c: {crc32c_b64(checksums.crc32c(data))}".lower().encode()
            assert puts and all(want_crc in h for h in puts)
            assert all(b"x-amz-content-sha256: unsigned-payload" in h for h in puts)
            assert all(b"x-amz-sdk-checksum-algorithm" not in h and b"x-amz-trailer" not in h for h in puts)
            assert gets and all(b"x-amz-checksum-mode" not in h for h in gets)
        finally:
            await backend.close()
