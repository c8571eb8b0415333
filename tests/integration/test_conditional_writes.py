"""Conditional writes: If-None-Match: * and If-Match on PutObject and CompleteMultipartUpload,
atomic under races."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError


def _code(err: pytest.ExceptionInfo[ClientError]) -> str:
    return err.value.response["Error"]["Code"]


def test_put_if_none_match_and_if_match(s3: Any, bucket: str) -> None:
    first = s3.put_object(Bucket=bucket, Key="k", Body=b"one", IfNoneMatch="*")["ETag"]
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=bucket, Key="k", Body=b"two", IfNoneMatch="*")
    assert _code(err) == "PreconditionFailed"
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=bucket, Key="k", Body=b"two", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert _code(err) == "PreconditionFailed"
    s3.put_object(Bucket=bucket, Key="k", Body=b"three", IfMatch=first)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"three"
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=bucket, Key="absent", Body=b"x", IfMatch=first)
    assert _code(err) == "NoSuchKey"


def test_racing_if_none_match_writers_exactly_one_wins(strata: Any, bucket: str) -> None:
    from support.s3 import make_client

    s3 = make_client(strata, max_pool_connections=16)
    bodies = [os.urandom(64 * 1024) for _ in range(12)]

    def attempt(body: bytes) -> str:
        try:
            s3.put_object(Bucket=bucket, Key="race", Body=body, IfNoneMatch="*")
            return "won"
        except ClientError as exc:
            return exc.response["Error"]["Code"]

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(attempt, bodies))
    assert outcomes.count("won") == 1
    assert set(outcomes) == {"won", "PreconditionFailed"}
    winner = bodies[outcomes.index("won")]
    assert s3.get_object(Bucket=bucket, Key="race")["Body"].read() == winner


def test_complete_multipart_if_none_match(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="mp", Body=b"exists")
    mp = s3.create_multipart_upload(Bucket=bucket, Key="mp")
    part = s3.upload_part(Bucket=bucket, Key="mp", UploadId=mp["UploadId"], PartNumber=1, Body=b"p")
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="mp",
            UploadId=mp["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
            IfNoneMatch="*",
        )
    assert _code(err) == "PreconditionFailed"
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"exists"
    s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=mp["UploadId"])
