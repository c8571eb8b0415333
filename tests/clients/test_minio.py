"""minio-py (PyPI ``minio``, in the ``test`` extra) in the client matrix.

minio-py signs every payload over plain HTTP (``x-amz-content-sha256`` of the body),
uploads in parts of 5 MiB once an object is larger than one part (``fput_object`` of the
9 MiB file is a 2-part upload), copies with CopyObject (``copy_object``) or, for several
sources, UploadPartCopy (``compose_object``), and deletes in bulk with DeleteObjects
(Content-MD5). The client is built as ``Minio("127.0.0.1:PORT", secure=False,
region="us-east-1")``, so it never asks for the bucket location.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from support.clients import require_module
from support.s3 import MiB, multipart_etag, multipart_etag_of_file
from support.server import StrataServer
from support.trees import (
    BIG_REL,
    Tree,
    assert_same,
    md5_hex,
    remote_keys,
    remote_snapshot,
    sha256,
    upload_tree,
)

if TYPE_CHECKING:
    from minio import Minio

PART = 5 * MiB  # minio-py's minimum (and, for a 9 MiB file, chosen) part size


@pytest.fixture
def mc(strata: StrataServer) -> Minio:
    minio = require_module("minio", "pip install minio (it is in the test extra)")
    return minio.Minio(
        f"{strata.host}:{strata.port}",
        access_key=strata.access_key,
        secret_key=strata.secret_key,
        secure=False,
        region=strata.region,
    )


def read(mc: Minio, bucket: str, key: str, **kwargs: Any) -> bytes:
    resp = mc.get_object(bucket, key, **kwargs)
    try:
        return bytes(resp.read())
    finally:
        resp.close()
        resp.release_conn()


def test_put_stat_get(mc: Minio, s3: Any, bucket: str, tree: Tree, tmp_path: Path) -> None:
    for rel in tree.files:
        if rel != BIG_REL:
            data = (tree.root / rel).read_bytes()
            res = mc.put_object(bucket, f"tree/{rel}", io.BytesIO(data), len(data))
            assert res.etag == md5_hex(data), rel
    res = mc.fput_object(bucket, f"tree/{BIG_REL}", str(tree.big_path))  # multipart
    assert f'"{res.etag}"' == multipart_etag_of_file(tree.big_path, PART)
    assert_same(remote_snapshot(s3, bucket, "tree/"), tree.files, "bucket after put/fput")

    body = b"typed and tagged with metadata\n"
    mc.put_object(
        bucket,
        "meta/obj",
        io.BytesIO(body),
        len(body),
        content_type="text/x-matrix",
        metadata={"x-amz-meta-team": "storage"},
    )
    st = mc.stat_object(bucket, "meta/obj")
    assert (st.size, st.etag, st.content_type) == (len(body), md5_hex(body), "text/x-matrix")
    assert st.metadata["x-amz-meta-team"] == "storage"
    big = mc.stat_object(bucket, f"tree/{BIG_REL}")
    assert big.size == tree.big_path.stat().st_size
    assert f'"{big.etag}"' == multipart_etag_of_file(tree.big_path, PART)

    for rel in tree.files:
        assert sha256(read(mc, bucket, f"tree/{rel}")) == tree.files[rel], rel
    whole = tree.big_path.read_bytes()
    assert read(mc, bucket, f"tree/{BIG_REL}", offset=PART - 7, length=100) == whole[PART - 7 : PART + 93]
    out = tmp_path / "big.out"
    mc.fget_object(bucket, f"tree/{BIG_REL}", str(out))
    assert sha256(out.read_bytes()) == tree.files[BIG_REL]


def test_list_objects(mc: Minio, s3: Any, bucket: str, small_tree: Tree) -> None:
    upload_tree(s3, bucket, "tree/", small_tree)
    s3.put_object(Bucket=bucket, Key="top.txt", Body=b"t")

    top = [(o.object_name, o.is_dir) for o in mc.list_objects(bucket)]
    assert top == [("top.txt", False), ("tree/", True)]
    level = sorted(o.object_name for o in mc.list_objects(bucket, prefix="tree/"))
    assert level == ["tree/data/", "tree/empty", "tree/hello.txt", "tree/with space/", "tree/ünïcødé/"]
    everything = [(o.object_name, o.size) for o in mc.list_objects(bucket, recursive=True)]
    expected = sorted((f"tree/{rel}", (small_tree.root / rel).stat().st_size) for rel in small_tree.files)
    assert everything == sorted([("top.txt", 1), *expected])
    after = [o.object_name for o in mc.list_objects(bucket, recursive=True, start_after="tree/hello.txt")]
    assert after == [k for k, _ in everything if k > "tree/hello.txt"]
    v1 = [o.object_name for o in mc.list_objects(bucket, prefix="tree/", recursive=True, use_api_v1=True)]
    assert v1 == [k for k, _ in expected]


def test_copy_compose_remove(mc: Minio, s3: Any, bucket: str, tree: Tree) -> None:
    from minio.commonconfig import REPLACE, ComposeSource, CopySource
    from minio.deleteobjects import DeleteObject
    from minio.error import S3Error

    seeded = upload_tree(s3, bucket, "src/", tree, include_big=True)
    small = "ünïcødé/日本語 ✓.txt"
    small_data = (tree.root / small).read_bytes()

    res = mc.copy_object(bucket, "copy/small ✓.txt", CopySource(bucket, f"src/{small}"))  # CopyObject
    assert res.etag == md5_hex(small_data)
    mc.copy_object(
        bucket,
        "copy/replaced",
        CopySource(bucket, f"src/{small}"),
        metadata={"x-amz-meta-kind": "replaced"},
        metadata_directive=REPLACE,
    )
    st = mc.stat_object(bucket, "copy/replaced")
    assert st.metadata["x-amz-meta-kind"] == "replaced"
    res = mc.copy_object(bucket, "copy/big.bin", CopySource(bucket, f"src/{BIG_REL}"))
    assert_same(
        remote_snapshot(s3, bucket, "copy/"),
        {"small ✓.txt": tree.files[small], "replaced": tree.files[small], "big.bin": tree.files[BIG_REL]},
        "copies",
    )

    # two sources -> CreateMultipartUpload + UploadPartCopy per source + Complete
    big = tree.big_path.read_bytes()
    res = mc.compose_object(
        bucket,
        "composed",
        [ComposeSource(bucket, f"src/{BIG_REL}"), ComposeSource(bucket, f"src/{small}")],
    )
    assert f'"{res.etag}"' == multipart_etag([big, small_data])
    assert read(mc, bucket, "composed") == big + small_data

    mc.remove_object(bucket, "composed")
    with pytest.raises(S3Error) as exc:
        mc.stat_object(bucket, "composed")
    assert exc.value.code == "NoSuchKey"
    errors = list(
        mc.remove_objects(
            bucket,
            [DeleteObject(f"src/{rel}") for rel in seeded] + [DeleteObject("src/never-was")],
        )
    )
    assert errors == []
    assert remote_keys(s3, bucket) == ["copy/big.bin", "copy/replaced", "copy/small ✓.txt"]
    assert list(mc.remove_objects(bucket, [DeleteObject(k) for k in remote_keys(s3, bucket)])) == []
    assert remote_keys(s3, bucket) == []
