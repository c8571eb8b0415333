"""A real ``strata serve`` on four PostgreSQL shards (after ``strata db migrate``): boto3
round trips with multipart, versioning and listing pagination; two gateway processes on
the same shards and the same blob directory, hammering the same keys concurrently, checked
for lost acknowledged writes and for reads older than a write acknowledged before them; and
the maintenance commands (``strata gc``, ``keys rotate``, ``fsck``, ``stats``) run next to
the gateway on those shards."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from botocore.exceptions import ClientError
from support.postgres import listening, pg_databases, pg_server, run_async
from support.s3 import error_code, make_client, md5_hex, multipart_etag
from support.server import REPO_ROOT, StrataServer

from gateway.config import MetaConfig
from gateway.meta.postgres import PostgresMetadataStore

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


@pytest.mark.parametrize("profile", ["none", "redis", "redis+s3"])
def test_two_gateways_on_the_same_store_stay_consistent(
    strata_factory: Callable[..., StrataServer],
    pg_env: dict[str, str],
    tmp_path: Path,
    profile: str,
    request: pytest.FixtureRequest,
) -> None:
    """Without redis.url a shared store caches no versions; with it, both share Redis; and
    with ``+s3`` the packs go to one SeaweedFS bucket (the whole production profile)."""
    env = dict(pg_env)
    packs_bucket = None
    if profile.endswith("+s3"):
        weed = request.getfixturevalue("seaweed")
        packs_bucket = weed.create_bucket(f"packs-{os.urandom(4).hex()}")
        env |= weed.backend_env(packs_bucket)
    if profile.startswith("redis"):
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
                # about half inline (a few hundred bytes), half in packs (above inline_max)
                repeat = rng.choice((rng.randint(1, 40), rng.randint(1500, 3000)))
                body = f"{key}|{next(counter)}|".encode() * repeat
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
    if packs_bucket is not None:  # the packs live in the shared S3 bucket, not on local disk
        assert weed.keys(packs_bucket, "packs/")
        assert not list((tmp_path / "shared").rglob("*.pack"))


def _read(s3: Any, bucket: str, key: str) -> bytes | None:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        assert error_code(exc) == "NoSuchKey"
        return None


def _strata_cmd(server: StrataServer, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """A ``strata`` maintenance command on the server's stores (shards and blob directory)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--data-dir", str(server.data_dir)],
        cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


async def _shard_rows(dsns: list[str], sql: str) -> list[Any]:
    rows: list[Any] = []
    for dsn in dsns:
        conn = await asyncpg.connect(dsn)
        try:
            rows += await conn.fetch(sql)
        finally:
            await conn.close()
    return rows


async def _first_chunk_place(dsns: list[str], bucket: str, key: str) -> tuple[str, int, int]:
    """(pack id, offset, length) of the first chunk of ``bucket/key``."""
    store = PostgresMetadataStore(MetaConfig(dsns=tuple(dsns), pool_max=2))
    await store.open()
    try:
        version = await store.get_object(bucket, key)
        assert version is not None
        cid = version.manifest.chunk_ids[0]
        loc = (await store.lookup_chunks([cid]))[cid]
        return loc.pack_id, loc.offset, loc.length
    finally:
        await store.close()


