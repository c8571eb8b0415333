"""s3fs (fsspec) against a real Strata server.

s3fs sends CRC32 headers, calls GetBucketLocation, and ``mkdir`` of a bucket sends the
region as a LocationConstraint even for us-east-1, which the server must accept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import s3fs
from support.s3 import MiB, delete_bucket_recursive, random_bytes, unique_bucket
from support.server import StrataServer


@pytest.fixture
def fs(strata: StrataServer) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(
        key=strata.access_key,
        secret=strata.secret_key,
        endpoint_url=strata.endpoint,
        client_kwargs={"region_name": "us-east-1"},
        config_kwargs={"s3": {"addressing_style": "path"}, "retries": {"max_attempts": 1}},
        skip_instance_cache=True,
        use_listings_cache=False,
    )


@pytest.fixture
def fs_bucket(fs: s3fs.S3FileSystem, s3: Any) -> Iterator[str]:
    name = unique_bucket("fs")
    fs.mkdir(name)
    yield name
    delete_bucket_recursive(s3, name)  # boto3, so cleanup does not depend on s3fs's DeleteObjects


def test_mkdir_sends_location_constraint(fs: s3fs.S3FileSystem) -> None:
    name = unique_bucket("fsmk")
    fs.mkdir(name)  # CreateBucketConfiguration LocationConstraint=us-east-1
    try:
        assert fs.exists(name)
        assert name in [p.rstrip("/") for p in fs.ls("")]
    finally:
        fs.rmdir(name)
    fs.invalidate_cache()
    assert not fs.exists(name)


def test_pipe_cat_ls_info(fs: s3fs.S3FileSystem, fs_bucket: str) -> None:
    small = b"hello from s3fs\n"
    blob = random_bytes(3 * MiB + 11, 1)
    fs.pipe(f"{fs_bucket}/small.txt", small)
    fs.pipe(f"{fs_bucket}/dir/blob.bin", blob)
    assert fs.cat(f"{fs_bucket}/small.txt") == small
    assert fs.cat(f"{fs_bucket}/dir/blob.bin") == blob
    assert fs.cat_file(f"{fs_bucket}/dir/blob.bin", start=MiB - 5, end=MiB + 5) == blob[MiB - 5 : MiB + 5]
    names = sorted(fs.ls(fs_bucket, detail=False))
    assert names == [f"{fs_bucket}/dir", f"{fs_bucket}/small.txt"]
    assert fs.ls(f"{fs_bucket}/dir", detail=False) == [f"{fs_bucket}/dir/blob.bin"]
    info = fs.info(f"{fs_bucket}/dir/blob.bin")
    assert info["size"] == len(blob)
    assert info["type"] == "file"
    assert fs.isdir(f"{fs_bucket}/dir")
    assert sorted(fs.find(fs_bucket)) == [f"{fs_bucket}/dir/blob.bin", f"{fs_bucket}/small.txt"]


def test_open_write_in_chunks(fs: s3fs.S3FileSystem, fs_bucket: str) -> None:
    """A 12 MiB file written 1 MiB at a time with a 5 MiB block size: multipart upload."""
    h = hashlib.sha256()
    path = f"{fs_bucket}/written.bin"
    with fs.open(path, "wb", block_size=5 * MiB) as f:
        for i in range(12):
            block = random_bytes(MiB, 100 + i)
            h.update(block)
            f.write(block)
        f.write(b"tail")
        h.update(b"tail")
    assert fs.info(path)["size"] == 12 * MiB + 4
    got = hashlib.sha256()
    with fs.open(path, "rb", block_size=2 * MiB) as f:
        while data := f.read(3 * MiB + 7):
            got.update(data)
    assert got.hexdigest() == h.hexdigest()
    with fs.open(path, "rb") as f:
        f.seek(7 * MiB - 3)
        assert len(f.read(10)) == 10


def test_rm(fs: s3fs.S3FileSystem, fs_bucket: str) -> None:
    """``rm`` goes through DeleteObjects (bulk delete, CRC32 header, no Content-MD5)."""
    fs.pipe(f"{fs_bucket}/a/1", b"1")
    fs.pipe(f"{fs_bucket}/a/2", b"2")
    fs.pipe(f"{fs_bucket}/keep", b"k")
    fs.rm(f"{fs_bucket}/a/1")
    assert not fs.exists(f"{fs_bucket}/a/1")
    fs.rm(f"{fs_bucket}/a", recursive=True)
    assert not fs.exists(f"{fs_bucket}/a/2")
    assert fs.ls(fs_bucket, detail=False) == [f"{fs_bucket}/keep"]
    with pytest.raises(FileNotFoundError):
        fs.cat(f"{fs_bucket}/a/1")
