"""Observability without a server: the JSON log line, secret redaction (table and property),
the metric registry, request bookkeeping, operation names, and the audit log batching into a
real SQLite store."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import LogConfig
from gateway.meta.models import AuditRecord, PoolUsage
from gateway.meta.sqlite import _SCHEMA_V1, SqliteMetadataStore
from gateway.meta.store import StorageStats
from gateway.observability.audit import AuditLog
from gateway.observability.logging import (
    ACCESS_LOGGER,
    REDACTED,
    REQUEST_ID,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    log_access,
    redact,
)
from gateway.observability.metrics import BoundedLabel, Metrics, ratio
from gateway.observability.record import RequestRecord
from gateway.s3.router import operation_name

# The metric names the deployment's dashboards and alert rules use (counters are exposed with
# a ``_total`` suffix: ``dedup_savings_bytes_total``).
REQUIRED_METRICS = (
    "upload_requests_total", "upload_bytes_total", "upload_duration_seconds", "upload_errors_total",
    "concurrent_uploads", "dedup_savings_bytes",
    "download_requests_total", "download_bytes_total", "download_duration_seconds",
    "total_files", "total_storage_bytes", "storage_by_tier", "dedup_ratio", "compression_ratio",
    "backend_request_duration_seconds", "backend_errors_total", "circuit_breaker_state",
    "s3_requests_total", "s3_request_duration_seconds",
    "metadata_pool_in_use", "metadata_pool_size", "storage_capacity_bytes", "storage_used_bytes",
)  # fmt: skip
SIG = "3f2c6f0a5b8d9e1c7a4b2d6e8f0a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a"
TOKEN = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD+Zm9vYmFy/ZXhhbXBsZQ=="


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, tuple(sorted(labels.items()))), 0.0)


# -- redaction ------------------------------------------------------------------------------
REDACTION_CASES = [
    (  # presigned SigV4 URL
        f"GET /b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20240101%2Fus-east-1%2Fs3"
        f"%2Faws4_request&X-Amz-Date=20240101T000000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host"
        f"&X-Amz-Signature={SIG}",
        SIG,
        "X-Amz-Credential=AKID%2F20240101",
    ),
    (  # presigned SigV2 URL
        "http://h/b/k?AWSAccessKeyId=AKID&Expires=1700000000&Signature=abc%2Bdef%2Fghi%3D",
        "abc%2Bdef%2Fghi%3D",
        "AWSAccessKeyId=AKID",
    ),
    (  # SigV4 Authorization header
        "Authorization: AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/s3/aws4_request, "
        f"SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={SIG}",
        SIG,
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date",
    ),
    (
        "Authorization: AWS AKIDEXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg=",
        "frJIUN8DYpKDtOLCwo//yllqDzg=",
        "AKIDEXAMPLE",
    ),
    (f"/b/k?X-Amz-Security-Token={TOKEN}&x-id=GetObject", TOKEN, "x-id=GetObject"),
    (f"x-amz-security-token: {TOKEN}", TOKEN, "x-amz-security-token"),
    (json.dumps({"X-Amz-Signature": SIG, "user": "alice"}), SIG, '"user": "alice"'),
    (repr({"x-amz-security-token": TOKEN}), TOKEN, "x-amz-security-token"),
    (f"redirect=http%3A%2F%2Fh%2Fk%3FX-Amz-Signature%3D{SIG}", SIG, "redirect="),
    (f"X-AMZ-SIGNATURE={SIG.upper()}", SIG.upper(), "X-AMZ-SIGNATURE="),
    ("signature=" + SIG + "\nnext line", SIG, "next line"),  # POST policy form field
]


@pytest.mark.parametrize(("text", "secret", "kept"), REDACTION_CASES)
def test_redact_removes_signatures_and_tokens(text: str, secret: str, kept: str) -> None:
    out = redact(text)
    assert secret not in out
    assert REDACTED in out
    assert kept in out


@pytest.mark.parametrize(
    "text",
    [
        "GET /bucket/key 200",
        "SignatureDoesNotMatch for key photos/a.jpg",
        "SignedHeaders=host",
        "laws of nature",
    ],
)
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text) == text


SECRET_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/%-_"
TEMPLATES = [
    "https://h:9000/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={s}&x-id=GetObject",
    "/b/k?AWSAccessKeyId=AK&Signature={s}&Expires=1",
    "AWS4-HMAC-SHA256 Credential=AK/20240101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature={s}",
    "AWS AKIDEXAMPLE:{s}",
    "X-Amz-Security-Token={s}",
    '{{"x-amz-security-token": "{s}"}}',
    "X-Amz-Signature%3D{s}",
]


@settings(max_examples=300, deadline=None)
@given(
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    secret=st.text(alphabet=SECRET_CHARS, min_size=16, max_size=96),
    template=st.sampled_from(TEMPLATES),
)
def test_no_signature_substring_survives(before: str, after: str, secret: str, template: str) -> None:
    text = before + template.format(s=secret) + after
    if before.count(secret) + after.count(secret):  # the secret also occurs outside its slot
        return
    assert secret not in redact(text)


# -- log lines ------------------------------------------------------------------------------
def _logger(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.observability.{id(out)}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, out


ACCESS_FIELDS = {
    "request_id": "0123456789ABCDEF", "method": "GET", "operation": "GetObject", "bucket": "photos",
    "key": "a b/ç\nd.jpg", "query": "versionId=3", "version_id": None, "status": 200, "error": None,
    "bytes_in": 0, "bytes_out": 4096, "duration_ms": 1.5, "remote_ip": "10.0.0.7", "user_agent": "aws-cli/2",
    "access_key_id": "AKIDEXAMPLE", "user": "alice",
}  # fmt: skip


def test_access_line_is_one_json_object_with_every_field() -> None:
    logger, out = _logger(JsonFormatter())
    log_access(ACCESS_FIELDS, logger)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert {"time", "level", "logger", "message"} <= doc.keys()
    assert doc["time"].endswith("Z") and doc["level"] == "INFO"
    for name, expected in ACCESS_FIELDS.items():
        assert doc[name] == expected
    assert doc["message"] == "GET GetObject 200"


def test_json_lines_redact_messages_fields_and_tracebacks() -> None:
    logger, out = _logger(JsonFormatter())
    logger.info("fetching %s", f"/b/k?X-Amz-Signature={SIG}", extra={"fields": {"url": f"?Signature={SIG}"}})
    try:
        raise ValueError(f"bad Authorization: AWS4-HMAC-SHA256 Credential=A/x, Signature={SIG}")
    except ValueError:
        logger.exception("failed")
    text = out.getvalue()
    assert SIG not in text
    docs = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert len(docs) == 2
    assert "ValueError" in docs[1]["exception"]


def test_lines_carry_the_current_request_id() -> None:
    logger, out = _logger(JsonFormatter())
    token = REQUEST_ID.set("FEEDFACE00000001")
    try:
        logger.warning("backend slow")
    finally:
        REQUEST_ID.reset(token)
    logger.warning("outside")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["request_id"] == "FEEDFACE00000001"
    assert "request_id" not in second


def test_text_format_is_one_line_of_key_values() -> None:
    logger, out = _logger(TextFormatter())
    log_access(ACCESS_FIELDS, logger)
    (line,) = out.getvalue().splitlines()
    assert "GET GetObject 200" in line
    assert "operation=GetObject" in line and "bytes_out=4096" in line
    assert 'key="a b/\\u00e7\\nd.jpg"' in line


def test_configure_logging_installs_the_format_and_level() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out = io.StringIO()
    try:
        configure_logging(LogConfig(level="warning", format="json"), out)
        logging.getLogger(ACCESS_LOGGER).info("dropped")
        logging.getLogger("strata.test").warning("kept %s", f"Signature={SIG}")
        (line,) = out.getvalue().splitlines()
        assert json.loads(line)["message"] == f"kept Signature={REDACTED}"
        with pytest.raises(ValueError, match=r"log\.format"):
            configure_logging(LogConfig(format="xml"), out)
        with pytest.raises(ValueError, match=r"log\.level"):
            configure_logging(LogConfig(level="LOUD"), out)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


# -- metrics --------------------------------------------------------------------------------
def test_every_required_metric_is_registered() -> None:
    families = {family.name for family in Metrics().registry.collect()}
    missing = [n for n in REQUIRED_METRICS if n.removesuffix("_total") not in families]
    assert not missing


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.download_requests.inc()
    assert value(a, "download_requests_total") == 1
    assert value(b, "download_requests_total") == 0


def _record(operation: str, method: str, status: int, **kw: Any) -> RequestRecord:
    rec = RequestRecord("ID", method, 0.0, 0.0, "127.0.0.1", "ua", operation=operation, status=status)
    for k, v in kw.items():
        setattr(rec, k, v)
    return rec


def test_requests_feed_upload_download_and_operation_metrics() -> None:
    m = Metrics()
    m.observe_request(_record("PutObject", "PUT", 200, bytes_stored=1000, duration=0.2))
    m.observe_request(_record("PutObject", "PUT", 400, error="BadDigest"))
    m.observe_request(_record("GetObject", "GET", 206, bytes_out=300))
    m.observe_request(_record("GetObject", "GET", 404, bytes_out=250, error="NoSuchKey"))
    m.observe_request(_record("ListObjectsV2", "GET", 200, bytes_out=900))
    assert value(m, "upload_requests_total") == 2
    assert value(m, "upload_bytes_total") == 1000
    assert value(m, "upload_errors_total", error_type="BadDigest") == 1
    assert value(m, "download_requests_total") == 2
    assert value(m, "download_bytes_total") == 300  # the 404's error document is not a download
    assert value(m, "s3_requests_total", operation="PutObject", status="400") == 1
    assert value(m, "s3_request_duration_seconds_count", operation="ListObjectsV2") == 1


def test_concurrent_uploads_counts_upload_requests_in_flight() -> None:
    m = Metrics()
    put, get = _record("PutObject", "PUT", 200), _record("GetObject", "GET", 200)
    m.in_flight.update({put, get, _record("UploadPart", "PUT", 200)})
    assert value(m, "concurrent_uploads") == 2
    m.in_flight.discard(put)
    assert value(m, "concurrent_uploads") == 1


def test_read_ahead_and_idle_trims_are_exported() -> None:
    m = Metrics()
    held = [0]
    m.watch_read_ahead(lambda: held[0])
    held[0] = 12 << 20
    assert value(m, "read_ahead_bytes") == 12 << 20  # read at scrape
    m.trimmed(300 << 20)
    m.trimmed(-5)  # RSS grew meanwhile: counted as a trim that gave nothing back
    assert value(m, "memory_trims_total") == 2
    assert value(m, "memory_trimmed_bytes_total") == 300 << 20


def test_ingest_reports_dedup_savings_and_attributes_bytes_to_the_request() -> None:
    m = Metrics()
    m.ingested(5000, 4000)  # no request: savings only
    from gateway.observability.record import CURRENT

    rec = _record("PutObject", "PUT", 200)
    token = CURRENT.set(rec)
    try:
        m.ingested(700, 0)
    finally:
        CURRENT.reset(token)
    assert value(m, "dedup_savings_bytes_total") == 4000
    assert rec.bytes_stored == 700


def test_backend_observer_protocol() -> None:
    m = Metrics()
    m.request("get", 0.02, True, None)
    m.request("get", 1.5, False, "TimeoutError")
    m.breaker("open")
    assert value(m, "backend_request_duration_seconds_count", operation="get") == 2
    assert value(m, "backend_errors_total", operation="get", error_type="TimeoutError") == 1
    assert value(m, "circuit_breaker_state") == 2
    m.breaker("half_open")
    assert value(m, "circuit_breaker_state") == 1
    m.breaker("nonsense")
    assert value(m, "circuit_breaker_state") == 1


def test_storage_gauges_and_pool_usage() -> None:
    m = Metrics()
    stats = StorageStats(
        objects=3, versions=4, delete_markers=1, version_bytes=4000, current_bytes=3000, parts=1,
        part_bytes=1000, chunks=2, chunk_plain_bytes=2500, chunk_stored_bytes=1000, packs=1,
        pack_bytes=1100, bytes_by_class={"STANDARD": 3000, "GLACIER": 1000},
    )  # fmt: skip
    m.set_storage(stats)
    m.set_disk(10_000, 2_500)
    m.watch_pool(lambda: PoolUsage(in_use=3, size=16, waiting=0))
    assert value(m, "total_files") == 3
    assert value(m, "total_storage_bytes") == 1100
    assert value(m, "dedup_ratio") == 2.0  # (4000 + 1000) / 2500
    assert value(m, "compression_ratio") == 2.5
    assert value(m, "storage_by_tier", tier="GLACIER") == 1000
    assert value(m, "storage_capacity_bytes") == 10_000 and value(m, "storage_used_bytes") == 2_500
    assert value(m, "metadata_pool_in_use") == 3 and value(m, "metadata_pool_size") == 16


def test_bounded_label_caps_distinct_values() -> None:
    label = BoundedLabel(2)
    assert [label(v) for v in ("a", "b", "c", "a", None)] == ["a", "b", "other", "a", "other"]
    assert BoundedLabel(5)("x" * 65) == "other"
    assert ratio(5, 0) == 1.0


# -- request bookkeeping --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "bucket", "key", "query", "headers", "expected"),
    [
        ("GET", None, None, {}, {}, "ListBuckets"),
        ("GET", "b", None, {"list-type": "2"}, {}, "ListObjectsV2"),
        ("GET", "b", None, {}, {}, "ListObjects"),
        ("PUT", "b", "k", {}, {}, "PutObject"),
        ("PUT", "b", "k", {}, {"x-amz-copy-source": "/a/b"}, "CopyObject"),
        ("PUT", "b", "k", {"uploadId": "u", "partNumber": "1"}, {}, "UploadPart"),
        ("POST", "b", "k", {"uploads": ""}, {}, "CreateMultipartUpload"),
        ("GET", "b", "k", {"versionId": "v"}, {}, "GetObject"),
        ("HEAD", "b", "k", {}, {}, "HeadObject"),
        ("PUT", "b", None, {"acl": ""}, {}, "PutBucketAcl"),
        ("PUT", "b", "k", {"acl": ""}, {}, "PutObjectAcl"),
        ("OPTIONS", "b", "k", {}, {}, "CorsPreflight"),
        ("POST", "b", None, {}, {"content-type": "multipart/form-data; boundary=x"}, "PostObject"),
        ("PATCH", "b", "k", {}, {}, "Unsupported"),
        ("GET", "b", None, {"website": ""}, {}, "Unsupported"),
    ],
)
def test_operation_names(
    method: str, bucket: str | None, key: str | None, query: dict[str, str], headers: dict[str, str],
    expected: str,
) -> None:  # fmt: skip
    assert operation_name(method, bucket, key, query, headers) == expected


@pytest.mark.parametrize(
    ("method", "operation", "audited"),
    [
        ("PUT", "PutObject", True), ("DELETE", "DeleteObject", True), ("POST", "DeleteObjects", True),
        ("GET", "GetObject", True), ("HEAD", "HeadObject", False), ("GET", "ListObjectsV2", False),
        ("PUT", "Unknown", True),
    ],
)  # fmt: skip
def test_which_requests_are_audited(method: str, operation: str, audited: bool) -> None:
    assert _record(operation, method, 200).audited is audited


# -- audit log on a real SQLite store -------------------------------------------------------
class CountingStore(SqliteMetadataStore):
    """The real store, counting how many append_audit calls it served."""

    calls = 0

    async def append_audit(self, records: list[AuditRecord]) -> None:
        self.calls += 1
        await super().append_audit(records)


def _audit(i: int) -> AuditRecord:
    return AuditRecord(
        time=1700000000.0 + i, request_id=f"R{i}", user="alice", access_key="AK", action="PutObject",
        bucket="b", key=f"k{i}", version_id=None, ip="10.0.0.1", user_agent="ua", status=200,
    )  # fmt: skip


async def test_audit_log_batches_records_into_one_store_write(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "meta.sqlite")
    await store.open()
    metrics = Metrics()
    audit = AuditLog(store, metrics, batch=100, interval=0.05)
    runner = asyncio.ensure_future(audit.run())
    try:
        for i in range(40):
            audit.record(_audit(i))
        for _ in range(200):
            if value(metrics, "audit_records_total") == 40:
                break
            await asyncio.sleep(0.01)
        assert store.calls == 1
        rows = await store.read_audit(0, 100)
        assert [r.request_id for r in rows] == [f"R{i}" for i in range(40)]
        assert rows[0] == dataclasses.replace(_audit(0), seq=rows[0].seq)
        events = [e.body for e in await store.read_outbox(0, 100)]
        assert [e["requestId"] for e in events] == [f"R{i}" for i in range(40)]
        assert all(e["kind"] == "audit" and e["user"] == "alice" for e in events)
    finally:
        await audit.close()
        await runner
        await store.close()


async def test_audit_log_writes_what_is_queued_on_close(tmp_path: Path) -> None:
    store = SqliteMetadataStore(tmp_path / "meta.sqlite")
    await store.open()
    audit = AuditLog(store, Metrics(), interval=60.0)  # the timer alone would never fire
    runner = asyncio.ensure_future(audit.run())
    for i in range(3):
        audit.record(_audit(i))
    await audit.close()
    await runner
    assert len(await store.read_audit(0, 10)) == 3
    await store.close()


async def test_full_audit_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    store = SqliteMetadataStore(tmp_path / "meta.sqlite")
    await store.open()
    metrics = Metrics()
    audit = AuditLog(store, metrics, capacity=2)
    for i in range(5):
        audit.record(_audit(i))  # synchronous: never waits
    assert value(metrics, "audit_dropped_total") == 3
    assert value(metrics, "audit_queue_depth") == 2
    await audit.close()
    assert [r.request_id for r in await store.read_audit(0, 10)] == ["R0", "R1"]
    await store.close()


async def test_disabled_audit_log_records_nothing(tmp_path: Path) -> None:
    audit = AuditLog(SqliteMetadataStore(tmp_path / "unused.sqlite"), Metrics(), enabled=False)
    audit.finish(_record("PutObject", "PUT", 200))
    assert value(audit._metrics, "audit_queue_depth") == 0


async def test_version_1_database_migrates_to_the_audit_table(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(_SCHEMA_V1)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute("INSERT INTO buckets VALUES ('kept', 'root', 'us-east-1', 0)")
    conn.commit()
    conn.close()
    store = SqliteMetadataStore(path)
    await store.open()
    try:
        assert (await store.get_bucket("kept")) is not None
        await store.append_audit([_audit(1)])
        assert [r.key for r in await store.read_audit(0, 10)] == ["k1"]
        await store.ping()
        assert store.pool_usage() == PoolUsage(in_use=0, size=1, waiting=0)
    finally:
        await store.close()
