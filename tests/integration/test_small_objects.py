"""Small objects from concurrent requests share group-committed packs, and a failed small
upload leaves nothing in them. (Objects up to ``storage.inline_max`` never reach a pack:
tests/integration/test_inline_objects.py.)"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError
from support.s3 import make_client
from support.server import StrataServer, dir_bytes


def test_concurrent_small_puts_share_packs(strata_factory: Callable[..., StrataServer]) -> None:
    server = strata_factory()
    s3 = make_client(server, max_pool_connections=32)
    s3.create_bucket(Bucket="small")
    bodies = {f"obj-{i:03d}": os.urandom(20_000 + i) for i in range(96)}  # above inline_max

    def put(key: str) -> str:
        return s3.put_object(Bucket="small", Key=key, Body=bodies[key])["ETag"]

    def get(key: str) -> bytes:
        return s3.get_object(Bucket="small", Key=key)["Body"].read()

    with ThreadPoolExecutor(32) as pool:
        etags = dict(zip(bodies, pool.map(put, bodies), strict=True))
        fetched = dict(zip(bodies, pool.map(get, bodies), strict=True))
    assert fetched == bodies
    assert all(etags[k] == f'"{hashlib.md5(v).hexdigest()}"' for k, v in bodies.items())
    packs = [p for p in (server.data_dir / "blobs" / "packs").rglob("*.pack")]
    assert 1 <= len(packs) < len(bodies)  # grouped, not one pack per object


def test_failed_small_upload_adds_nothing_to_shared_packs(
    strata_factory: Callable[..., StrataServer],
) -> None:
    server = strata_factory()
    s3 = make_client(server)
    s3.create_bucket(Bucket="small")
    s3.put_object(Bucket="small", Key="ok", Body=b"fine")
    before = dir_bytes(server.data_dir / "blobs")
    wrong = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="small", Key="bad", Body=os.urandom(50_000), ContentMD5=wrong)
    assert err.value.response["Error"]["Code"] == "BadDigest"
    assert dir_bytes(server.data_dir / "blobs") == before
    with pytest.raises(ClientError) as missing:
        s3.head_object(Bucket="small", Key="bad")
    assert missing.value.response["Error"]["Code"] == "404"