def test_gc_keys_fsck_and_stats_commands_on_four_shards(
    strata_factory: Callable[..., StrataServer], pg_env: dict[str, str]
) -> None:
    server = strata_factory(extra_env=pg_env)
    dsns = pg_env["STRATA_META_DSNS"].split(",")
    s3 = make_client(server)
    for b in ("ops-plain", "ops-vers", "ops-more"):
        s3.create_bucket(Bucket=b)
    s3.put_bucket_versioning(Bucket="ops-vers", VersioningConfiguration={"Status": "Enabled"})
    shared = _payload(4 * MiB, 1)
    live: dict[tuple[str, str, str | None], bytes] = {}
    s3.put_object(Bucket="ops-plain", Key="a", Body=shared + _payload(2 * MiB, 2))  # deleted below
    live[("ops-plain", "b", None)] = shared + _payload(2 * MiB, 3)  # dedup-shares a's first chunks
    s3.put_object(Bucket="ops-plain", Key="b", Body=live[("ops-plain", "b", None)])
    s3.copy_object(Bucket="ops-more", Key="copied", CopySource={"Bucket": "ops-plain", "Key": "a"})
    live[("ops-more", "copied", None)] = shared + _payload(2 * MiB, 2)
    s3.put_object(Bucket="ops-more", Key="gone", Body=_payload(6 * MiB, 4))
    for i in range(10):
        body = _payload(40_000, 10 + i)
        s3.put_object(Bucket="ops-more", Key=f"small{i}", Body=body)
        if i >= 8:
            live[("ops-more", f"small{i}", None)] = body
    v1 = s3.put_object(Bucket="ops-vers", Key="v", Body=shared + _payload(3 * MiB, 5))["VersionId"]
    v2_body = shared + _payload(1 * MiB, 6)
    live[("ops-vers", "v", s3.put_object(Bucket="ops-vers", Key="v", Body=v2_body)["VersionId"])] = v2_body
    s3.delete_object(Bucket="ops-plain", Key="a")
    s3.delete_object(Bucket="ops-more", Key="gone")
    for i in range(8):
        s3.delete_object(Bucket="ops-more", Key=f"small{i}")
    s3.delete_object(Bucket="ops-vers", Key="v", VersionId=v1)

    def read_all() -> None:
        for (bucket, key, version), body in live.items():
            got = s3.get_object(Bucket=bucket, Key=key, **({"VersionId": version} if version else {}))
            assert got["Body"].read() == body, (bucket, key)

    stats = _strata_cmd(server, pg_env, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    before_stats = json.loads(stats.stdout)
    assert (before_stats["objects"], before_stats["versions"]) == (5, 5)
    assert before_stats["logical_bytes"] == sum(len(b) for b in live.values())

    before = server.backend_bytes()
    gc = _strata_cmd(server, pg_env, "gc", "--grace", "0")
    assert gc.returncode == 0, gc.stderr
    match = re.search(r"reclaimed (-?[\d,]+) bytes", gc.stdout)
    assert match, gc.stdout
    freed = int(match.group(1).replace(",", ""))
    assert freed >= 9 * MiB  # gone (6 MiB), v1's own 3 MiB, the small objects
    assert before - server.backend_bytes() == freed
    read_all()
    again = _strata_cmd(server, pg_env, "gc", "--grace", "0")
    assert again.returncode == 0 and "reclaimed 0 bytes" in again.stdout, again.stdout + again.stderr
    after_stats = json.loads(_strata_cmd(server, pg_env, "stats", "--json").stdout)
    assert after_stats["physical_bytes"] < before_stats["physical_bytes"]
    assert after_stats["unique_bytes"] < before_stats["unique_bytes"]
    assert after_stats["logical_bytes"] == before_stats["logical_bytes"]
    assert after_stats["dedup_ratio"] > 1.5  # the shared 4 MiB is stored once for three objects
    # every pack blob has a record on its shard, and every record a blob
    packs = run_async(_shard_rows(dsns, "SELECT pack_id FROM packs"))
    blobs = {p.name.removesuffix(".pack") for p in server.blobs_dir.rglob("*.pack")}
    assert {r[0] for r in packs} == blobs

    rotate = _strata_cmd(server, pg_env, "keys", "rotate")
    assert rotate.returncode == 0, rotate.stderr
    assert "added KEK version 2" in rotate.stdout
    wraps = run_async(_shard_rows(dsns, "SELECT DISTINCT kek_version FROM packs"))
    wraps += run_async(_shard_rows(dsns[:1], "SELECT DISTINCT kek_version FROM users"))
    wraps += run_async(_shard_rows(dsns[:1], "SELECT DISTINCT kek_version FROM access_keys"))
    assert {r[0] for r in wraps} == {2}
    read_all()

    clean = _strata_cmd(server, pg_env, "fsck")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout == ""
    pack_id, offset, length = run_async(_first_chunk_place(dsns, "ops-plain", "b"))
    (blob,) = server.blobs_dir.rglob(f"{pack_id}.pack")
    with blob.open("r+b") as f:
        f.seek(offset + length // 2)
        byte = f.read(1)
        f.seek(offset + length // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    damaged = _strata_cmd(server, pg_env, "fsck")
    assert damaged.returncode == 1, damaged.stdout + damaged.stderr
    assert "ops-plain/b (null): chunk" in damaged.stdout


def test_uploads_racing_gc_on_four_shards_never_lose_acknowledged_objects(
    strata_factory: Callable[..., StrataServer], pg_env: dict[str, str]
) -> None:
    """Dedup-heavy PUTs and deletes over HTTP while ``gc --grace 0`` runs again and again on
    the sharded store: a PUT either fails with a retryable 503 or its object reads back
    byte-exact at the end, and fsck (which reads the backend) finds nothing broken."""
    server = strata_factory(extra_env=pg_env)
    s3 = make_client(server, max_pool_connections=8)
    s3.create_bucket(Bucket="busy")
    bodies = [_payload(1 * MiB + 1000 * i, 30 + i) for i in range(4)]  # few bodies: many dedup hits
    acknowledged: dict[str, bytes] = {}
    stop = threading.Event()

    def writer(worker: int) -> None:
        n = 0
        while not stop.is_set():
            key = f"w{worker}-{n}"
            try:
                s3.put_object(Bucket="busy", Key=key, Body=bodies[(worker + n) % len(bodies)])
                acknowledged[key] = bodies[(worker + n) % len(bodies)]
            except ClientError as e:
                assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 503, e
            if n % 3 == 2:  # delete an older one: its chunks become garbage unless shared
                old = f"w{worker}-{n - 2}"
                if acknowledged.pop(old, None) is not None:
                    s3.delete_object(Bucket="busy", Key=old)
            n += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            done = _strata_cmd(server, pg_env, "gc", "--grace", "0")
            assert done.returncode == 0, done.stderr
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert _strata_cmd(server, pg_env, "gc", "--grace", "0").returncode == 0
    assert acknowledged
    for key, body in acknowledged.items():
        assert s3.get_object(Bucket="busy", Key=key)["Body"].read() == body, key
    check = _strata_cmd(server, pg_env, "fsck")
    assert check.returncode == 0, check.stdout + check.stderr
