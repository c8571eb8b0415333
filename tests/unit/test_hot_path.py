"""The per-request fast paths keep their observable behaviour: request ids (unique, in the
documented format, also after a fork), the buffered access log (the same lines as the logging
path, every line written promptly, in order, at cleanup and at interpreter exit), the cached
date formats, the in-process cache holding decoded records, the cached metric series and
the cached SigV4 parsing."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from crypto.kek import WrappedKey
from dedup.manifest import Manifest
from dedup.pack import ChunkLocation
from gateway.cache import CachedMetadataStore, LocalCache
from gateway.config import LogConfig
from gateway.meta.models import Bucket, NewChunk, ObjectVersion, PackRecord, StagedData
from gateway.meta.sqlite import SqliteMetadataStore
from gateway.observability import logging as obslog
from gateway.observability.logging import (
    ACCESS_LOGGER,
    FLUSH_BYTES,
    FLUSH_DELAY,
    REDACTED,
    REQUEST_ID,
    attach_loop,
    configure_logging,
    detach_loop,
    log_access,
)
from gateway.observability.metrics import Metrics
from gateway.observability.record import RequestRecord, new_request_id
from gateway.s3.errors import S3Error
from gateway.s3.xml import http_date

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUEST_ID_FORMAT = re.compile(r"[0-9A-F]{16}")
FIELDS: dict[str, Any] = {
    "request_id": "0123456789ABCDEF", "method": "GET", "operation": "GetObject", "bucket": "photos",
    "key": "a b/ç\nd.jpg", "query": "versionId=3", "version_id": None, "status": 200, "error": None,
    "bytes_in": 0, "bytes_out": 4096, "duration_ms": 1.5, "remote_ip": "10.0.0.7",
    "user_agent": "aws-cli/2", "access_key_id": "AKIDEXAMPLE", "user": "alice",
}  # fmt: skip
SIG = "3f2c6f0a5b8d9e1c7a4b2d6e8f0a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a"


# -- request ids ----------------------------------------------------------------------------
def test_request_ids_are_unique_and_sixteen_upper_case_hex_digits() -> None:
    ids = [new_request_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert all(REQUEST_ID_FORMAT.fullmatch(i) for i in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_new_request_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave without pytest's cleanup
        try:
            os.write(write, " ".join(new_request_id() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    mine = [new_request_id() for _ in range(3)]
    assert len(child) == 3 and not set(child) & set(mine)


def test_each_record_gets_a_new_id() -> None:
    class Http(dict[str, Any]):
        method, remote, query_string = "GET", "127.0.0.1", ""
        headers: dict[str, str] = {}
        query: dict[str, str] = {}

    def begin_two() -> None:  # in a context of its own: begin sets context variables
        first, second = RequestRecord.begin(Http()), RequestRecord.begin(Http())  # type: ignore[arg-type]
        assert first.request_id != second.request_id
        assert REQUEST_ID.get() == second.request_id

    contextvars.copy_context().run(begin_two)
    assert REQUEST_ID.get() is None


# -- access lines ---------------------------------------------------------------------------
@pytest.fixture
def configured() -> Iterator[None]:
    """Leave the root logger and the installed handler as they were."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, obslog._handler
    yield
    root.handlers[:], level, obslog._handler = saved
    root.setLevel(level)


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def _without_time(line: str) -> dict[str, Any]:
    doc = json.loads(line)
    assert doc.pop("time").endswith("Z")
    return doc


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_the_direct_access_line_is_the_logging_paths_line(configured: None, fmt: str) -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format=fmt), out)
    fields = dict(FIELDS, query=f"X-Amz-Signature={SIG}", user_agent=f"AWS AKID:{SIG}")
    token = REQUEST_ID.set("FEEDFACE00000001")
    try:
        log_access(fields)  # direct: no LogRecord
        logging.getLogger(ACCESS_LOGGER).info("GET GetObject 200", extra={"fields": fields})
    finally:
        REQUEST_ID.reset(token)
    direct, through_logging = _lines(out)
    assert SIG not in out.getvalue() and REDACTED in direct
    if fmt == "json":
        assert _without_time(direct) == _without_time(through_logging)
    else:
        assert direct.split(" ", 1)[1] == through_logging.split(" ", 1)[1]


