"""Observability of a real ``strata serve`` process: Prometheus metrics after real traffic,
``/healthz`` and ``/readyz`` (including real failures of the backend and of the metadata
store), one JSON access line per request, no signature in the server's output, and audit
records in the store and in the outbox."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError
from support.awschunked import object_path, presign_url, sign_request
from support.faultproxy import FaultProxy
from support.metrics import Samples, sample, scrape
from support.s3 import make_client
from support.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed, seaweed  # noqa: F401 (fixture)
from support.server import StrataServer

from gateway.meta.models import AuditRecord
from gateway.meta.sqlite import SqliteMetadataStore

# Families every scrape exposes (counter families drop the ``_total`` of their samples).
REQUIRED_FAMILIES = (
    "upload_requests", "upload_bytes", "upload_duration_seconds", "upload_errors", "concurrent_uploads",
    "dedup_savings_bytes", "download_requests", "download_bytes", "download_duration_seconds",
    "total_files", "total_storage_bytes", "storage_by_tier", "dedup_ratio", "compression_ratio",
    "backend_request_duration_seconds", "backend_errors", "circuit_breaker_state", "s3_requests",
    "s3_request_duration_seconds", "metadata_pool_in_use", "metadata_pool_size",
    "storage_capacity_bytes", "storage_used_bytes",
)  # fmt: skip


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def access_lines(server: StrataServer) -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    return [d for d in docs if d["logger"] == "strata.access"]


def readyz(server: StrataServer) -> tuple[int, dict[str, Any]]:
    resp = requests.get(f"{server.endpoint}/readyz", timeout=15)
    return resp.status_code, resp.json()


def client(server: StrataServer, **config: Any) -> Any:
    """A boto3 client that sends each request exactly once (so every request is counted once)."""
    return make_client(server, retries={"total_max_attempts": 1}, **config)


def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:12]
    return f"obs-bkt-{tag}", f"obs-dir-{tag}/obs-key-{tag}.bin"


# -- metrics --------------------------------------------------------------------------------
def test_metrics_count_uploads_downloads_and_dedup(strata_factory: Callable[..., StrataServer]) -> None:
    server = strata_factory()
    s3 = client(server)
    bucket, key = names()
    s3.create_bucket(Bucket=bucket)
    body = os.urandom(300_000)
    _, before = scrape(server)

    s3.put_object(Bucket=bucket, Key=key, Body=body)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    s3.put_object(Bucket=bucket, Key=key + ".copy", Body=body)  # every chunk already stored
    with pytest.raises(ClientError) as bad:
        wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
        s3.put_object(Bucket=bucket, Key=key + ".bad", Body=b"payload", ContentMD5=wrong_md5)
    assert bad.value.response["Error"]["Code"] == "BadDigest"
    families, after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert not [f for f in REQUIRED_FAMILIES if f not in families]
    assert delta("upload_requests_total") == 3
    assert delta("upload_bytes_total") == 2 * len(body)  # the rejected body was never stored
    assert delta("upload_errors_total", error_type="BadDigest") == 1
    assert delta("upload_duration_seconds_count") == 3
    assert delta("download_requests_total") == 1
    assert delta("download_bytes_total") == len(body)
    assert delta("download_duration_seconds_count") == 1
    assert delta("dedup_savings_bytes_total") == len(body)
    assert delta("s3_requests_total", operation="PutObject", status="200") == 2
    assert delta("s3_requests_total", operation="PutObject", status="400") == 1
    assert delta("s3_requests_total", operation="GetObject", status="200") == 1
    assert sample(after, "concurrent_uploads") == 0
    assert sample(after, "metadata_pool_size") == 1
    label_values = {v for _, labels in after for _, v in labels}
    assert not [v for v in label_values if bucket in v or key in v or "obs-" in v]


def test_chunk_cache_metrics_follow_gets(strata_factory: Callable[..., StrataServer]) -> None:
    """boto3 reads a compressible object twice: the first GET decodes its chunks into the
    chunk cache, the second is answered from it, byte-exact both times."""
    server = strata_factory()
    s3 = client(server)
    bucket, key = names()
    s3.create_bucket(Bucket=bucket)
    body = b"".join(b"line %d of a compressible object\n" % i for i in range(100_000))  # ~3.3 MB
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    _, before = scrape(server)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    _, first = scrape(server)
    assert s3.get_object(Bucket=bucket, Key=key, Range="bytes=1000-")["Body"].read() == body[1000:]
    families, second = scrape(server)

    def delta(a: Samples, b: Samples, name: str) -> float:
        return sample(b, name) - sample(a, name)

    assert {"chunk_cache_hits", "chunk_cache_misses", "chunk_cache_shared", "chunk_cache_bytes"} <= families
    decoded = delta(before, first, "chunk_cache_misses_total")
    assert decoded > 1 and delta(before, first, "chunk_cache_hits_total") == 0
    assert sample(first, "chunk_cache_bytes") == len(body)  # every chunk, as plaintext
    assert delta(first, second, "chunk_cache_hits_total") == decoded  # the range covers every chunk
    assert delta(first, second, "chunk_cache_misses_total") == 0


def test_gets_keep_the_packs_they_read_mapped(strata_factory: Callable[..., StrataServer]) -> None:
    """Large GETs of local packs leave those packs' memory maps kept for later reads, up to
    storage.map_cache bytes of packs (gateway/backends/blob_maps.py)."""
    server = strata_factory(extra_env={"STRATA_STORAGE_MAP_CACHE": str(40 * 1024 * 1024)})
    s3 = client(server)
    bucket, key = names()
    s3.create_bucket(Bucket=bucket)
    body = os.urandom(6 * 1024 * 1024)  # one pack (storage.pack_target is 16 MiB)
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    _, before = scrape(server)
    assert sample(before, "mapped_pack_bytes") == 0
    for _ in range(2):
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    _, after = scrape(server)
    packs = [p.stat().st_size for p in server.data_dir.rglob("*.pack")]
    assert len(packs) == 1 and sample(after, "mapped_pack_bytes") == packs[0] > len(body)


def test_storage_gauges_come_from_the_store(tmp_path: Path) -> None:
    body = os.urandom(300_000)
    with StrataServer(tmp_path / "data", log_path=tmp_path / "first.log") as server:
        s3 = client(server)
        bucket, key = names()
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        s3.put_object(Bucket=bucket, Key=key + ".2", Body=body)
    # A restarted process refreshes the storage gauges at once (then every 30 s).
    with StrataServer(tmp_path / "data", log_path=tmp_path / "restart.log") as again:
        samples = wait_for(
            lambda: (s := scrape(again)[1]) and sample(s, "storage_stats_timestamp_seconds") > 0 and s,
            "the first storage refresh",
        )
    assert sample(samples, "total_files") == 2
    assert sample(samples, "storage_by_tier", tier="STANDARD") == 2 * len(body)
    assert sample(samples, "dedup_ratio") == 2.0
    assert 0.9 < sample(samples, "compression_ratio") <= 1.0  # random data does not compress
    assert sample(samples, "total_storage_bytes") >= len(body)
    capacity, used = sample(samples, "storage_capacity_bytes"), sample(samples, "storage_used_bytes")
    assert 0 < used <= capacity


def test_backend_requests_and_breaker_reach_the_metrics(seaweed: Seaweed, tmp_path: Path) -> None:  # noqa: F811
    """A real S3 backend (SeaweedFS) behind a fault proxy: backend latency and errors are
    counted, the breaker state follows the backend, and /readyz reports it."""
    backend_bucket = seaweed.create_bucket(f"obs-backend-{uuid.uuid4().hex[:12]}")
    with FaultProxy("127.0.0.1", seaweed.s3_port) as proxy:
        env = {
            "STRATA_BACKEND_ENDPOINT": proxy.endpoint, "STRATA_BACKEND_BUCKET": backend_bucket,
            "STRATA_BACKEND_ACCESS_KEY": ACCESS_KEY, "STRATA_BACKEND_SECRET_KEY": SECRET_KEY,
            "STRATA_BACKEND_MAX_ATTEMPTS": "1", "STRATA_BACKEND_BREAKER_FAILURES": "2",
            "STRATA_BACKEND_BREAKER_RESET_SECONDS": "1",
        }  # fmt: skip
        with StrataServer(tmp_path / "data", log_path=tmp_path / "server.log", extra_env=env) as server:
            s3 = client(server)
            bucket, key = names()
            s3.create_bucket(Bucket=bucket)
            body = os.urandom(300_000)
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
            _, healthy = scrape(server)
            assert sample(healthy, "backend_request_duration_seconds_count", operation="put") >= 1
            assert sample(healthy, "backend_request_duration_seconds_count", operation="get") >= 1
            assert sample(healthy, "circuit_breaker_state") == 0
            assert readyz(server)[0] == 200

            proxy.refuse()  # the backend is gone
            for i in range(3):  # too big to be stored inline in its manifest: it needs the backend
                with pytest.raises(ClientError) as failed:
                    s3.put_object(Bucket=bucket, Key=f"{key}.{i}", Body=os.urandom(100_000))
                assert failed.value.response["Error"]["Code"] == "SlowDown"
            _, broken = scrape(server)
            assert sample(broken, "circuit_breaker_state") == 2
            errors = sum(v for (name, _), v in broken.items() if name == "backend_errors_total")
            assert errors >= 2
            assert sample(broken, "upload_errors_total", error_type="SlowDown") == 3
            status, ready = readyz(server)
            assert status == 503 and ready["checks"]["metadata"] == "ok"
            assert ready["checks"]["backend"] != "ok"
            label_values = {v for _, labels in broken for _, v in labels}
            assert not [v for v in label_values if backend_bucket in v or bucket in v]

            proxy.passthrough()  # back: a half-open probe closes the breaker
            wait_for(lambda: readyz(server)[0] == 200, "readiness after the backend returns", timeout=20)
            assert sample(scrape(server)[1], "circuit_breaker_state") == 0


# -- health ---------------------------------------------------------------------------------
def test_healthz_and_readyz(strata: StrataServer, s3: Any) -> None:
    resp = requests.get(f"{strata.endpoint}/healthz", timeout=10)
    assert resp.status_code == 200 and resp.json() == {"status": "alive"}
    assert readyz(strata) == (200, {"status": "ready", "checks": {"metadata": "ok", "backend": "ok"}})
    # Signed requests for these paths are S3 requests (ListObjects on a bucket named "metrics").
    with pytest.raises(ClientError) as err:
        s3.list_objects_v2(Bucket="metrics")
    assert err.value.response["Error"]["Code"] == "NoSuchBucket"


def test_readyz_reports_a_failed_backend(strata_factory: Callable[..., StrataServer]) -> None:
    server = strata_factory()
    assert readyz(server)[0] == 200
    moved = server.blobs_dir.with_name("blobs-away")
    server.blobs_dir.rename(moved)
    try:
        status, body = readyz(server)
        assert status == 503
        assert body["status"] == "unavailable"
        assert body["checks"]["metadata"] == "ok"
        assert "FileNotFoundError" in body["checks"]["backend"]
    finally:
        moved.rename(server.blobs_dir)
    assert readyz(server)[0] == 200


def test_readyz_reports_a_locked_metadata_store(strata_factory: Callable[..., StrataServer]) -> None:
    server = strata_factory()
    assert readyz(server)[0] == 200
    other = sqlite3.connect(server.data_dir / "meta.sqlite", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        status, body = readyz(server)
        assert status == 503
        assert body["checks"] == {"metadata": "no answer within 2s", "backend": "ok"}
    finally:
        other.execute("ROLLBACK")
        other.close()
    wait_for(lambda: readyz(server)[0] == 200, "readiness after the lock is released", timeout=20)


# -- logs -----------------------------------------------------------------------------------
def test_one_json_access_line_per_request(strata_factory: Callable[..., StrataServer]) -> None:
    server = strata_factory()
    s3 = client(server)
    bucket, key = names()
    ids: dict[str, tuple[str, str, int]] = {}

    def note(meta: dict[str, Any], operation: str, status: int) -> None:
        ids[meta["RequestId"]] = (operation, meta["HTTPHeaders"]["x-amz-request-id"], status)

    note(s3.create_bucket(Bucket=bucket)["ResponseMetadata"], "CreateBucket", 200)
    note(s3.put_object(Bucket=bucket, Key=key, Body=b"hello")["ResponseMetadata"], "PutObject", 200)
    got = s3.get_object(Bucket=bucket, Key=key)
    got["Body"].read()
    note(got["ResponseMetadata"], "GetObject", 200)
    note(s3.head_object(Bucket=bucket, Key=key)["ResponseMetadata"], "HeadObject", 200)
    with pytest.raises(ClientError) as missing:
        s3.get_object(Bucket=bucket, Key=key + ".missing")
    note(missing.value.response["ResponseMetadata"], "GetObject", 404)
    intruder = client(server, secret_key="not-the-secret-key-at-all-0000000000000000")
    with pytest.raises(ClientError) as denied:
        intruder.list_objects_v2(Bucket=bucket)
    note(denied.value.response["ResponseMetadata"], "ListObjectsV2", 403)

    wait_for(lambda: set(ids) <= {d["request_id"] for d in access_lines(server)}, "the access lines")
    lines = access_lines(server)
    for request_id, (operation, header, status) in ids.items():
        mine = [d for d in lines if d["request_id"] == request_id]
        assert len(mine) == 1, request_id
        line = mine[0]
        assert header == request_id
        assert (line["operation"], line["status"], line["bucket"]) == (operation, status, bucket)
        assert line["remote_ip"] == "127.0.0.1" and line["user_agent"].startswith("Boto3")
        assert {"method", "key", "bytes_in", "bytes_out", "duration_ms", "access_key_id"} <= line.keys()
    by_op = {d["operation"]: d for d in lines if d["request_id"] in ids and d["status"] == 200}
    assert by_op["PutObject"]["bytes_in"] == 5 and by_op["GetObject"]["bytes_out"] == 5
    assert by_op["PutObject"]["key"] == key and by_op["PutObject"]["user"] == "root"
    assert by_op["PutObject"]["access_key_id"] == server.access_key
    text = server.log_path.read_text()
    assert server.secret_key not in text
    assert all(json.loads(line) for line in text.splitlines() if line.strip())  # every line is JSON


def test_signatures_never_reach_the_log(strata_factory: Callable[..., StrataServer]) -> None:
    server = strata_factory(extra_args=["--log-level", "DEBUG"])
    s3 = client(server)
    bucket, key = names()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=b"presigned")
    secrets_sent: list[str] = []

    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300)
    assert requests.get(url, timeout=10).content == b"presigned"
    secrets_sent.append(url.split("X-Amz-Signature=")[1].split("&")[0])

    raw_url = f"{server.endpoint}{object_path(bucket, key)}"
    forged = presign_url("GET", raw_url, access_key=server.access_key, secret_key="wrong-secret-key")
    assert requests.get(forged, timeout=10).status_code == 403
    secrets_sent.append(forged.split("X-Amz-Signature=")[1].split("&")[0])

    signed = sign_request("GET", raw_url, access_key=server.access_key, secret_key=server.secret_key)
    assert requests.get(raw_url, headers=signed.headers, timeout=10).status_code == 200
    secrets_sent.append(signed.signature)

    token = base64.b64encode(os.urandom(48)).decode()
    with_token = presign_url(
        "GET", raw_url + "?X-Amz-Security-Token=" + requests.utils.quote(token, safe=""),
        access_key=server.access_key, secret_key=server.secret_key,
    )  # fmt: skip
    requests.get(with_token, timeout=10)
    secrets_sent += [token, requests.utils.quote(token, safe="")]

    wait_for(lambda: len(access_lines(server)) >= 6, "the access lines")
    text = server.log_path.read_text()
    leaked = [s for s in secrets_sent if s in text]
    assert not leaked
    queries = [d["query"] for d in access_lines(server) if d["query"]]
    assert sum("X-Amz-Signature=REDACTED" in q for q in queries) == 3  # logged, but redacted
    assert any("X-Amz-Security-Token=REDACTED" in q for q in queries)
    assert server.secret_key not in text


# -- audit ----------------------------------------------------------------------------------
async def _read_store(path: Path) -> tuple[list[AuditRecord], list[dict[str, Any]]]:
    store = SqliteMetadataStore(path)
    await store.open()
    try:
        return await store.read_audit(0, 1000), [e.body for e in await store.read_outbox(0, 1000)]
    finally:
        await store.close()


def test_audit_records_in_the_store_and_the_outbox(tmp_path: Path) -> None:
    with StrataServer(tmp_path / "data", log_path=tmp_path / "server.log") as server:
        s3 = client(server, user_agent_extra="obs-audit-test/1.0")
        bucket, key = names()
        s3.create_bucket(Bucket=bucket)
        put = s3.put_object(Bucket=bucket, Key=key, Body=b"audited")["ResponseMetadata"]["RequestId"]
        got = s3.get_object(Bucket=bucket, Key=key)
        got["Body"].read()
        head = s3.head_object(Bucket=bucket, Key=key)["ResponseMetadata"]["RequestId"]
        listed = s3.list_objects_v2(Bucket=bucket)["ResponseMetadata"]["RequestId"]
        deleted = s3.delete_object(Bucket=bucket, Key=key)["ResponseMetadata"]["RequestId"]
    # Stopped at once: the records still queued were written on shutdown.
    audit, outbox = asyncio.run(_read_store(server.data_dir / "meta.sqlite"))

    expected = {
        put: ("PutObject", 200),
        got["ResponseMetadata"]["RequestId"]: ("GetObject", 200),
        deleted: ("DeleteObject", 204),
    }
    rows = {r.request_id: r for r in audit}
    for request_id, (action, status) in expected.items():
        r = rows[request_id]
        assert (r.action, r.status, r.bucket, r.key) == (action, status, bucket, key)
        assert (r.user, r.access_key, r.ip) == ("root", server.access_key, "127.0.0.1")
        assert r.user_agent is not None and "obs-audit-test/1.0" in r.user_agent
        assert r.time > 0
    assert [r.action for r in audit] == ["CreateBucket", "PutObject", "GetObject", "DeleteObject"]
    assert head not in rows and listed not in rows  # HEAD and listings are not audited

    events = {e["requestId"]: e for e in outbox if e.get("kind") == "audit"}
    assert set(events) == set(rows)
    for request_id, (action, status) in expected.items():
        e = events[request_id]
        assert (e["action"], e["status"], e["bucket"], e["key"]) == (action, status, bucket, key)
        assert (e["user"], e["accessKeyId"], e["ip"]) == ("root", server.access_key, "127.0.0.1")
        assert "obs-audit-test/1.0" in e["userAgent"]


def test_delete_objects_is_audited_per_key(tmp_path: Path) -> None:
    with StrataServer(tmp_path / "data", log_path=tmp_path / "server.log") as server:
        s3 = client(server)
        bucket, _ = names()
        s3.create_bucket(Bucket=bucket)
        for key in ("a", "b"):
            s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
        request = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "a"}, {"Key": "b"}]})
        request_id = request["ResponseMetadata"]["RequestId"]
    audit, outbox = asyncio.run(_read_store(server.data_dir / "meta.sqlite"))
    rows = [(r.action, r.bucket, r.key, r.status) for r in audit if r.request_id == request_id]
    assert sorted(rows) == [("DeleteObjects", bucket, "a", 200), ("DeleteObjects", bucket, "b", 200)]
    events = [e["key"] for e in outbox if e.get("kind") == "audit" and e["requestId"] == request_id]
    assert sorted(events) == ["a", "b"]
