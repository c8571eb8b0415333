"""s3fs (fsspec) in the client matrix.

``tests/integration/test_s3fs.py`` covers pipe/cat/open/ls/rm; here the shared tree goes
up with ``put`` (one PutObject per file: s3fs goes multipart only from 2 x chunksize, and
writing through ``open`` in parts is in the integration test), comes back with
``get``, is listed with ``find``/``ls``/``info``, copied with ``copy`` (CopyObject per key,
also recursively), moved with ``mv`` and removed with ``rm`` (DeleteObjects, which s3fs
sends with a CRC32 header and no Content-MD5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import s3fs
from support.s3 import MiB
from support.server import StrataServer
from support.trees import (
    BIG_REL,
    Tree,
    assert_same,
    md5_hex,
    remote_keys,
    remote_snapshot,
    snapshot,
    upload_tree,
)

PART = 5 * MiB


@pytest.fixture
def fs(strata: StrataServer) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(
        key=strata.access_key,
        secret=strata.secret_key,
        endpoint_url=strata.endpoint,
        client_kwargs={"region_name": strata.region},
        config_kwargs={"s3": {"addressing_style": "path"}, "retries": {"max_attempts": 1}},
        skip_instance_cache=True,
        use_listings_cache=False,
    )


def test_put_find_get(fs: s3fs.S3FileSystem, s3: Any, bucket: str, tree: Tree, tmp_path: Path) -> None:
    fs.put(f"{tree.root}/", f"{bucket}/tree/", recursive=True, chunksize=PART)
    assert_same(remote_snapshot(s3, bucket, "tree/"), tree.files, "bucket after put")
    # s3fs puts files below 2 x chunksize in one PutObject, so every ETag is the plain MD5
    for rel in tree.files:
        etag = s3.head_object(Bucket=bucket, Key=f"tree/{rel}")["ETag"]
        assert etag == f'"{md5_hex((tree.root / rel).read_bytes())}"', rel

    assert sorted(fs.find(f"{bucket}/tree")) == sorted(f"{bucket}/tree/{rel}" for rel in tree.files)
    assert sorted(fs.ls(f"{bucket}/tree", detail=False)) == sorted(
        f"{bucket}/tree/{name}" for name in ("big", "data", "empty", "hello.txt", "with space", "ünïcødé")
    )
    info = fs.info(f"{bucket}/tree/hello.txt")
    assert info["type"] == "file"
    assert info["size"] == (tree.root / "hello.txt").stat().st_size
    assert info["ETag"] == f'"{md5_hex((tree.root / "hello.txt").read_bytes())}"'
    assert fs.isdir(f"{bucket}/tree/ünïcødé")

    down = tmp_path / "down"
    fs.get(f"{bucket}/tree/", f"{down}/", recursive=True)
    assert_same(snapshot(down), tree.files, "downloaded tree")


def test_copy_mv_rm(fs: s3fs.S3FileSystem, s3: Any, bucket: str, tree: Tree) -> None:
    seeded = upload_tree(s3, bucket, "src/", tree, include_big=True)

    fs.copy(f"{bucket}/src/{BIG_REL}", f"{bucket}/one/big copy.bin")  # CopyObject (below 5 GiB)
    assert_same(remote_snapshot(s3, bucket, "one/"), {"big copy.bin": tree.files[BIG_REL]}, "single copy")
    fs.copy(f"{bucket}/src/", f"{bucket}/all/", recursive=True)
    assert_same(remote_snapshot(s3, bucket, "all/"), seeded, "recursive copy")

    fs.mv(f"{bucket}/one/big copy.bin", f"{bucket}/moved/big.bin")
    assert remote_keys(s3, bucket, "one/") == []
    assert_same(remote_snapshot(s3, bucket, "moved/"), {"big.bin": tree.files[BIG_REL]}, "moved")

    fs.rm(f"{bucket}/all/hello.txt")
    assert not fs.exists(f"{bucket}/all/hello.txt")
    fs.rm(f"{bucket}/all", recursive=True)  # DeleteObjects
    assert remote_keys(s3, bucket, "all/") == []
    assert remote_keys(s3, bucket) == sorted(["moved/big.bin", *(f"src/{rel}" for rel in seeded)])
    with pytest.raises(FileNotFoundError):
        fs.cat(f"{bucket}/all/empty")
    assert_same(remote_snapshot(s3, bucket, "src/"), seeded, "copy sources afterwards")