def test_access_lines_take_the_logging_path_when_another_handler_listens(configured: None) -> None:
    out = io.StringIO()
    configure_logging(LogConfig(), out)
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    extra = Collect()
    logging.getLogger().addHandler(extra)
    log_access(FIELDS)
    assert len(seen) == 1 and seen[0].name == ACCESS_LOGGER
    assert len(_lines(out)) == 1
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.WARNING)
    try:
        log_access(FIELDS)  # below the access logger's level: dropped on both paths
        logging.getLogger().removeHandler(extra)
        log_access(FIELDS)
    finally:
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.NOTSET)
    assert len(seen) == 1 and len(_lines(out)) == 1


async def test_buffered_lines_all_arrive_promptly_and_in_order(configured: None) -> None:
    out = io.StringIO()
    configure_logging(LogConfig(), out)
    attach_loop()
    try:
        for i in range(50):
            log_access(dict(FIELDS, request_id=f"{i:016X}"))
        assert out.getvalue() == ""  # buffered, not yet written
        await asyncio.sleep(FLUSH_DELAY * 4)
        assert [json.loads(line)["request_id"] for line in _lines(out)] == [f"{i:016X}" for i in range(50)]
        log_access(dict(FIELDS, request_id="A" * 16))
        logging.getLogger("strata.test").warning("breaker open")  # written at once, after it
        assert [json.loads(line)["message"] for line in _lines(out)[-2:]] == [
            "GET GetObject 200",
            "breaker open",
        ]
    finally:
        detach_loop()


async def test_a_full_buffer_and_other_threads_write_at_once(configured: None) -> None:
    out = io.StringIO()
    configure_logging(LogConfig(), out)
    attach_loop()
    try:
        big = dict(FIELDS, key="k" * 1024)
        logged = 0
        while not out.getvalue():  # no sleep: only the size limit can write
            log_access(big)
            logged += 1
        assert (logged - 1) * 1024 < FLUSH_BYTES <= logged * 1500
        assert len(_lines(out)) == logged
        log_access(big)  # buffered again
        thread = threading.Thread(target=log_access, args=(FIELDS,))
        thread.start()
        thread.join()
        # not the loop's thread: written at once, after the buffered line
        assert len(_lines(out)) == logged + 2 and json.loads(_lines(out)[-1])["key"] == FIELDS["key"]
    finally:
        detach_loop()


async def test_detaching_writes_what_is_buffered(configured: None) -> None:
    out = io.StringIO()
    configure_logging(LogConfig(), out)
    attach_loop()
    log_access(FIELDS)
    assert out.getvalue() == ""
    detach_loop(asyncio.get_running_loop())
    assert len(_lines(out)) == 1
    log_access(FIELDS)  # detached: written at once
    assert len(_lines(out)) == 2


def test_a_loop_closed_without_detaching_does_not_stall_the_next_one(configured: None) -> None:
    out = io.StringIO()
    configure_logging(LogConfig(), out)

    async def log_one() -> None:
        attach_loop()
        log_access(FIELDS)

    first = asyncio.new_event_loop()
    first.run_until_complete(log_one())  # its flush timer never fires: the loop closes first
    first.close()
    assert out.getvalue() == ""

    async def log_and_wait() -> int:
        await log_one()
        await asyncio.sleep(FLUSH_DELAY * 4)
        written = len(_lines(out))
        detach_loop()
        return written

    assert asyncio.run(log_and_wait()) == 2


