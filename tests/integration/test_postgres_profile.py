"""A real ``strata serve`` on four PostgreSQL shards (after ``strata db migrate``): boto3
round trips with multipart, versioning and listing pagination; and two gateway processes on
the same shards and the same blob directory, hammering the same keys concurrently, checked
for lost acknowledged writes and for reads older than a write acknowledged before them."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from support.postgres import listening, pg_databases, pg_server
from support.s3 import error_code, make_client, md5_hex, multipart_etag
from support.server import REPO_ROOT, StrataServer

__all__ = ["pg_databases", "pg_server"]

MiB = 1024 * 1024
ODD_KEYS = ["B", "a", "a/b", "a/\u00e9", "Z\u00e9", "\u00e9t\u00e9", "\uff21", "\U0001f600", "A", "a+b c"]


@pytest.fixture
def pg_env(pg_databases: Callable[[int], tuple[str, ...]]) -> dict[str, str]:
    """Four fresh databases, migrated with ``strata db migrate``; the environment naming them."""
    env = {"STRATA_META_DSNS": ",".join(pg_databases(4))}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "db", "migrate"], cwd=REPO_ROOT, env={**os.environ, **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return env


def _keys(page: dict[str, Any]) -> list[str]:
    return [o["Key"] for o in page.get("Contents", [])]


def test_boto3_round_trip_on_four_shards(
    strata_factory: Callable[..., StrataServer], pg_env: dict[str, str]
) -> None:
    s3 = make_client(strata_factory(extra_env=pg_env), max_pool_connections=16)
    buckets = [f"pg-{i}" for i in range(8)]  # the ring spreads them over the shards
    for b in buckets:
        s3.create_bucket(Bucket=b)
        s3.put_object(Bucket=b, Key="hello", Body=b"hi " + b.encode())
    assert {x["Name"] for x in s3.list_buckets()["Buckets"]} >= set(buckets)
    for b in buckets:
        assert s3.get_object(Bucket=b, Key="hello")["Body"].read() == b"hi " + b.encode()

    # multipart (parts 2 then 1, dedup of a repeated part across uploads)
    bucket = buckets[1]
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), b"tail"]
    mp = s3.create_multipart_upload(Bucket=bucket, Key="mp/\u00e9")
    etags = {}
    for n in (2, 1, 3):
        etags[n] = s3.upload_part(Bucket=bucket, Key="mp/\u00e9", UploadId=mp["UploadId"], PartNumber=n,
                                  Body=parts[n - 1])["ETag"]  # fmt: skip
    listed = s3.list_parts(Bucket=bucket, Key="mp/\u00e9", UploadId=mp["UploadId"])
    assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2, 3]
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == ["mp/\u00e9"]
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="mp/\u00e9", UploadId=mp["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in (1, 2, 3)]},
    )  # fmt: skip
    assert done["ETag"] == multipart_etag(parts)
    got = s3.get_object(Bucket=bucket, Key="mp/\u00e9")["Body"].read()
    assert got == b"".join(parts)
    ranged = s3.get_object(Bucket=bucket, Key="mp/\u00e9", Range=f"bytes={5 * MiB - 2}-{5 * MiB + 1}")
    assert ranged["Body"].read() == parts[0][-2:] + parts[1][:2]
    aborted = s3.create_multipart_upload(Bucket=bucket, Key="gone")
    s3.upload_part(Bucket=bucket, Key="gone", UploadId=aborted["UploadId"], PartNumber=1, Body=b"x")
    s3.abort_multipart_upload(Bucket=bucket, Key="gone", UploadId=aborted["UploadId"])
    with pytest.raises(ClientError) as err:
        s3.list_parts(Bucket=bucket, Key="gone", UploadId=aborted["UploadId"])
    assert error_code(err.value) == "NoSuchUpload"

    # versioning
    bucket = buckets[2]
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    ids = [s3.put_object(Bucket=bucket, Key="v", Body=f"v{i}".encode())["VersionId"] for i in range(3)]
    assert s3.get_object(Bucket=bucket, Key="v")["Body"].read() == b"v2"
    assert s3.get_object(Bucket=bucket, Key="v", VersionId=ids[0])["Body"].read() == b"v0"
    marker = s3.delete_object(Bucket=bucket, Key="v")
    assert marker["DeleteMarker"]
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="v")
    assert error_code(err.value) == "NoSuchKey"
    versions = s3.list_object_versions(Bucket=bucket, Prefix="v")
    assert [v["VersionId"] for v in versions["Versions"]] == ids[::-1]
    assert [m["VersionId"] for m in versions["DeleteMarkers"]] == [marker["VersionId"]]
    s3.delete_object(Bucket=bucket, Key="v", VersionId=marker["VersionId"])
    assert s3.get_object(Bucket=bucket, Key="v")["Body"].read() == b"v2"
    with pytest.raises(ClientError) as err:
        s3.delete_bucket(Bucket=bucket)
    assert error_code(err.value) == "BucketNotEmpty"

    # listing pagination in UTF-8 byte order, with and without a delimiter
    bucket = buckets[3]
    keys = [*ODD_KEYS, *(f"p/{i:02d}" for i in range(15))]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=md5_hex(k.encode()).encode())
    seen, token = [], None
    while True:
        page = s3.list_objects_v2(Bucket=bucket, MaxKeys=4, **({"ContinuationToken": token} if token else {}))
        seen += _keys(page)
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == sorted([*keys, "hello"], key=str.encode)
    page = s3.list_objects_v2(Bucket=bucket, Delimiter="/", MaxKeys=1000)
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["a/", "p/"]
    v1 = s3.list_objects(Bucket=bucket, Prefix="p/", Marker="p/11", MaxKeys=2)
    assert _keys(v1) == ["p/12", "p/13"] and v1["IsTruncated"]


@dataclass
class Op:
    kind: str  # put | delete | get
    key: str
    start: float
    end: float
    body: bytes | None = None  # put: what was written; get: what was read (None: 404)
    version_id: str | None = None


def _check_reads(ops: list[Op]) -> None:
    """Every read returns a write that was not overwritten before the read began: no
    acknowledged put or delete that started after the returned write was acknowledged
    finished before the read started. A 404 needs a delete that may follow every put
    acknowledged before the read."""
    writes = [o for o in ops if o.kind != "get"]
    by_body = {o.body: o for o in writes if o.kind == "put"}
    for read in (o for o in ops if o.kind == "get"):
        mine = [w for w in writes if w.key == read.key]
        if read.body is None:
            for put in (w for w in mine if w.kind == "put" and w.end < read.start):
                assert any(d.kind == "delete" and d.end > put.start and d.start < read.end for d in mine), (
                    f"read of {read.key!r} found nothing after {put.version_id} was acknowledged"
                )
            continue
        source = by_body.get(read.body)
        assert source is not None and source.key == read.key, f"read of {read.key!r} returned an unknown body"
        assert source.start < read.end
        newer = [w for w in mine if w.start > source.end and w.end < read.start]
        assert not newer, (
            f"stale read of {read.key!r}: {source.version_id} after {newer[0].kind} {newer[0].version_id}"
        )


@pytest.mark.parametrize("cache", ["none", "redis"])
def test_two_gateways_on_the_same_store_stay_consistent(
    strata_factory: Callable[..., StrataServer], pg_env: dict[str, str], tmp_path: Path, cache: str
) -> None:
    """Without redis.url a shared store caches no versions; with it, both share Redis."""
    env = dict(pg_env)
    if cache == "redis":
        if not listening("127.0.0.1", 6379):
            pytest.skip("no Redis at 127.0.0.1:6379")
        env |= {
            "STRATA_REDIS_URL": "redis://127.0.0.1:6379/0",
            "STRATA_REDIS_PREFIX": f"t{os.urandom(6).hex()}:",
        }
    shared = ["--data-dir", str(tmp_path / "shared")]  # one blob directory and keyring for both
    gateways = [strata_factory(extra_env=env, extra_args=shared) for _ in range(2)]
    clients = [make_client(g, max_pool_connections=16) for g in gateways]
    bucket = "shared-bucket"
    clients[0].create_bucket(Bucket=bucket)
    clients[1].put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    keys = [f"hot-{i}" for i in range(4)] + ["\u00e9t\u00e9"]
    ops: list[Op] = []
    lock = threading.Lock()
    counter = iter(range(10**9))

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(30):
            key, gw = rng.choice(keys), rng.randrange(2)
            s3, other = clients[gw], clients[1 - gw]
            roll, start = rng.random(), time.monotonic()
            if roll < 0.45:
                body = f"{key}|{next(counter)}|".encode() * rng.randint(1, 40)
                vid = s3.put_object(Bucket=bucket, Key=key, Body=body)["VersionId"]
                op = Op("put", key, start, time.monotonic(), body, vid)
                with lock:
                    ops.append(op)
                start, s3 = time.monotonic(), other  # read it back through the other gateway
            elif roll < 0.6:
                vid = s3.delete_object(Bucket=bucket, Key=key)["VersionId"]
                with lock:
                    ops.append(Op("delete", key, start, time.monotonic(), None, vid))
                continue
            try:
                got: bytes | None = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except ClientError as exc:
                assert error_code(exc) == "NoSuchKey"
                got = None
            with lock:
                ops.append(Op("get", key, start, time.monotonic(), got))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    assert all(g.is_running() for g in gateways)
    _check_reads(ops)
    # No acknowledged write is lost, and each key's history is in real-time order.
    versions = clients[1].list_object_versions(Bucket=bucket)
    history = [*versions.get("Versions", []), *versions.get("DeleteMarkers", [])]
    assert not versions["IsTruncated"]
    written = [o for o in ops if o.kind != "get"]
    assert sorted(v["VersionId"] for v in history) == sorted(o.version_id for o in written)
    for key in keys:
        mine = {o.version_id: o for o in written if o.key == key}
        puts = [v for v in versions.get("Versions", []) if v["Key"] == key]
        markers = [m for m in versions.get("DeleteMarkers", []) if m["Key"] == key]
        for listed in (puts, markers):  # each list is newest first: never against real time
            for i, newer in enumerate(listed):
                for older in listed[i + 1 :]:
                    a, b = mine[newer["VersionId"]], mine[older["VersionId"]]
                    assert not a.end < b.start, (
                        f"{key}: {a.version_id} listed newer than the later {b.version_id}"
                    )
        latest = [e for e in puts + markers if e["IsLatest"]]
        assert len(latest) == (1 if mine else 0)
        expected = None
        if latest:
            top = mine[latest[0]["VersionId"]]
            assert not any(top.end < w.start for w in mine.values()), f"{key}: latest is not the last write"
            expected = top.body
        assert [_read(c, bucket, key) for c in clients] == [expected, expected]  # both gateways agree


def _read(s3: Any, bucket: str, key: str) -> bytes | None:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        assert error_code(exc) == "NoSuchKey"
        return None
