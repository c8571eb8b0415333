"""boto3 (managed transfers and plain calls) in the client matrix.

``tests/integration/test_boto3.py`` covers the protocol in depth; this is the same
upload / download / list / copy / delete round as every other client, on the shared test
tree: ``upload_file`` (multipart for the 9 MiB file with 5 MiB parts and CRC32 per part),
``download_file`` (ranged GETs), ListObjectsV2 with and without a delimiter and paginated,
CopyObject and the managed ``copy`` (UploadPartCopy), DeleteObject and DeleteObjects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from support.s3 import MiB, error_code, multipart_etag_of_file
from support.trees import (
    BIG_REL,
    Tree,
    assert_same,
    md5_hex,
    remote_keys,
    remote_snapshot,
    sha256,
    snapshot,
    upload_tree,
)

PART = 5 * MiB
TRANSFER = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=4)


def test_upload_list_download(s3: Any, bucket: str, tree: Tree, tmp_path: Path) -> None:
    for rel in tree.files:
        s3.upload_file(str(tree.root / rel), bucket, f"tree/{rel}", Config=TRANSFER)
    assert_same(remote_snapshot(s3, bucket, "tree/"), tree.files, "bucket after upload_file")
    big = s3.head_object(Bucket=bucket, Key=f"tree/{BIG_REL}")
    assert big["ETag"] == multipart_etag_of_file(tree.big_path, PART)
    assert big["ContentLength"] == tree.big_path.stat().st_size

    # delimiter listing: exactly the top-level files and "directories"
    page = s3.list_objects_v2(Bucket=bucket, Prefix="tree/", Delimiter="/")
    assert sorted(o["Key"] for o in page.get("Contents", [])) == ["tree/empty", "tree/hello.txt"]
    assert sorted(p["Prefix"] for p in page["CommonPrefixes"]) == [
        "tree/big/",
        "tree/data/",
        "tree/with space/",
        "tree/ünïcødé/",
    ]
    # recursive listing, two keys a page: every key once, in order, with its size
    listed: list[tuple[str, int]] = []
    pages = 0
    for pg in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="tree/", PaginationConfig={"PageSize": 2}
    ):
        pages += 1
        listed.extend((o["Key"], o["Size"]) for o in pg.get("Contents", []))
    expected = sorted((f"tree/{rel}", (tree.root / rel).stat().st_size) for rel in tree.files)
    assert listed == expected
    assert pages == (len(tree.files) + 1) // 2

    down = tmp_path / "down"
    for rel in tree.files:
        (down / rel).parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, f"tree/{rel}", str(down / rel), Config=TRANSFER)
    assert_same(snapshot(down), tree.files, "downloaded tree")


def test_copy_object_and_managed_copy(s3: Any, bucket: str, tree: Tree) -> None:
    upload_tree(s3, bucket, "src/", tree, include_big=True)

    small = "ünïcødé/日本語 ✓.txt"
    resp = s3.copy_object(
        Bucket=bucket, Key="dst/small copy", CopySource={"Bucket": bucket, "Key": f"src/{small}"}
    )
    data = (tree.root / small).read_bytes()
    assert resp["CopyObjectResult"]["ETag"] == f'"{md5_hex(data)}"'
    assert s3.get_object(Bucket=bucket, Key="dst/small copy")["Body"].read() == data

    # managed copy above the threshold: CreateMultipartUpload + UploadPartCopy ranges
    s3.copy({"Bucket": bucket, "Key": f"src/{BIG_REL}"}, bucket, "dst/big copy", Config=TRANSFER)
    head = s3.head_object(Bucket=bucket, Key="dst/big copy")
    assert head["ETag"] == multipart_etag_of_file(tree.big_path, PART)
    body = s3.get_object(Bucket=bucket, Key="dst/big copy")["Body"].read()
    assert sha256(body) == tree.files[BIG_REL]
    assert remote_keys(s3, bucket, "dst/") == ["dst/big copy", "dst/small copy"]
    assert_same(remote_snapshot(s3, bucket, "src/"), tree.files, "copy sources afterwards")


def test_delete_object_and_objects(s3: Any, bucket: str, small_tree: Tree) -> None:
    upload_tree(s3, bucket, "tree/", small_tree)
    s3.put_object(Bucket=bucket, Key="keep", Body=b"k")
    first, *rest = sorted(small_tree.files)

    s3.delete_object(Bucket=bucket, Key=f"tree/{first}")
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key=f"tree/{first}")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404

    resp = s3.delete_objects(
        Bucket=bucket,
        Delete={"Objects": [{"Key": f"tree/{rel}"} for rel in rest] + [{"Key": "tree/never-was"}]},
    )
    assert sorted(d["Key"] for d in resp["Deleted"]) == sorted(
        [f"tree/{r}" for r in rest] + ["tree/never-was"]
    )
    assert not resp.get("Errors")
    assert remote_keys(s3, bucket) == ["keep"]
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key=f"tree/{rest[0]}")
    assert error_code(exc.value) == "NoSuchKey"
