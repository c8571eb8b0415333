"""Tiny objects (at most ``storage.inline_max`` bytes) are sealed into their manifest: they
round-trip exactly through every read and copy path, write no pack, never become multipart
parts, and ``inline_max = 0`` turns the feature off."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError
from support.s3 import make_client
from support.server import StrataServer

INLINE_MAX = 16 * 1024


def packs(server: StrataServer) -> set[str]:
    return {p.name for p in server.blobs_dir.rglob("*.pack")}


@pytest.fixture
def served(strata_factory: Callable[..., StrataServer]) -> tuple[StrataServer, Any]:
    server = strata_factory()
    s3 = make_client(server)
    s3.create_bucket(Bucket="tiny")
    return server, s3


@pytest.mark.parametrize("size", [1, 100, 4096, INLINE_MAX])
def test_tiny_objects_round_trip_without_packs(served: tuple[StrataServer, Any], size: int) -> None:
    server, s3 = served
    body = os.urandom(size)
    etag = s3.put_object(Bucket="tiny", Key="k", Body=body)["ETag"]
    assert etag == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket="tiny", Key="k")
    assert got["Body"].read() == body and got["ContentLength"] == size and got["ETag"] == etag
    assert s3.head_object(Bucket="tiny", Key="k")["ContentLength"] == size
    assert packs(server) == set()


def test_object_above_inline_max_goes_to_a_pack(served: tuple[StrataServer, Any]) -> None:
    server, s3 = served
    body = os.urandom(INLINE_MAX + 1)
    s3.put_object(Bucket="tiny", Key="k", Body=body)
    assert s3.get_object(Bucket="tiny", Key="k")["Body"].read() == body
    assert len(packs(server)) == 1


def test_text_inline_object_is_compressed_and_exact(served: tuple[StrataServer, Any]) -> None:
    _, s3 = served
    body = b"hello inline world, " * 500  # 10,000 bytes of very compressible text
    s3.put_object(Bucket="tiny", Key="t.txt", Body=body, ContentType="text/plain")
    got = s3.get_object(Bucket="tiny", Key="t.txt")
    assert got["Body"].read() == body and got["ContentType"] == "text/plain"


@pytest.mark.parametrize(
    ("header", "lo", "hi"),
    [("bytes=0-0", 0, 1), ("bytes=5-10", 5, 11), ("bytes=-7", 993, 1000), ("bytes=990-", 990, 1000),
     ("bytes=0-5000", 0, 1000)],
)  # fmt: skip
def test_ranges_of_an_inline_object(served: tuple[StrataServer, Any], header: str, lo: int, hi: int) -> None:
    _, s3 = served
    body = os.urandom(1000)
    s3.put_object(Bucket="tiny", Key="r", Body=body)
    got = s3.get_object(Bucket="tiny", Key="r", Range=header)
    assert got["Body"].read() == body[lo:hi]
    assert got["ContentRange"] == f"bytes {lo}-{hi - 1}/1000"


def test_unsatisfiable_range_and_conditional_get(served: tuple[StrataServer, Any]) -> None:
    _, s3 = served
    etag = s3.put_object(Bucket="tiny", Key="c", Body=b"0123456789")["ETag"]
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="tiny", Key="c", Range="bytes=10-")
    assert err.value.response["Error"]["Code"] == "InvalidRange"
    with pytest.raises(ClientError) as notmod:
        s3.get_object(Bucket="tiny", Key="c", IfNoneMatch=etag)
    assert notmod.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304


def test_copies_of_an_inline_object(served: tuple[StrataServer, Any]) -> None:
    server, s3 = served
    body = os.urandom(3000)
    s3.put_object(Bucket="tiny", Key="src", Body=body)
    s3.copy_object(Bucket="tiny", Key="dst", CopySource={"Bucket": "tiny", "Key": "src"})
    assert s3.get_object(Bucket="tiny", Key="dst")["Body"].read() == body
    s3.delete_object(Bucket="tiny", Key="src")  # the copy is self-contained
    assert s3.get_object(Bucket="tiny", Key="dst")["Body"].read() == body
    # UploadPartCopy from an inline source: the part is stored in a pack, the object reads back
    up = s3.create_multipart_upload(Bucket="tiny", Key="mp")["UploadId"]
    part = s3.upload_part_copy(
        Bucket="tiny", Key="mp", UploadId=up, PartNumber=1, CopySource={"Bucket": "tiny", "Key": "dst"}
    )
    s3.complete_multipart_upload(
        Bucket="tiny",
        Key="mp",
        UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]},
    )
    assert s3.get_object(Bucket="tiny", Key="mp")["Body"].read() == body
    assert packs(server)


def test_multipart_with_a_tiny_last_part(served: tuple[StrataServer, Any]) -> None:
    _, s3 = served
    first, last = os.urandom(5 * 1024 * 1024), os.urandom(200)
    up = s3.create_multipart_upload(Bucket="tiny", Key="mp")["UploadId"]
    etags = [
        s3.upload_part(Bucket="tiny", Key="mp", UploadId=up, PartNumber=n, Body=b)["ETag"]
        for n, b in ((1, first), (2, last))
    ]
    s3.complete_multipart_upload(
        Bucket="tiny",
        Key="mp",
        UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in ((1, etags[0]), (2, etags[1]))]},
    )
    assert s3.get_object(Bucket="tiny", Key="mp")["Body"].read() == first + last


def test_overwrite_and_versions_of_inline_objects(served: tuple[StrataServer, Any]) -> None:
    _, s3 = served
    s3.put_bucket_versioning(Bucket="tiny", VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket="tiny", Key="v", Body=b"one")["VersionId"]
    s3.put_object(Bucket="tiny", Key="v", Body=b"two!")
    assert s3.get_object(Bucket="tiny", Key="v")["Body"].read() == b"two!"
    assert s3.get_object(Bucket="tiny", Key="v", VersionId=v1)["Body"].read() == b"one"


def test_inline_max_zero_turns_it_off(strata_factory: Callable[..., StrataServer]) -> None:
    server = strata_factory(extra_env={"STRATA_STORAGE_INLINE_MAX": "0"})
    s3 = make_client(server)
    s3.create_bucket(Bucket="tiny")
    s3.put_object(Bucket="tiny", Key="k", Body=b"x" * 100)
    assert s3.get_object(Bucket="tiny", Key="k")["Body"].read() == b"x" * 100
    assert len(packs(server)) == 1
