"""CopyObject (by reference: no data copied) and UploadPartCopy (with and without a range)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError
from support.s3 import make_client
from support.server import StrataServer, dir_bytes

MiB = 1024 * 1024


def _code(err: pytest.ExceptionInfo[ClientError]) -> str:
    return err.value.response["Error"]["Code"]


def test_copy_object_shares_chunks(strata_factory: Callable[..., StrataServer]) -> None:
    server = strata_factory()
    s3 = make_client(server)
    s3.create_bucket(Bucket="src")
    s3.create_bucket(Bucket="dst")
    data = os.urandom(9 * MiB + 7)
    s3.put_object(Bucket="src", Key="big", Body=data, Metadata={"a": "1"}, ContentType="text/x-test")
    before = dir_bytes(server.data_dir / "blobs")
    result = s3.copy_object(Bucket="dst", Key="copy", CopySource={"Bucket": "src", "Key": "big"})
    assert result["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert dir_bytes(server.data_dir / "blobs") == before  # chunks shared by reference
    got = s3.get_object(Bucket="dst", Key="copy")
    assert got["Body"].read() == data
    assert got["Metadata"] == {"a": "1"} and got["ContentType"] == "text/x-test"
    # The source stays intact when the copy is deleted.
    s3.delete_object(Bucket="dst", Key="copy")
    assert s3.get_object(Bucket="src", Key="big")["Body"].read() == data


def test_copy_metadata_directive_and_self_copy(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"hello", Metadata={"old": "1"})
    with pytest.raises(ClientError) as err:
        s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"})
    assert _code(err) == "InvalidRequest"
    s3.copy_object(
        Bucket=bucket,
        Key="k",
        CopySource={"Bucket": bucket, "Key": "k"},
        MetadataDirective="REPLACE",
        Metadata={"new": "2"},
        ContentType="text/plain",
    )
    head = s3.head_object(Bucket=bucket, Key="k")
    assert head["Metadata"] == {"new": "2"} and head["ContentType"] == "text/plain"
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"hello"


def test_copy_source_conditions_and_errors(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"v1")["ETag"]
    src = {"Bucket": bucket, "Key": "k"}
    s3.copy_object(Bucket=bucket, Key="ok", CopySource=src, CopySourceIfMatch=etag)
    for kwargs in ({"CopySourceIfMatch": '"nope"'}, {"CopySourceIfNoneMatch": etag}):
        with pytest.raises(ClientError) as err:
            s3.copy_object(Bucket=bucket, Key="c2", CopySource=src, **kwargs)
        assert _code(err) == "PreconditionFailed"
    with pytest.raises(ClientError) as err:
        s3.copy_object(Bucket=bucket, Key="c3", CopySource={"Bucket": bucket, "Key": "missing"})
    assert _code(err) == "NoSuchKey"
    with pytest.raises(ClientError) as err:
        s3.copy_object(Bucket=bucket, Key="c4", CopySource={"Bucket": "no-such-bucket-x", "Key": "k"})
    assert _code(err) == "NoSuchBucket"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="c2")


def test_upload_part_copy_with_and_without_range(s3: Any, bucket: str) -> None:
    data = os.urandom(12 * MiB + 3)
    s3.put_object(Bucket=bucket, Key="src", Body=data)
    mp = s3.create_multipart_upload(Bucket=bucket, Key="assembled")
    src = {"Bucket": bucket, "Key": "src"}
    p1 = s3.upload_part_copy(
        Bucket=bucket, Key="assembled", UploadId=mp["UploadId"], PartNumber=1, CopySource=src,
        CopySourceRange=f"bytes=100-{100 + 6 * MiB - 1}",
    )  # fmt: skip
    p2 = s3.upload_part_copy(
        Bucket=bucket, Key="assembled", UploadId=mp["UploadId"], PartNumber=2, CopySource=src
    )
    assert p1["CopyPartResult"]["ETag"] == f'"{hashlib.md5(data[100 : 100 + 6 * MiB]).hexdigest()}"'
    parts = [
        {"PartNumber": 1, "ETag": p1["CopyPartResult"]["ETag"]},
        {"PartNumber": 2, "ETag": p2["CopyPartResult"]["ETag"]},
    ]
    s3.complete_multipart_upload(
        Bucket=bucket, Key="assembled", UploadId=mp["UploadId"], MultipartUpload={"Parts": parts}
    )
    assert s3.get_object(Bucket=bucket, Key="assembled")["Body"].read() == data[100 : 100 + 6 * MiB] + data
    mp2 = s3.create_multipart_upload(Bucket=bucket, Key="bad")
    with pytest.raises(ClientError) as err:
        s3.upload_part_copy(
            Bucket=bucket, Key="bad", UploadId=mp2["UploadId"], PartNumber=1, CopySource=src,
            CopySourceRange="bytes=5-",
        )  # fmt: skip
    assert _code(err) == "InvalidArgument"
    s3.abort_multipart_upload(Bucket=bucket, Key="bad", UploadId=mp2["UploadId"])