def test_buffered_lines_are_written_at_interpreter_exit() -> None:
    """No detach, no flush: the lines still reach stderr (logging.shutdown at exit)."""
    code = """
import asyncio
from gateway.config import LogConfig
from gateway.observability.logging import attach_loop, configure_logging, log_access
configure_logging(LogConfig())
async def main():
    attach_loop()
    for i in range(200):
        log_access({"request_id": f"{i:016X}", "method": "PUT", "operation": "PutObject", "status": 200})
asyncio.run(main())
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    ids = [json.loads(line)["request_id"] for line in proc.stderr.splitlines()]
    assert ids == [f"{i:016X}" for i in range(200)]


# -- cached date formats --------------------------------------------------------------------
@pytest.mark.parametrize("ts", [0.0, 1700000000.0, 1700000000.999, 1700000001.0, 1700000001.5, 2e9 + 0.25])
def test_http_date_matches_formatdate_across_seconds(ts: float) -> None:
    assert http_date(ts) == formatdate(int(ts), usegmt=True)
    assert http_date(ts) == http_date(ts)  # cached: the same answer again


def test_http_date_changes_with_the_second() -> None:
    assert http_date(1700000000.999) == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert http_date(1700000001.0) == "Tue, 14 Nov 2023 22:13:21 GMT"


@pytest.mark.parametrize(
    "ts", [1700000000.0, 1700000000.1234, 1700000000.9995, 1700000059.999, 1700000060.001]
)
def test_log_timestamps_are_iso_utc_with_milliseconds(ts: float) -> None:
    expected = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert obslog._timestamp(ts) == expected


# -- the in-process cache holds decoded records ----------------------------------------------
STAGED = StagedData(
    [PackRecord("p1", WrappedKey("local:k", 1, b"w"), 100)],
    [NewChunk(b"\2" * 32, ChunkLocation("p1", 0, 80, 3, 0))],
)


def _version(etag: str) -> ObjectVersion:
    return ObjectVersion(
        "bkt", "k", "null", 3, etag, 2.5, Manifest((b"\2" * 32,), (3,)), "text/plain", {"cache-control": "x"},
        {"m": "1"}, {"algorithm": "CRC32", "value": "AAAAAA==", "type": "FULL_OBJECT"}, 0,
    )  # fmt: skip


async def test_local_cache_hits_return_the_stored_record_until_a_write(tmp_path: Path) -> None:
    inner = SqliteMetadataStore(tmp_path / "m.sqlite")
    await inner.open()
    try:
        await inner.create_bucket(Bucket("bkt", "root", "us-east-1", 0.0))
        cached = CachedMetadataStore(inner, LocalCache())
        await cached.put_object(_version("1" * 32), STAGED)
        first = await cached.get_object("bkt", "k")
        assert first == await inner.get_object("bkt", "k")
        assert await cached.get_object("bkt", "k") is first  # a hit: no decoding, no copy
        assert (await cached.get_bucket("bkt")) is (await cached.get_bucket("bkt"))
        await cached.put_object(_version("2" * 32), STAGED)  # invalidates
        second = await cached.get_object("bkt", "k")
        assert second is not None and second.etag == "2" * 32
        await cached.delete_object("bkt", "k")
        assert await cached.get_object("bkt", "k") is None
        assert await cached.get_bucket_config("bkt", "versioning") is None  # absence cached
        await cached.put_bucket_config("bkt", "versioning", "Enabled")
        assert await cached.get_bucket_config("bkt", "versioning") == "Enabled"
    finally:
        await inner.close()


# -- metrics ----------------------------------------------------------------------------------
def test_cached_metric_series_count_every_request() -> None:
    m = Metrics()
    for status in (200, 200, 404, 200):
        rec = RequestRecord("ID", "GET", 0.0, 0.0, None, None, operation="GetObject", status=status)
        rec.duration = 0.01
        m.observe_request(rec)
    assert m.s3_requests.labels("GetObject", "200")._value.get() == 3
    assert m.s3_requests.labels("GetObject", "404")._value.get() == 1
    assert m.s3_duration.labels("GetObject")._sum.get() == pytest.approx(0.04)


# -- SigV4 caches -----------------------------------------------------------------------------
def test_cached_credential_parsing_still_rejects_bad_values_each_time() -> None:
    from gateway.s3.sigv4 import _malformed, _parse_credential

    good = _parse_credential("AK/20261124/us-east-1/s3/aws4_request", _malformed)
    assert good is _parse_credential("AK/20261124/us-east-1/s3/aws4_request", _malformed)
    assert good.scope == "20261124/us-east-1/s3/aws4_request"
    for _ in range(2):
        with pytest.raises(S3Error) as bad:
            _parse_credential("AK/20261124/us-east-1/ec2/aws4_request", _malformed)
        assert bad.value.code == "AuthorizationHeaderMalformed" and "incorrect service" in bad.value.message


def test_keyed_hmac_copies_equal_a_fresh_hmac() -> None:
    import hashlib
    import hmac

    from gateway.s3.sigv4 import _hmac_hex

    key = b"k" * 32
    for msg in ("one", "two", "one"):
        assert _hmac_hex(key, msg) == hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()
