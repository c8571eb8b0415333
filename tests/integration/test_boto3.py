"""boto3 against a real Strata server, over http and https.

Over https botocore sends PutObject/UploadPart as ``aws-chunked`` with an unsigned trailing
checksum (STREAMING-UNSIGNED-PAYLOAD-TRAILER); over http it sends a signed payload with an
``x-amz-checksum-*`` header. Both paths are exercised and checked byte for byte, including
the "known ways other servers broke" from S3-CLIENTS.md: framing stored in the object,
``Content-Encoding: aws-chunked`` echoed back, CRC64NVME rejected, a full-object checksum
on a ranged GET, and a wrong multipart ETag.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import random
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from support import rawhttp
from support.awschunked import (
    EMPTY_SHA256,
    checksum_b64,
    object_path,
    presign_url,
    sign_request,
    utc_timestamp,
)
from support.s3 import (
    MiB,
    delete_bucket_recursive,
    error_code,
    http_status,
    make_client,
    md5_hex,
    multipart_etag,
    random_bytes,
    unique_bucket,
)
from support.server import StrataServer

TEXT = (
    "Strata round-trip text. Ünïcödé ✓ — lines\r\nwith CRLF\nand LF, tabs\tand NULs \x00 too.\n" * 40
).encode("utf-8")


def payload(kind: str, size: int, seed: int = 1) -> bytes:
    if kind == "random":
        return random_bytes(size, seed)
    reps = size // len(TEXT) + 1
    return (TEXT * reps)[:size]


SIZES = [0, 1, 5 * MiB + 1]
KINDS = ["random", "text"]


@pytest.fixture
def capture_requests(s3_tls: Any) -> Iterator[list[Any]]:
    """Record the prepared requests botocore sends on the https client."""
    seen: list[Any] = []

    def handler(request: Any, **_: Any) -> None:
        seen.append(request)

    s3_tls.meta.events.register("before-send.s3", handler)
    yield seen
    s3_tls.meta.events.unregister("before-send.s3", handler)


def get_bytes(client: Any, bucket: str, key: str, **kwargs: Any) -> tuple[bytes, dict[str, Any]]:
    resp = client.get_object(Bucket=bucket, Key=key, **kwargs)
    return resp["Body"].read(), resp


def response_headers(resp: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in resp["ResponseMetadata"]["HTTPHeaders"].items()}


# ---------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", SIZES)
def test_roundtrip_http(s3: Any, bucket: str, size: int, kind: str) -> None:
    data = payload(kind, size)
    key = f"rt/{kind}-{size}"
    put = s3.put_object(Bucket=bucket, Key=key, Body=data)
    assert put["ETag"] == f'"{md5_hex(data)}"'
    body, resp = get_bytes(s3, bucket, key)
    assert len(body) == size
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    assert resp["ContentLength"] == size
    assert resp["ETag"] == put["ETag"]
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == size
    assert head["ETag"] == put["ETag"]


def test_large_put_body_read_by_a_thread_then_the_client_reconnects(s3: Any, bucket: str) -> None:
    """boto3 over HTTP sends a plain body: at 8 MiB and more the gateway reads it from the
    socket by a thread (gateway/socket_recv.py), answers with Connection: close, and the
    same client goes on with a new connection."""
    data = payload("random", 9 * MiB + 1)
    put = s3.put_object(Bucket=bucket, Key="thread-read", Body=data)
    assert response_headers(put).get("connection") == "close"
    assert put["ETag"] == f'"{md5_hex(data)}"'
    body, _ = get_bytes(s3, bucket, "thread-read")
    assert body == data


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", SIZES)
def test_roundtrip_https_aws_chunked(
    s3_tls: Any, tls_bucket: str, capture_requests: list[Any], size: int, kind: str
) -> None:
    data = payload(kind, size, seed=size + 7)
    key = f"rt/{kind}-{size}"
    put = s3_tls.put_object(Bucket=tls_bucket, Key=key, Body=data)
    sent = [r for r in capture_requests if r.method == "PUT" and r.url.endswith(urllib.parse.quote(key))]
    assert sent, "PutObject request was not captured"
    headers = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in sent[-1].headers.items()}
    # Make sure this test really exercised aws-chunked with a trailer.
    assert "aws-chunked" in headers.get("content-encoding", "")
    assert headers.get("x-amz-content-sha256") == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert headers.get("x-amz-trailer") == "x-amz-checksum-crc32"
    assert "content-length" not in headers
    assert headers.get("x-amz-decoded-content-length") == str(size)

    assert put["ETag"] == f'"{md5_hex(data)}"'
    body, resp = get_bytes(s3_tls, tls_bucket, key)
    assert len(body) == size, "object length differs: aws-chunked framing stored?"
    assert body == data
    assert b"x-amz-checksum-crc32:" not in body
    # aws-chunked was the only encoding sent: nothing may come back (not even an empty header)
    assert "content-encoding" not in response_headers(resp), response_headers(resp)
    head = s3_tls.head_object(Bucket=tls_bucket, Key=key)
    assert head["ContentLength"] == size
    assert "content-encoding" not in response_headers(head), response_headers(head)


def test_https_content_encoding_preserved_without_aws_chunked(s3_tls: Any, tls_bucket: str) -> None:
    """botocore sends ``Content-Encoding: gzip,aws-chunked``; only ``gzip`` may be stored."""
    data = random_bytes(100_000, 3)
    s3_tls.put_object(Bucket=tls_bucket, Key="enc", Body=data, ContentEncoding="gzip")
    head = s3_tls.head_object(Bucket=tls_bucket, Key="enc")
    assert head.get("ContentEncoding") == "gzip"
    body, resp = get_bytes(s3_tls, tls_bucket, "enc")
    assert resp.get("ContentEncoding") == "gzip"
    assert body == data


ALGORITHMS = ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("transport", ["http", "https"])
def test_checksum_algorithms(
    s3: Any, s3_tls: Any, bucket: str, tls_bucket: str, transport: str, algorithm: str
) -> None:
    client, bkt = (s3, bucket) if transport == "http" else (s3_tls, tls_bucket)
    data = random_bytes(3 * MiB + 17, seed=len(algorithm))
    key = f"ck/{algorithm}"
    client.put_object(Bucket=bkt, Key=key, Body=data, ChecksumAlgorithm=algorithm)
    expected = checksum_b64(algorithm.lower(), data)

    # botocore validates the returned checksum itself (FlexibleChecksumError on mismatch).
    body, resp = get_bytes(client, bkt, key, ChecksumMode="ENABLED")
    assert body == data
    assert resp.get(f"Checksum{algorithm}") == expected, (
        f"full-object GET with checksum mode must return x-amz-checksum-{algorithm.lower()}; "
        f"got headers {response_headers(resp)}"
    )

    # A ranged GET must never carry the full-object checksum.
    part, ranged = get_bytes(client, bkt, key, Range="bytes=100-1099", ChecksumMode="ENABLED")
    assert part == data[100:1100]
    leaked = [h for h in response_headers(ranged) if h.startswith("x-amz-checksum-")]
    assert not leaked, f"ranged GET returned full-object checksum headers {leaked}"


def test_default_checksum_returned_on_full_get_only(s3: Any, bucket: str) -> None:
    data = random_bytes(200_000, 11)
    s3.put_object(Bucket=bucket, Key="k", Body=data)  # botocore adds CRC32 by default
    body, resp = get_bytes(s3, bucket, "k", ChecksumMode="ENABLED")
    assert body == data
    assert resp.get("ChecksumCRC32") == checksum_b64("crc32", data)
    for rng in ("bytes=0-0", "bytes=-10", "bytes=5-"):
        _, ranged = get_bytes(s3, bucket, "k", Range=rng, ChecksumMode="ENABLED")
        assert not [h for h in response_headers(ranged) if h.startswith("x-amz-checksum-")]


def test_file_object_body(s3: Any, bucket: str) -> None:
    data = random_bytes(2 * MiB + 3, 5)
    s3.put_object(Bucket=bucket, Key="fileobj", Body=io.BytesIO(data))
    assert get_bytes(s3, bucket, "fileobj")[0] == data


# ---------------------------------------------------------------------------------------
# ranges
# ---------------------------------------------------------------------------------------
RANGE_SIZE = 10 * MiB + 12345


@pytest.fixture(scope="module")
def ranged_object(strata: StrataServer) -> Iterator[tuple[Any, str, str, bytes]]:
    client = make_client(strata)
    bkt = unique_bucket("rng")
    client.create_bucket(Bucket=bkt)
    data = random_bytes(RANGE_SIZE, 99)
    client.put_object(Bucket=bkt, Key="ten", Body=data)
    yield client, bkt, "ten", data
    delete_bucket_recursive(client, bkt)


def _check_range(client: Any, bkt: str, key: str, data: bytes, spec: str, start: int, end: int) -> None:
    resp = client.get_object(Bucket=bkt, Key=key, Range=spec)
    body = resp["Body"].read()
    assert http_status(resp) == 206, spec
    assert resp["ContentLength"] == end - start + 1, spec
    assert resp["ContentRange"] == f"bytes {start}-{end}/{len(data)}", spec
    assert body == data[start : end + 1], spec


def test_range_basic(ranged_object: tuple[Any, str, str, bytes]) -> None:
    client, bkt, key, data = ranged_object
    n = len(data)
    cases = [
        ("bytes=0-0", 0, 0),
        ("bytes=0-99", 0, 99),
        ("bytes=1000-1999", 1000, 1999),
        ("bytes=-1", n - 1, n - 1),
        ("bytes=-500", n - 500, n - 1),
        (f"bytes=-{n + 1000}", 0, n - 1),  # suffix longer than the object: whole object
        ("bytes=123456-", 123456, n - 1),
        (f"bytes={n - 1}-", n - 1, n - 1),
        (f"bytes={n - 10}-{n + 5000}", n - 10, n - 1),  # end past EOF is clamped
        (f"bytes=0-{n - 1}", 0, n - 1),
    ]
    for spec, start, end in cases:
        _check_range(client, bkt, key, data, spec, start, end)


def test_range_random_across_chunk_boundaries(ranged_object: tuple[Any, str, str, bytes]) -> None:
    client, bkt, key, data = ranged_object
    n = len(data)
    rng = random.Random(2024)
    # Points near power-of-two and MiB multiples, where chunk/pack boundaries tend to be.
    hot = [k * MiB + d for k in range(0, 11) for d in (-1, 0, 1)] + [256 * 1024 * k for k in range(1, 40)]
    hot = [h for h in hot if 0 <= h < n]
    for _ in range(60):
        if rng.random() < 0.5:
            start = rng.choice(hot)
            end = min(n - 1, start + rng.choice([0, 1, 2, 4095, 65536, 1 * MiB, 3 * MiB + 7]))
        else:
            start = rng.randrange(n)
            end = min(n - 1, start + rng.randrange(1, 4 * MiB))
        _check_range(client, bkt, key, data, f"bytes={start}-{end}", start, end)
    for _ in range(10):
        k = rng.randrange(1, 5 * MiB)
        _check_range(client, bkt, key, data, f"bytes=-{k}", n - k, n - 1)
        s = rng.randrange(n)
        _check_range(client, bkt, key, data, f"bytes={s}-", s, n - 1)


@pytest.mark.parametrize("spec", ["bytes={n}-", "bytes={n}-{m}", "bytes={m}-"])
def test_range_beyond_end_is_416(ranged_object: tuple[Any, str, str, bytes], spec: str) -> None:
    client, bkt, key, data = ranged_object
    n = len(data)
    with pytest.raises(ClientError) as exc:
        client.get_object(Bucket=bkt, Key=key, Range=spec.format(n=n, m=n + 100))
    assert http_status(exc.value) == 416
    assert error_code(exc.value) == "InvalidRange"


# ---------------------------------------------------------------------------------------
# conditional requests and HEAD
# ---------------------------------------------------------------------------------------
def _status_of(call: Any, **kwargs: Any) -> int:
    try:
        resp = call(**kwargs)
    except ClientError as e:
        return http_status(e)
    if "Body" in resp:
        resp["Body"].read()
    return http_status(resp)


def test_conditional_get_and_head(s3: Any, bucket: str) -> None:
    data = b"conditional body"
    etag = s3.put_object(Bucket=bucket, Key="c", Body=data)["ETag"]
    lm: datetime.datetime = s3.head_object(Bucket=bucket, Key="c")["LastModified"]
    past = lm - datetime.timedelta(days=1)
    future = lm + datetime.timedelta(days=1)
    other = '"0123456789abcdef0123456789abcdef"'
    for call in (s3.get_object, s3.head_object):
        k = {"Bucket": bucket, "Key": "c"}
        assert _status_of(call, **k, IfMatch=etag) == 200
        assert _status_of(call, **k, IfMatch=other) == 412
        assert _status_of(call, **k, IfNoneMatch=etag) == 304
        assert _status_of(call, **k, IfNoneMatch=other) == 200
        assert _status_of(call, **k, IfModifiedSince=past) == 200
        assert _status_of(call, **k, IfModifiedSince=lm) == 304
        assert _status_of(call, **k, IfModifiedSince=future) == 304
        assert _status_of(call, **k, IfUnmodifiedSince=past) == 412
        assert _status_of(call, **k, IfUnmodifiedSince=future) == 200
        assert _status_of(call, **k, IfUnmodifiedSince=lm) == 200
        # S3 precedence rules (RFC 7232): If-Match true wins over If-Unmodified-Since false,
        # If-None-Match false wins over If-Modified-Since true.
        assert _status_of(call, **k, IfMatch=etag, IfUnmodifiedSince=past) == 200
        assert _status_of(call, **k, IfNoneMatch=etag, IfModifiedSince=past) == 304
        assert _status_of(call, **k, IfMatch=etag.strip('"')) == 200  # unquoted ETag is accepted
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfMatch=other)
    assert error_code(exc.value) == "PreconditionFailed"
    # If-Match with a matching ETag plus a Range: 206 (what awscli's ranged download does).
    resp = s3.get_object(Bucket=bucket, Key="c", IfMatch=etag, Range="bytes=2-5")
    assert http_status(resp) == 206
    assert resp["Body"].read() == data[2:6]


def test_head_object_fields(s3: Any, bucket: str) -> None:
    data = random_bytes(12345, 8)
    put = s3.put_object(Bucket=bucket, Key="h", Body=data, ContentType="application/x-test")
    head = s3.head_object(Bucket=bucket, Key="h")
    assert head["ContentLength"] == len(data)
    assert head["ETag"] == put["ETag"] == f'"{md5_hex(data)}"'
    assert head["ContentType"] == "application/x-test"
    assert isinstance(head["LastModified"], datetime.datetime)
    now = datetime.datetime.now(datetime.UTC)
    assert abs((now - head["LastModified"]).total_seconds()) < 300
    assert response_headers(head).get("accept-ranges") == "bytes"
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="missing")
    assert http_status(exc.value) == 404


def test_metadata_and_standard_headers_roundtrip(s3: Any, s3_tls: Any, bucket: str, tls_bucket: str) -> None:
    expires = datetime.datetime(2031, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    meta = {"alpha": "one", "with-dash": "Value With  Spaces", "num": "42"}
    for client, bkt in ((s3, bucket), (s3_tls, tls_bucket)):
        client.put_object(
            Bucket=bkt,
            Key="m",
            Body=b"meta body",
            Metadata=meta,
            ContentType="text/plain; charset=utf-8",
            ContentDisposition='attachment; filename="report.txt"',
            ContentEncoding="identity",
            CacheControl="max-age=3600, public",
            ContentLanguage="de-CH",
            Expires=expires,
        )
        for resp in (client.head_object(Bucket=bkt, Key="m"), client.get_object(Bucket=bkt, Key="m")):
            assert resp["Metadata"] == meta
            assert resp["ContentType"] == "text/plain; charset=utf-8"
            assert resp["ContentDisposition"] == 'attachment; filename="report.txt"'
            assert resp["ContentEncoding"] == "identity"
            assert resp["CacheControl"] == "max-age=3600, public"
            assert resp["ContentLanguage"] == "de-CH"
            raw_expires = response_headers(resp).get("expires", "")
            assert raw_expires == "Thu, 02 Jan 2031 03:04:05 GMT", raw_expires


def test_metadata_keys_are_lowercased(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="mk", Body=b"x", Metadata={"Mixed-Case": "V"})
    assert s3.head_object(Bucket=bucket, Key="mk")["Metadata"] == {"mixed-case": "V"}


def test_overwrite_replaces_object_and_metadata(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="o", Body=b"first", Metadata={"v": "1"})
    s3.put_object(Bucket=bucket, Key="o", Body=b"second!", Metadata={"w": "2"})
    body, resp = get_bytes(s3, bucket, "o")
    assert body == b"second!"
    assert resp["Metadata"] == {"w": "2"}


# ---------------------------------------------------------------------------------------
# listing
# ---------------------------------------------------------------------------------------
LIST_KEYS = sorted(
    [f"a/{i:02d}.txt" for i in range(8)]
    + [f"a/b/{i}.bin" for i in range(5)]
    + [f"a/c/d/{i}" for i in range(3)]
    + [f"b/{i}" for i in range(6)]
    + ["top1", "top2", "a.txt", "a-b/x", "c/x/y/z/1", "c/x/2", "c/3", "z/"]
)


@pytest.fixture(scope="module")
def listing_bucket(strata: StrataServer) -> Iterator[tuple[Any, str]]:
    client = make_client(strata)
    bkt = unique_bucket("lst")
    client.create_bucket(Bucket=bkt)
    for key in LIST_KEYS:
        client.put_object(Bucket=bkt, Key=key, Body=key.encode())
    yield client, bkt
    delete_bucket_recursive(client, bkt)


def expected_entries(
    keys: list[str], prefix: str = "", delimiter: str | None = None, after: str | None = None
) -> tuple[list[str], list[str]]:
    contents: list[str] = []
    prefixes: list[str] = []
    for k in sorted(keys):
        if not k.startswith(prefix) or (after is not None and k <= after):
            continue
        rest = k[len(prefix) :]
        if delimiter and delimiter in rest:
            cp = prefix + rest[: rest.index(delimiter) + len(delimiter)]
            if cp not in prefixes:
                prefixes.append(cp)
        else:
            contents.append(k)
    return contents, prefixes


LIST_CASES = [("", None), ("", "/"), ("a/", "/"), ("a/", None), ("c/", "/"), ("a", "/"), ("nothing/", "/")]


def test_list_v2_full(listing_bucket: tuple[Any, str]) -> None:
    client, bkt = listing_bucket
    resp = client.list_objects_v2(Bucket=bkt)
    assert [o["Key"] for o in resp["Contents"]] == LIST_KEYS
    assert resp["KeyCount"] == len(LIST_KEYS)
    assert resp["IsTruncated"] is False
    by_key = {o["Key"]: o for o in resp["Contents"]}
    assert by_key["top1"]["Size"] == 4
    assert by_key["top1"]["ETag"] == f'"{md5_hex(b"top1")}"'


@pytest.mark.parametrize(("prefix", "delimiter"), LIST_CASES)
def test_list_v2_paging(listing_bucket: tuple[Any, str], prefix: str, delimiter: str | None) -> None:
    client, bkt = listing_bucket
    exp_contents, exp_prefixes = expected_entries(LIST_KEYS, prefix, delimiter)
    expected = sorted(exp_contents + exp_prefixes)
    for max_keys in range(1, 8):
        got: list[str] = []
        token = None
        for _page_no in range(200):
            kwargs: dict[str, Any] = {"Bucket": bkt, "Prefix": prefix, "MaxKeys": max_keys}
            if delimiter:
                kwargs["Delimiter"] = delimiter
            if token:
                kwargs["ContinuationToken"] = token
            page = client.list_objects_v2(**kwargs)
            contents = [o["Key"] for o in page.get("Contents", [])]
            prefixes = [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            assert page["KeyCount"] == len(contents) + len(prefixes)
            assert len(contents) + len(prefixes) <= max_keys
            got.extend(sorted(contents + prefixes))
            if not page["IsTruncated"]:
                assert "NextContinuationToken" not in page
                break
            token = page["NextContinuationToken"]
            assert token
        else:
            pytest.fail("listing never finished")
        assert got == expected, f"prefix={prefix!r} delimiter={delimiter!r} max_keys={max_keys}"


def test_list_v2_common_prefixes(listing_bucket: tuple[Any, str]) -> None:
    client, bkt = listing_bucket
    resp = client.list_objects_v2(Bucket=bkt, Delimiter="/")
    assert [p["Prefix"] for p in resp["CommonPrefixes"]] == ["a-b/", "a/", "b/", "c/", "z/"]
    assert [o["Key"] for o in resp["Contents"]] == ["a.txt", "top1", "top2"]
    resp = client.list_objects_v2(Bucket=bkt, Prefix="a/", Delimiter="/")
    assert [p["Prefix"] for p in resp["CommonPrefixes"]] == ["a/b/", "a/c/"]
    assert [o["Key"] for o in resp["Contents"]] == [f"a/{i:02d}.txt" for i in range(8)]
    assert resp["Prefix"] == "a/"
    assert resp["Delimiter"] == "/"


def test_list_v2_start_after_and_max_keys_zero(listing_bucket: tuple[Any, str]) -> None:
    client, bkt = listing_bucket
    resp = client.list_objects_v2(Bucket=bkt, StartAfter="a/05.txt")
    assert [o["Key"] for o in resp["Contents"]] == [k for k in LIST_KEYS if k > "a/05.txt"]
    resp = client.list_objects_v2(Bucket=bkt, StartAfter="b/", Prefix="b/")
    assert [o["Key"] for o in resp["Contents"]] == [f"b/{i}" for i in range(6)]
    # start-after then paging
    got: list[str] = []
    kwargs: dict[str, Any] = {"Bucket": bkt, "StartAfter": "b/2", "MaxKeys": 2}
    while True:
        page = client.list_objects_v2(**kwargs)
        got += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        kwargs = {
            "Bucket": bkt,
            "MaxKeys": 2,
            "ContinuationToken": page["NextContinuationToken"],
            "StartAfter": "b/2",
        }
    assert got == [k for k in LIST_KEYS if k > "b/2"]
    resp = client.list_objects_v2(Bucket=bkt, MaxKeys=0)
    assert resp.get("Contents", []) == []
    assert resp["KeyCount"] == 0


@pytest.mark.parametrize(("prefix", "delimiter"), LIST_CASES)
def test_list_v1_paging(listing_bucket: tuple[Any, str], prefix: str, delimiter: str | None) -> None:
    client, bkt = listing_bucket
    exp_contents, exp_prefixes = expected_entries(LIST_KEYS, prefix, delimiter)
    expected = sorted(exp_contents + exp_prefixes)
    for max_keys in range(1, 8):
        got: list[str] = []
        marker = ""
        for _page_no in range(200):
            kwargs: dict[str, Any] = {"Bucket": bkt, "Prefix": prefix, "MaxKeys": max_keys, "Marker": marker}
            if delimiter:
                kwargs["Delimiter"] = delimiter
            page = client.list_objects(**kwargs)
            contents = [o["Key"] for o in page.get("Contents", [])]
            prefixes = [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            assert len(contents) + len(prefixes) <= max_keys
            entries = sorted(contents + prefixes)
            got.extend(entries)
            if not page["IsTruncated"]:
                break
            if delimiter:
                assert page.get("NextMarker"), "V1 with a delimiter must return NextMarker when truncated"
                assert page["NextMarker"] == entries[-1]
            marker = page.get("NextMarker") or entries[-1]
        else:
            pytest.fail("listing never finished")
        assert got == expected, f"prefix={prefix!r} delimiter={delimiter!r} max_keys={max_keys}"


def test_list_v1_marker(listing_bucket: tuple[Any, str]) -> None:
    client, bkt = listing_bucket
    resp = client.list_objects(Bucket=bkt, Marker="b/3")
    assert [o["Key"] for o in resp["Contents"]] == [k for k in LIST_KEYS if k > "b/3"]
    assert resp["Marker"] == "b/3"


ODD_KEYS = [
    "enc/hello world.txt",
    "enc/ünïcødé/ß.bin",
    "enc/a+b=c&d.txt",
    "enc/<tag>&'quote\".txt",
    "enc/percent%20literal",
    "enc/日本語/ファイル",
    "enc/tab\there",
    "enc/cr\rkey",
    "ctl/ctrl\x01char",  # not representable in XML 1.0 without encoding-type=url
]


def _signed_get(server: StrataServer, path_and_query: str) -> rawhttp.RawResponse:
    url = f"http://127.0.0.1:{server.port}{path_and_query}"
    req = sign_request("GET", url, access_key=server.access_key, secret_key=server.secret_key)
    return rawhttp.request("127.0.0.1", server.port, "GET", path_and_query, req.headers)


def _q(params: dict[str, str]) -> str:
    return "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in params.items()
    )


def test_list_encoding_type_url(strata: StrataServer, s3: Any, bucket: str) -> None:
    for key in ODD_KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    # boto3 asks for encoding-type=url itself and decodes the answer.
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(listed) == sorted(ODD_KEYS)
    listed_v1 = [o["Key"] for o in s3.list_objects(Bucket=bucket)["Contents"]]
    assert sorted(listed_v1) == sorted(ODD_KEYS)
    for key in ODD_KEYS:
        assert get_bytes(s3, bucket, key)[0] == key.encode()

    # Raw: every key (and the echoed prefix) must be %-encoded, no raw space or non-ASCII.
    resp = _signed_get(strata, f"/{bucket}?" + _q({"encoding-type": "url", "list-type": "2"}))
    assert resp.status == 200, resp.describe()
    root = ET.fromstring(resp.body)
    assert rawhttp.find_text(root, "EncodingType") == "url"
    raw_keys = [rawhttp.find_text(c, "Key") or "" for c in rawhttp.find_all(root, "Contents")]
    for raw in raw_keys:
        assert all(33 <= ord(ch) < 127 for ch in raw), f"key not url-encoded: {raw!r}"
    assert sorted(urllib.parse.unquote_plus(k) for k in raw_keys) == sorted(ODD_KEYS)

    # Without encoding-type the XML must still be well-formed and carry the exact keys
    # (for keys XML 1.0 can carry at all).
    resp = _signed_get(strata, f"/{bucket}?" + _q({"list-type": "2", "prefix": "enc/"}))
    assert resp.status == 200, resp.describe()
    root = ET.fromstring(resp.body)
    plain = [
        (rawhttp.find_text(c, "Key") or "").replace("\r", "\n") for c in rawhttp.find_all(root, "Contents")
    ]
    # A raw CR is normalised to LF by XML parsers (an escaped &#13; is not): compare modulo that.
    expect_plain = [k.replace("\r", "\n") for k in ODD_KEYS if k.startswith("enc/")]
    assert sorted(plain) == sorted(expect_plain)


AWKWARD_KEYS = [
    "dots/../x",
    "dots/./y",
    "dots//double",
    "/leading",
    "trailing/",
    "a%2Fb",
    "semi;colon",
    "q?mark",
    "hash#tag",
    "sp ace",
    "..",
    ".",
    "~tilde",
    "x" * 1024,
]


def test_awkward_keys_roundtrip(s3: Any, bucket: str) -> None:
    """Keys are opaque: no path normalisation of dot segments, double slashes or escapes."""
    for key in AWKWARD_KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    for key in AWKWARD_KEYS:
        assert get_bytes(s3, bucket, key)[0] == key.encode(), key
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == sorted(AWKWARD_KEYS)


def test_key_with_newline(s3: Any, bucket: str) -> None:
    """Keys may contain LF (any UTF-8); the router must not stop at a newline."""
    key = "nl/line one\nline two"
    s3.put_object(Bucket=bucket, Key=key, Body=b"nl")
    assert get_bytes(s3, bucket, key)[0] == b"nl"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="nl/")["Contents"]] == [key]
    s3.delete_object(Bucket=bucket, Key=key)


def test_list_encoding_type_url_common_prefixes(strata: StrataServer, s3: Any, bucket: str) -> None:
    keys = ["dir one/a", "dir one/b", "dïr/c", "plain"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    resp = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert sorted(p["Prefix"] for p in resp["CommonPrefixes"]) == ["dir one/", "dïr/"]
    raw = _signed_get(
        strata, f"/{bucket}?" + _q({"delimiter": "/", "encoding-type": "url", "list-type": "2"})
    )
    root = ET.fromstring(raw.body)
    cps = [rawhttp.find_text(c, "Prefix") or "" for c in rawhttp.find_all(root, "CommonPrefixes")]
    assert sorted(urllib.parse.unquote_plus(p) for p in cps) == ["dir one/", "dïr/"]
    assert all(" " not in p and p.isascii() for p in cps), cps


# ---------------------------------------------------------------------------------------
# multipart
# ---------------------------------------------------------------------------------------
def test_multipart_upload(s3: Any, bucket: str) -> None:
    parts = [random_bytes(5 * MiB, 1), random_bytes(5 * MiB, 2), random_bytes(1 * MiB, 3)]
    up = s3.create_multipart_upload(
        Bucket=bucket, Key="mp", ContentType="application/x-mp", Metadata={"k": "v"}
    )
    uid = up["UploadId"]
    etags = []
    for i, data in enumerate(parts, start=1):
        r = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=i, Body=data)
        assert r["ETag"] == f'"{md5_hex(data)}"'
        etags.append(r["ETag"])
    listed = s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)
    assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2, 3]
    assert [p["Size"] for p in listed["Parts"]] == [len(p) for p in parts]
    assert [p["ETag"] for p in listed["Parts"]] == etags
    # not visible before Complete
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="mp")
    assert http_status(exc.value) == 404
    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="mp",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": i, "ETag": e} for i, e in enumerate(etags, start=1)]},
    )
    expected_etag = multipart_etag(parts)
    assert done["ETag"] == expected_etag
    body, resp = get_bytes(s3, bucket, "mp")
    assert resp["ETag"] == expected_etag
    assert resp["ContentLength"] == sum(len(p) for p in parts)
    assert resp["ContentType"] == "application/x-mp"
    assert resp["Metadata"] == {"k": "v"}
    assert hashlib.sha256(body).digest() == hashlib.sha256(b"".join(parts)).digest()
    # a range across the part boundary
    r = s3.get_object(Bucket=bucket, Key="mp", Range=f"bytes={5 * MiB - 10}-{5 * MiB + 9}")
    assert r["Body"].read() == (parts[0] + parts[1])[5 * MiB - 10 : 5 * MiB + 10]
    # the upload is gone after Complete
    with pytest.raises(ClientError) as exc:
        s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)
    assert error_code(exc.value) == "NoSuchUpload"


def test_list_parts_paging(s3: Any, bucket: str) -> None:
    uid = s3.create_multipart_upload(Bucket=bucket, Key="lp")["UploadId"]
    datas = [random_bytes(100_000 + i, 700 + i) for i in range(5)]
    for i, d in enumerate(datas, start=1):
        s3.upload_part(Bucket=bucket, Key="lp", UploadId=uid, PartNumber=i, Body=d)
    s3.upload_part(Bucket=bucket, Key="lp", UploadId=uid, PartNumber=3, Body=b"replaced part 3")
    seen: list[tuple[int, int, str]] = []
    marker = 0
    for _ in range(10):
        page = s3.list_parts(Bucket=bucket, Key="lp", UploadId=uid, MaxParts=2, PartNumberMarker=marker)
        seen += [(p["PartNumber"], p["Size"], p["ETag"]) for p in page.get("Parts", [])]
        assert len(page.get("Parts", [])) <= 2
        if not page["IsTruncated"]:
            break
        marker = page["NextPartNumberMarker"]
    sizes = [len(d) for d in datas]
    sizes[2] = len(b"replaced part 3")
    assert [(n, sz) for n, sz, _ in seen] == list(zip(range(1, 6), sizes, strict=True))
    assert seen[2][2] == f'"{md5_hex(b"replaced part 3")}"'
    s3.abort_multipart_upload(Bucket=bucket, Key="lp", UploadId=uid)


def test_multipart_abort(s3: Any, bucket: str) -> None:
    uid = s3.create_multipart_upload(Bucket=bucket, Key="ab")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="ab", UploadId=uid, PartNumber=1, Body=random_bytes(MiB, 4))
    s3.abort_multipart_upload(Bucket=bucket, Key="ab", UploadId=uid)
    with pytest.raises(ClientError) as exc:
        s3.list_parts(Bucket=bucket, Key="ab", UploadId=uid)
    assert error_code(exc.value) == "NoSuchUpload"
    assert http_status(exc.value) == 404
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="ab", UploadId=uid, PartNumber=2, Body=b"x")
    assert error_code(exc.value) == "NoSuchUpload"
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="ab",
            UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"x"'}]},
        )
    assert error_code(exc.value) == "NoSuchUpload"
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="ab")
    assert http_status(exc.value) == 404


def test_multipart_errors(s3: Any, bucket: str) -> None:
    uid = s3.create_multipart_upload(Bucket=bucket, Key="bad")["UploadId"]
    datas = [
        random_bytes(5 * MiB, 10),
        random_bytes(5 * MiB, 11),
        random_bytes(MiB, 12),
        random_bytes(MiB, 13),
    ]
    etags = [
        s3.upload_part(Bucket=bucket, Key="bad", UploadId=uid, PartNumber=i, Body=d)["ETag"]
        for i, d in enumerate(datas, start=1)
    ]

    def complete(numbers: list[int], etag_override: str | None = None) -> dict[str, Any]:
        parts = [{"PartNumber": n, "ETag": etag_override or etags[n - 1]} for n in numbers]
        return s3.complete_multipart_upload(
            Bucket=bucket, Key="bad", UploadId=uid, MultipartUpload={"Parts": parts}
        )

    cases = [
        ([3, 4], None, "EntityTooSmall"),  # part 3 (1 MiB) is not the last part
        ([1], '"00000000000000000000000000000000"', "InvalidPart"),
        ([1, 5], None, "InvalidPart"),  # part 5 was never uploaded
        ([2, 1, 3], None, "InvalidPartOrder"),
    ]
    for numbers, override, code in cases:
        if numbers == [1, 5]:
            etags.append('"ffffffffffffffffffffffffffffffff"')
        with pytest.raises(ClientError) as exc:
            complete(numbers, override)
        assert (error_code(exc.value), http_status(exc.value)) == (code, 400), numbers
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="bad")
    assert http_status(exc.value) == 404
    # the upload survives failed Completes; parts may be skipped (1, 3: gaps are fine)
    done = complete([1, 3])
    assert done["ETag"] == multipart_etag([datas[0], datas[2]])
    assert get_bytes(s3, bucket, "bad")[0] == datas[0] + datas[2]


def test_multipart_https_crc32_parts(s3_tls: Any, tls_bucket: str) -> None:
    """Like awscli over https: CRC32 per part in aws-chunked trailers, ChecksumCRC32 in Complete."""
    parts = [random_bytes(5 * MiB, 21), random_bytes(2 * MiB + 5, 22)]
    uid = s3_tls.create_multipart_upload(Bucket=tls_bucket, Key="mpc", ChecksumAlgorithm="CRC32")["UploadId"]
    done_parts = []
    for i, data in enumerate(parts, start=1):
        r = s3_tls.upload_part(
            Bucket=tls_bucket, Key="mpc", UploadId=uid, PartNumber=i, Body=data, ChecksumAlgorithm="CRC32"
        )
        assert r["ETag"] == f'"{md5_hex(data)}"'
        done_parts.append({"PartNumber": i, "ETag": r["ETag"], "ChecksumCRC32": checksum_b64("crc32", data)})
    done = s3_tls.complete_multipart_upload(
        Bucket=tls_bucket, Key="mpc", UploadId=uid, MultipartUpload={"Parts": done_parts}
    )
    assert done["ETag"] == multipart_etag(parts)
    body, _ = get_bytes(s3_tls, tls_bucket, "mpc", ChecksumMode="ENABLED")
    assert body == b"".join(parts)


def test_upload_fileobj_multipart(s3: Any, bucket: str) -> None:
    data = random_bytes(12 * MiB + 1, 31)
    cfg = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4)
    s3.upload_fileobj(io.BytesIO(data), bucket, "tf", Config=cfg)
    head = s3.head_object(Bucket=bucket, Key="tf")
    assert head["ETag"] == multipart_etag([data[i : i + 5 * MiB] for i in range(0, len(data), 5 * MiB)])
    out = io.BytesIO()
    s3.download_fileobj(bucket, "tf", out, Config=cfg)
    assert out.getvalue() == data


# ---------------------------------------------------------------------------------------
# buckets and error codes
# ---------------------------------------------------------------------------------------
def test_bucket_lifecycle(s3: Any) -> None:
    name = unique_bucket("life")
    s3.create_bucket(Bucket=name)
    try:
        assert http_status(s3.head_bucket(Bucket=name)) == 200
        names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
        assert name in names
        loc = s3.get_bucket_location(Bucket=name)
        assert loc.get("LocationConstraint") in (None, "", "us-east-1")
        try:
            s3.create_bucket(Bucket=name)  # us-east-1 legacy: 200, elsewhere 409
        except ClientError as e:
            assert error_code(e) == "BucketAlreadyOwnedByYou"
            assert http_status(e) == 409
        s3.put_object(Bucket=name, Key="x", Body=b"x")
        with pytest.raises(ClientError) as exc:
            s3.delete_bucket(Bucket=name)
        assert error_code(exc.value) == "BucketNotEmpty"
        assert http_status(exc.value) == 409
        assert get_bytes(s3, name, "x")[0] == b"x"
        s3.delete_object(Bucket=name, Key="x")
        s3.delete_object(Bucket=name, Key="x")  # deleting a missing key is a 204 no-op
    finally:
        s3.delete_bucket(Bucket=name)
    with pytest.raises(ClientError) as exc:
        s3.head_bucket(Bucket=name)
    assert http_status(exc.value) == 404
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_create_bucket_with_location_constraint_us_east_1(s3: Any) -> None:
    name = unique_bucket("loc")
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "us-east-1"})
    try:
        assert http_status(s3.head_bucket(Bucket=name)) == 200
    finally:
        s3.delete_bucket(Bucket=name)


def test_error_codes(s3: Any, bucket: str) -> None:
    missing = unique_bucket("nope")
    cases = [
        (lambda: s3.get_object(Bucket=missing, Key="k"), "NoSuchBucket", 404),
        (lambda: s3.put_object(Bucket=missing, Key="k", Body=b"x"), "NoSuchBucket", 404),
        (lambda: s3.list_objects_v2(Bucket=missing), "NoSuchBucket", 404),
        (lambda: s3.delete_bucket(Bucket=missing), "NoSuchBucket", 404),
        (lambda: s3.get_object(Bucket=bucket, Key="missing"), "NoSuchKey", 404),
        (lambda: s3.get_object(Bucket=bucket, Key="missing", Range="bytes=0-1"), "NoSuchKey", 404),
        (lambda: s3.create_bucket(Bucket="Invalid_Bucket_Name"), "InvalidBucketName", 400),
        (lambda: s3.list_parts(Bucket=bucket, Key="k", UploadId="nonexistent"), "NoSuchUpload", 404),
        (lambda: s3.put_object(Bucket=bucket, Key="k" * 1025, Body=b"x"), "KeyTooLongError", 400),
        (
            lambda: s3.list_objects_v2(Bucket=bucket, ContinuationToken="!!not-a-token!!"),
            "InvalidArgument",
            400,
        ),
    ]
    for call, code, status in cases:
        with pytest.raises(ClientError) as exc:
            call()
        assert (error_code(exc.value), http_status(exc.value)) == (code, status)


def test_error_xml_shape(strata: StrataServer, bucket: str) -> None:
    resp = _signed_get(strata, f"/{bucket}/no/such/key")
    assert resp.status == 404
    assert resp.error_code == "NoSuchKey"
    assert (resp.header("Content-Type") or "").startswith(("application/xml", "text/xml"))
    root = ET.fromstring(resp.body)
    assert rawhttp.find_text(root, "Key") == "no/such/key"
    assert rawhttp.find_text(root, "RequestId")
    assert resp.header("x-amz-request-id")


# ---------------------------------------------------------------------------------------
# presigned URLs and virtual-host style
# ---------------------------------------------------------------------------------------
def test_presigned_get_and_put(s3: Any, bucket: str) -> None:
    data = random_bytes(300_000, 41)
    put_url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "pre/put"}, ExpiresIn=300
    )
    r = requests.put(put_url, data=data, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers.get("ETag") == f'"{md5_hex(data)}"'
    get_url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "pre/put"}, ExpiresIn=300
    )
    r = requests.get(get_url, timeout=60)
    assert r.status_code == 200, r.text
    assert r.content == data
    r = requests.get(get_url, headers={"Range": "bytes=10-19"}, timeout=60)
    assert r.status_code == 206
    assert r.content == data[10:20]


def test_presigned_expired(strata: StrataServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="exp", Body=b"secret")
    old = utc_timestamp(datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2))
    url = presign_url(
        "GET",
        f"{strata.endpoint}{object_path(bucket, 'exp')}",
        access_key=strata.access_key,
        secret_key=strata.secret_key,
        expires=60,
        timestamp=old,
    )
    r = requests.get(url, timeout=30)
    assert r.status_code == 403, r.text
    assert rawhttp.s3_error(r.content)[0] == "AccessDenied"
    assert b"secret" not in r.content
    # the same construction with a fresh timestamp works (so the 403 is about expiry)
    url = presign_url(
        "GET",
        f"{strata.endpoint}{object_path(bucket, 'exp')}",
        access_key=strata.access_key,
        secret_key=strata.secret_key,
        expires=60,
    )
    r = requests.get(url, timeout=30)
    assert r.status_code == 200, r.text
    assert r.content == b"secret"


def _vhost_request(
    server: StrataServer,
    method: str,
    bucket: str,
    path_and_query: str,
    body: bytes = b"",
    host_base: str = "localhost",
) -> rawhttp.RawResponse:
    host = f"{bucket}.{host_base}:{server.port}"
    url = f"http://{host}{path_and_query}"
    headers = {"Content-Length": str(len(body))} if method in ("PUT", "POST") else {}
    req = sign_request(
        method,
        url,
        access_key=server.access_key,
        secret_key=server.secret_key,
        headers=headers,
        payload_hash=hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256,
    )
    return rawhttp.request("127.0.0.1", server.port, method, path_and_query, req.headers, body or None)


def test_virtual_host_style(strata: StrataServer, s3: Any, bucket: str) -> None:
    host_base = "localhost"
    data = random_bytes(50_000, 51)
    s3.put_object(Bucket=bucket, Key="dir/v h.txt", Body=data)
    resp = _vhost_request(strata, "GET", bucket, "/dir/v%20h.txt", host_base=host_base)
    assert resp.status == 200, resp.describe()
    assert resp.body == data
    resp = _vhost_request(strata, "PUT", bucket, "/vput", body=b"via vhost", host_base=host_base)
    assert resp.status == 200, resp.describe()
    assert get_bytes(s3, bucket, "vput")[0] == b"via vhost"
    resp = _vhost_request(strata, "GET", bucket, "/?list-type=2&prefix=dir%2F", host_base=host_base)
    assert resp.status == 200, resp.describe()
    root = ET.fromstring(resp.body)
    assert rawhttp.find_text(root, "Name") == bucket
    assert [rawhttp.find_text(c, "Key") for c in rawhttp.find_all(root, "Contents")] == ["dir/v h.txt"]
    resp = _vhost_request(strata, "HEAD", bucket, "/", host_base=host_base)
    assert resp.status == 200, resp.describe()
    resp = _vhost_request(strata, "GET", unique_bucket("nobkt"), "/k", host_base=host_base)
    assert resp.status == 404
    assert resp.error_code == "NoSuchBucket"


# ---------------------------------------------------------------------------------------
# concurrency
# ---------------------------------------------------------------------------------------
def test_concurrent_puts_and_gets(strata: StrataServer, bucket: str) -> None:
    client = make_client(strata, max_pool_connections=16)
    datas = {f"cc/{i:02d}": random_bytes(MiB + 1000 * i, 500 + i) for i in range(16)}
    with ThreadPoolExecutor(8) as ex:
        etags = dict(
            zip(
                datas,
                ex.map(
                    lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1])["ETag"], datas.items()
                ),
                strict=True,
            )
        )
        bodies = dict(
            zip(
                datas,
                ex.map(lambda k: client.get_object(Bucket=bucket, Key=k)["Body"].read(), datas),
                strict=True,
            )
        )
    for key, data in datas.items():
        assert etags[key] == f'"{md5_hex(data)}"', key
        assert bodies[key] == data, key
    listed = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="cc/")["Contents"]]
    assert listed == sorted(datas)


def test_overwrite_races_are_atomic(strata: StrataServer, bucket: str) -> None:
    """Concurrent overwrites of one key and reads during them: every read returns exactly one
    complete version (never a mix), and the final object is one of the versions."""
    client = make_client(strata, max_pool_connections=16)
    versions = [random_bytes(2 * MiB + i, 600 + i) for i in range(6)]
    by_digest = {hashlib.sha256(v).hexdigest(): i for i, v in enumerate(versions)}
    client.put_object(Bucket=bucket, Key="race", Body=versions[0])
    stop = threading.Event()
    seen: list[int] = []
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            resp = client.get_object(Bucket=bucket, Key="race")
            body = resp["Body"].read()
            digest = hashlib.sha256(body).hexdigest()
            if digest not in by_digest:
                bad.append(f"read {len(body)} bytes matching no version")
            elif resp["ETag"] != f'"{md5_hex(body)}"':
                bad.append(f"ETag {resp['ETag']} does not describe the body returned")
            else:
                seen.append(by_digest[digest])

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        with ThreadPoolExecutor(6) as ex:
            list(ex.map(lambda v: client.put_object(Bucket=bucket, Key="race", Body=v), versions[1:] * 2))
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=60)
    assert not bad, bad[:5]
    assert seen
    final = client.get_object(Bucket=bucket, Key="race")["Body"].read()
    assert hashlib.sha256(final).hexdigest() in by_digest


@pytest.mark.parametrize("action", ["delete", "overwrite"])
def test_running_download_completes(s3: Any, bucket: str, action: str) -> None:
    """DESIGN: downloads already running always complete, even if the object is deleted or
    replaced meanwhile."""
    data = random_bytes(24 * MiB, 800)
    s3.put_object(Bucket=bucket, Key="dl", Body=data)
    body = s3.get_object(Bucket=bucket, Key="dl")["Body"]
    first = body.read(MiB)
    if action == "delete":
        s3.delete_object(Bucket=bucket, Key="dl")
    else:
        s3.put_object(Bucket=bucket, Key="dl", Body=random_bytes(24 * MiB, 801))
    rest = body.read()
    assert hashlib.sha256(first + rest).digest() == hashlib.sha256(data).digest()


def test_client_abort_mid_download(strata: StrataServer, s3: Any, bucket: str) -> None:
    data = random_bytes(16 * MiB, 802)
    s3.put_object(Bucket=bucket, Key="abort", Body=data)
    for _ in range(3):
        body = s3.get_object(Bucket=bucket, Key="abort")["Body"]
        body.read(100_000)
        body.close()
    assert get_bytes(s3, bucket, "abort")[0] == data
    assert strata.is_running()
