"""Bad requests over raw HTTP: each must get the right S3 error and store nothing.

Every test asserts the status and ``<Code>`` of the S3 error XML, that the object does not
exist afterwards (HEAD 404, absent from the listing), and, where the server can decide
before it reads the body (authentication failures, a bad first chunk signature), that the
backend did not grow. Checksum failures are found only at the end of the body, so the
backend may hold unreferenced packs until GC; for those only visibility is checked.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import random
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import rawhttp
from support.awschunked import (
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    UNSIGNED_PAYLOAD,
    SignedBody,
    build_streaming_put,
    checksum_b64,
    content_md5,
    object_path,
    presign_url,
    sign_request,
    utc_timestamp,
)
from support.s3 import MiB, http_status, random_bytes, unique_bucket
from support.server import StrataServer


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def url_for(server: StrataServer, bucket: str, key: str) -> str:
    return f"{server.endpoint}{object_path(bucket, key)}"


def send(server: StrataServer, req: Any, body: bytes | None, **kwargs: Any) -> rawhttp.RawResponse:
    return rawhttp.request(
        "127.0.0.1", server.port, req.method, req.path_and_query, req.headers, body, **kwargs
    )


def assert_s3_error(resp: rawhttp.RawResponse, status: int, code: str | tuple[str, ...]) -> None:
    codes = (code,) if isinstance(code, str) else code
    assert resp.status == status and resp.error_code in codes, (
        f"expected {status} {codes}, got:\n{resp.describe()}"
    )


def assert_not_stored(s3: Any, bucket: str, key: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key=key)
    assert http_status(exc.value) == 404, f"{key!r} exists after a failed upload"
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])]
    assert key not in listed


def assert_stays_absent(s3: Any, bucket: str, key: str, window: float = 2.0) -> None:
    """After an aborted connection the server may still be tearing down the request:
    observe for a while that the object never appears."""
    deadline = time.monotonic() + window
    while True:
        assert_not_stored(s3, bucket, key)
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


def signed_put(
    server: StrataServer,
    bucket: str,
    key: str,
    data: bytes,
    *,
    payload_hash: str | None = None,
    extra: dict[str, str] | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    timestamp: str | None = None,
) -> tuple[Any, bytes]:
    headers = {"Content-Length": str(len(data))}
    headers.update(extra or {})
    req = sign_request(
        "PUT",
        url_for(server, bucket, key),
        access_key=access_key or server.access_key,
        secret_key=secret_key or server.secret_key,
        headers=headers,
        payload_hash=payload_hash or hashlib.sha256(data).hexdigest(),
        timestamp=timestamp,
    )
    return req, data


def tamper_signature(headers: dict[str, str]) -> dict[str, str]:
    out = dict(headers)
    auth = out["Authorization"]
    last = auth[-1]
    out["Authorization"] = auth[:-1] + ("0" if last != "0" else "1")
    return out


# ---------------------------------------------------------------------------------------
# authentication
# ---------------------------------------------------------------------------------------
def test_bad_signature(strata: StrataServer, s3: Any, bucket: str) -> None:
    before = strata.backend_bytes()
    req, data = signed_put(strata, bucket, "badsig", random_bytes(256 * 1024, 1))
    req.headers = tamper_signature(req.headers)
    resp = send(strata, req, data)
    assert_s3_error(resp, 403, "SignatureDoesNotMatch")
    assert_not_stored(s3, bucket, "badsig")
    assert strata.backend_bytes() <= before


def test_signed_header_changed_after_signing(strata: StrataServer, s3: Any, bucket: str) -> None:
    req, data = signed_put(strata, bucket, "hdr", b"payload", extra={"x-amz-meta-owner": "alice"})
    req.headers = {k: ("mallory" if k.lower() == "x-amz-meta-owner" else v) for k, v in req.headers.items()}
    assert_s3_error(send(strata, req, data), 403, "SignatureDoesNotMatch")
    assert_not_stored(s3, bucket, "hdr")


def test_wrong_secret(strata: StrataServer, s3: Any, bucket: str) -> None:
    req, data = signed_put(strata, bucket, "wrongsecret", b"x" * 1000, secret_key="not-the-secret")
    assert_s3_error(send(strata, req, data), 403, "SignatureDoesNotMatch")
    assert_not_stored(s3, bucket, "wrongsecret")


def test_unknown_access_key(strata: StrataServer, s3: Any, bucket: str) -> None:
    before = strata.backend_bytes()
    req, data = signed_put(
        strata, bucket, "unknownkey", random_bytes(100_000, 2), access_key="AKIDOESNOTEXIST00000"
    )
    assert_s3_error(send(strata, req, data), 403, "InvalidAccessKeyId")
    assert_not_stored(s3, bucket, "unknownkey")
    assert strata.backend_bytes() <= before


def test_anonymous_request_denied(strata: StrataServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="private", Body=b"private data")
    resp = rawhttp.request(
        "127.0.0.1", strata.port, "GET", object_path(bucket, "private"), {"Host": f"127.0.0.1:{strata.port}"}
    )
    assert_s3_error(resp, 403, "AccessDenied")
    assert b"private data" not in resp.body
    resp = rawhttp.request(
        "127.0.0.1",
        strata.port,
        "PUT",
        object_path(bucket, "anon"),
        {"Host": f"127.0.0.1:{strata.port}", "Content-Length": "3"},
        b"abc",
    )
    assert_s3_error(resp, 403, "AccessDenied")
    assert_not_stored(s3, bucket, "anon")


def test_request_time_too_skewed(strata: StrataServer, s3: Any, bucket: str) -> None:
    old = utc_timestamp(datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1))
    req, data = signed_put(strata, bucket, "skew", b"abc", timestamp=old)
    assert_s3_error(send(strata, req, data), 403, "RequestTimeTooSkewed")
    assert_not_stored(s3, bucket, "skew")


def test_malformed_authorization_header(strata: StrataServer, s3: Any, bucket: str) -> None:
    req, data = signed_put(strata, bucket, "malformed", b"abc")
    headers = dict(req.headers)
    headers["Authorization"] = "AWS4-HMAC-SHA256 Credential=garbage"
    resp = send(strata, type(req)(req.method, req.url, headers, req.signature, req.timestamp), data)
    assert resp.status in (400, 403), resp.describe()
    assert resp.error_code in (
        "AuthorizationHeaderMalformed",
        "AccessDenied",
        "InvalidArgument",
        "SignatureDoesNotMatch",
    )
    assert_not_stored(s3, bucket, "malformed")


def test_expired_presigned_put(strata: StrataServer, s3: Any, bucket: str) -> None:
    before = strata.backend_bytes()
    old = utc_timestamp(datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=3))
    url = presign_url(
        "PUT",
        url_for(strata, bucket, "expired"),
        access_key=strata.access_key,
        secret_key=strata.secret_key,
        expires=60,
        timestamp=old,
    )
    path = url.split(f":{strata.port}", 1)[1]
    data = random_bytes(64 * 1024, 3)
    resp = rawhttp.request(
        "127.0.0.1",
        strata.port,
        "PUT",
        path,
        {"Host": f"127.0.0.1:{strata.port}", "Content-Length": str(len(data))},
        data,
    )
    assert_s3_error(resp, 403, "AccessDenied")
    assert_not_stored(s3, bucket, "expired")
    assert strata.backend_bytes() <= before


def test_presigned_tampered(strata: StrataServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="pt", Body=b"v")
    url = presign_url(
        "GET",
        url_for(strata, bucket, "pt"),
        access_key=strata.access_key,
        secret_key=strata.secret_key,
        expires=300,
    )
    path = url.split(f":{strata.port}", 1)[1]
    host = {"Host": f"127.0.0.1:{strata.port}"}
    assert rawhttp.request("127.0.0.1", strata.port, "GET", path, host).status == 200
    bad = path[:-1] + ("0" if path[-1] != "0" else "1")
    assert_s3_error(rawhttp.request("127.0.0.1", strata.port, "GET", bad, host), 403, "SignatureDoesNotMatch")
    other_key = path.replace("/pt?", "/other?")
    assert_s3_error(
        rawhttp.request("127.0.0.1", strata.port, "GET", other_key, host), 403, "SignatureDoesNotMatch"
    )


def test_presigned_wrong_method(strata: StrataServer, s3: Any, bucket: str) -> None:
    url = presign_url(
        "GET",
        url_for(strata, bucket, "pm"),
        access_key=strata.access_key,
        secret_key=strata.secret_key,
        expires=300,
    )
    path = url.split(f":{strata.port}", 1)[1]
    headers = {"Host": f"127.0.0.1:{strata.port}", "Content-Length": "4"}
    resp = rawhttp.request("127.0.0.1", strata.port, "PUT", path, headers, b"evil")
    assert_s3_error(resp, 403, "SignatureDoesNotMatch")
    assert_not_stored(s3, bucket, "pm")


def test_presigned_expires_too_long(strata: StrataServer, s3: Any, bucket: str) -> None:
    """X-Amz-Expires above 7 days (604800 s) is rejected."""
    s3.put_object(Bucket=bucket, Key="long", Body=b"v")
    url = presign_url(
        "GET",
        url_for(strata, bucket, "long"),
        access_key=strata.access_key,
        secret_key=strata.secret_key,
        expires=604801,
    )
    path = url.split(f":{strata.port}", 1)[1]
    resp = rawhttp.request("127.0.0.1", strata.port, "GET", path, {"Host": f"127.0.0.1:{strata.port}"})
    assert_s3_error(resp, 400, "AuthorizationQueryParametersError")


def test_presigned_put_with_signed_content_type(strata: StrataServer, s3: Any, bucket: str) -> None:
    url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "pct", "ContentType": "text/csv"}, ExpiresIn=300
    )
    path = url.split(f":{strata.port}", 1)[1]
    host = f"127.0.0.1:{strata.port}"
    ok = rawhttp.request(
        "127.0.0.1",
        strata.port,
        "PUT",
        path,
        {"Host": host, "Content-Type": "text/csv", "Content-Length": "3"},
        b"a,b",
    )
    assert ok.status == 200, ok.describe()
    assert s3.head_object(Bucket=bucket, Key="pct")["ContentType"] == "text/csv"
    s3.delete_object(Bucket=bucket, Key="pct")
    bad = rawhttp.request(
        "127.0.0.1",
        strata.port,
        "PUT",
        path,
        {"Host": host, "Content-Type": "text/html", "Content-Length": "3"},
        b"a,b",
    )
    assert_s3_error(bad, 403, "SignatureDoesNotMatch")
    assert_not_stored(s3, bucket, "pct")


@pytest.mark.parametrize("framing", ["content-length", "aws-chunked"])
def test_entity_too_large_rejected_before_body(
    strata: StrataServer, s3: Any, bucket: str, framing: str
) -> None:
    """A single PUT above 5 GiB is refused from its headers; the server must not wait for
    (or store) 5 GiB first."""
    size = 5 * 1024**3 + 1
    if framing == "content-length":
        headers = {"Content-Length": str(size)}
        payload_hash = UNSIGNED_PAYLOAD
        first = b"x" * 65536
    else:
        headers = {
            "Content-Encoding": "aws-chunked",
            "X-Amz-Decoded-Content-Length": str(size),
            "X-Amz-Trailer": "x-amz-checksum-crc32",
        }
        payload_hash = STREAMING_UNSIGNED_TRAILER
        first = b"10000\r\n" + b"x" * 65536 + b"\r\n"
    req = sign_request(
        "PUT",
        url_for(strata, bucket, "huge"),
        access_key=strata.access_key,
        secret_key=strata.secret_key,
        headers=headers,
        payload_hash=payload_hash,
    )
    wire_headers = dict(req.headers)
    if framing == "aws-chunked":
        wire_headers["Transfer-Encoding"] = "chunked"
        first = f"{len(first):x}\r\n".encode() + first + b"\r\n"  # one HTTP chunk
    head = rawhttp.request_head("PUT", req.path_and_query, wire_headers)
    answer = rawhttp.send_truncated("127.0.0.1", strata.port, head, first, mode="keep_open", timeout=10)
    assert answer, "no answer within 10 s: the server waits for a 5 GiB body it must refuse"
    resp = rawhttp.parse_raw_response(answer)
    assert_s3_error(resp, 400, "EntityTooLarge")
    assert_not_stored(s3, bucket, "huge")


# ---------------------------------------------------------------------------------------
# aws-chunked signatures
# ---------------------------------------------------------------------------------------
def _streaming(strata: StrataServer, bucket: str, key: str, data: bytes, **kwargs: Any) -> Any:
    return build_streaming_put(
        url_for(strata, bucket, key),
        data,
        access_key=strata.access_key,
        secret_key=strata.secret_key,
        **kwargs,
    )


@pytest.mark.parametrize("which", ["first", "middle", "final"])
def test_wrong_chunk_signature(strata: StrataServer, s3: Any, bucket: str, which: str) -> None:
    data = random_bytes(5 * 65536 + 100, 4)
    key = f"chunksig-{which}"
    up = _streaming(strata, bucket, key, data, chunk_size=65536)
    body: SignedBody = up.signed_body
    index = {"first": 0, "middle": 2, "final": len(body.frames) - 1}[which]
    sig = body.frames[index].signature
    body.frames[index].signature = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    before = strata.backend_bytes()
    resp = rawhttp.request(
        "127.0.0.1", strata.port, "PUT", up.request.path_and_query, up.headers, body.render()
    )
    assert_s3_error(resp, 403, "SignatureDoesNotMatch")
    assert_not_stored(s3, bucket, key)
    if which == "first":
        assert strata.backend_bytes() <= before, "bytes of an unverified chunk reached the backend"


def test_chunk_data_changed_signature_kept(strata: StrataServer, s3: Any, bucket: str) -> None:
    data = random_bytes(4 * 65536, 5)
    up = _streaming(strata, bucket, "chunkdata", data, chunk_size=65536)
    frame = up.signed_body.frames[1]
    frame.data = bytes([frame.data[0] ^ 0xFF]) + frame.data[1:]
    resp = rawhttp.request(
        "127.0.0.1", strata.port, "PUT", up.request.path_and_query, up.headers, up.signed_body.render()
    )
    assert_s3_error(resp, 403, "SignatureDoesNotMatch")
    assert_not_stored(s3, bucket, "chunkdata")


def test_chunks_reordered(strata: StrataServer, s3: Any, bucket: str) -> None:
    data = random_bytes(4 * 65536, 6)
    up = _streaming(strata, bucket, "reorder", data, chunk_size=65536)
    frames = up.signed_body.frames
    frames[0], frames[1] = frames[1], frames[0]
    resp = rawhttp.request(
        "127.0.0.1", strata.port, "PUT", up.request.path_and_query, up.headers, up.signed_body.render()
    )
    assert_s3_error(resp, 403, "SignatureDoesNotMatch")
    assert_not_stored(s3, bucket, "reorder")


def test_signed_trailer_bad_trailer_signature(strata: StrataServer, s3: Any, bucket: str) -> None:
    data = random_bytes(100_000, 7)
    up = _streaming(strata, bucket, "trsig", data, variant=STREAMING_SIGNED_TRAILER, checksum="crc32c")
    sig = up.signed_body.trailer_signature
    up.signed_body.trailer_signature = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    resp = rawhttp.request(
        "127.0.0.1", strata.port, "PUT", up.request.path_and_query, up.headers, up.signed_body.render()
    )
    assert_s3_error(resp, 403, "SignatureDoesNotMatch")
    assert_not_stored(s3, bucket, "trsig")


def test_signed_trailer_value_changed(strata: StrataServer, s3: Any, bucket: str) -> None:
    """Changing the trailer value without re-signing must fail (signature or digest)."""
    data = random_bytes(100_000, 8)
    up = _streaming(strata, bucket, "trval", data, variant=STREAMING_SIGNED_TRAILER, checksum="crc32")
    up.signed_body.trailers = [("x-amz-checksum-crc32", checksum_b64("crc32", b"other"))]
    resp = rawhttp.request(
        "127.0.0.1", strata.port, "PUT", up.request.path_and_query, up.headers, up.signed_body.render()
    )
    assert (resp.status, resp.error_code) in ((403, "SignatureDoesNotMatch"), (400, "BadDigest")), (
        resp.describe()
    )
    assert_not_stored(s3, bucket, "trval")


# ---------------------------------------------------------------------------------------
# digests
# ---------------------------------------------------------------------------------------
def test_content_md5_mismatch(strata: StrataServer, s3: Any, bucket: str) -> None:
    data = random_bytes(300_000, 9)
    req, body = signed_put(strata, bucket, "md5", data, extra={"Content-MD5": content_md5(b"something else")})
    assert_s3_error(send(strata, req, body), 400, "BadDigest")
    assert_not_stored(s3, bucket, "md5")


def test_content_md5_invalid(strata: StrataServer, s3: Any, bucket: str) -> None:
    req, body = signed_put(strata, bucket, "md5inv", b"abc", extra={"Content-MD5": "not-base64-md5"})
    assert_s3_error(send(strata, req, body), 400, "InvalidDigest")
    assert_not_stored(s3, bucket, "md5inv")


@pytest.mark.parametrize("algorithm", ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"])
def test_checksum_header_mismatch(strata: StrataServer, s3: Any, bucket: str, algorithm: str) -> None:
    data = random_bytes(200_000, 10)
    key = f"ckh-{algorithm}"
    req, body = signed_put(
        strata,
        bucket,
        key,
        data,
        extra={f"x-amz-checksum-{algorithm}": checksum_b64(algorithm, b"other data")},
    )
    assert_s3_error(send(strata, req, body), 400, "BadDigest")
    assert_not_stored(s3, bucket, key)


def test_checksum_header_mismatch_unsigned_payload(strata: StrataServer, s3: Any, bucket: str) -> None:
    data = random_bytes(200_000, 11)
    req, body = signed_put(
        strata,
        bucket,
        "ckh-unsigned",
        data,
        payload_hash=UNSIGNED_PAYLOAD,
        extra={"x-amz-checksum-crc32": checksum_b64("crc32", b"other data")},
    )
    assert_s3_error(send(strata, req, body), 400, "BadDigest")
    assert_not_stored(s3, bucket, "ckh-unsigned")


@pytest.mark.parametrize("variant", [STREAMING_UNSIGNED_TRAILER, STREAMING_SIGNED_TRAILER])
@pytest.mark.parametrize("algorithm", ["crc32", "crc64nvme", "sha256"])
def test_checksum_trailer_mismatch(
    strata: StrataServer, s3: Any, bucket: str, variant: str, algorithm: str
) -> None:
    data = random_bytes(MiB + 5, 12)
    key = f"ckt-{algorithm}-{variant[:12]}"
    up = _streaming(
        strata,
        bucket,
        key,
        data,
        variant=variant,
        checksum=algorithm,
        checksum_value=checksum_b64(algorithm, b"not the data"),
        chunk_size=256 * 1024,
    )
    assert_s3_error(send(strata, up.request, up.body), 400, "BadDigest")
    assert_not_stored(s3, bucket, key)


def test_content_sha256_mismatch(strata: StrataServer, s3: Any, bucket: str) -> None:
    data = random_bytes(300_000, 13)
    req, body = signed_put(strata, bucket, "sha", data, payload_hash=hashlib.sha256(b"other").hexdigest())
    assert_s3_error(send(strata, req, body), 400, "XAmzContentSHA256Mismatch")
    assert_not_stored(s3, bucket, "sha")


def test_trailer_name_differs_from_declared(strata: StrataServer, s3: Any, bucket: str) -> None:
    """``x-amz-trailer`` says crc32, the trailer carries crc32c: reject."""
    data = random_bytes(100_000, 30)
    up = _streaming(
        strata,
        bucket,
        "trname",
        data,
        variant=STREAMING_UNSIGNED_TRAILER,
        checksum="crc32c",
        extra_headers={"X-Amz-Trailer": "x-amz-checksum-crc32"},
    )
    resp = send(strata, up.request, up.body)
    assert 400 <= resp.status < 500, resp.describe()
    assert resp.error_code, resp.describe()
    assert_not_stored(s3, bucket, "trname")


def _upload_part_request(
    strata: StrataServer,
    bucket: str,
    key: str,
    upload_id: str,
    number: int,
    data: bytes,
    extra: dict[str, str],
) -> rawhttp.RawResponse:
    url = f"{url_for(strata, bucket, key)}?partNumber={number}&uploadId={upload_id}"
    headers = {"Content-Length": str(len(data)), **extra}
    req = sign_request(
        "PUT",
        url,
        access_key=strata.access_key,
        secret_key=strata.secret_key,
        headers=headers,
        payload_hash=hashlib.sha256(data).hexdigest(),
    )
    return send(strata, req, data)


def test_upload_part_bad_digest_is_not_recorded(strata: StrataServer, s3: Any, bucket: str) -> None:
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mpbad")["UploadId"]
    good = random_bytes(200_000, 31)
    s3.upload_part(Bucket=bucket, Key="mpbad", UploadId=uid, PartNumber=1, Body=good)
    bad = random_bytes(200_000, 32)
    resp = _upload_part_request(strata, bucket, "mpbad", uid, 2, bad, {"Content-MD5": content_md5(b"nope")})
    assert_s3_error(resp, 400, "BadDigest")
    resp = _upload_part_request(
        strata, bucket, "mpbad", uid, 1, bad, {"x-amz-checksum-crc32": checksum_b64("crc32", b"nope")}
    )
    assert_s3_error(resp, 400, "BadDigest")
    parts = s3.list_parts(Bucket=bucket, Key="mpbad", UploadId=uid).get("Parts", [])
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, len(good))], "a failed part was recorded"
    s3.abort_multipart_upload(Bucket=bucket, Key="mpbad", UploadId=uid)


def test_list_bad_max_keys(strata: StrataServer, bucket: str) -> None:
    for value in ("-1", "abc"):
        path = f"/{bucket}?list-type=2&max-keys={value}"
        req = sign_request(
            "GET", f"{strata.endpoint}{path}", access_key=strata.access_key, secret_key=strata.secret_key
        )
        assert_s3_error(send(strata, req, None), 400, "InvalidArgument")


# ---------------------------------------------------------------------------------------
# truncated bodies
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("unsigned", [False, True], ids=["sha256", "unsigned"])
@pytest.mark.parametrize("size", [2 * MiB, 9 * MiB], ids=["aiohttp-reads", "thread-reads"])
@pytest.mark.parametrize("mode", ["half_close", "close", "reset"])
def test_truncated_body(
    strata: StrataServer, s3: Any, bucket: str, mode: str, size: int, unsigned: bool
) -> None:
    """A body of 8 MiB or more is read by a thread (gateway/socket_recv.py); cut short, it
    leaves nothing either way, even with no digest that would catch it (UNSIGNED-PAYLOAD)."""
    data = random_bytes(size, 14)
    key = f"trunc-{mode}-{size}-{unsigned}"
    req, _ = signed_put(strata, bucket, key, data, payload_hash=UNSIGNED_PAYLOAD if unsigned else None)
    head = rawhttp.request_head("PUT", req.path_and_query, req.headers)
    answer = rawhttp.send_truncated("127.0.0.1", strata.port, head, data[: size // 2 + 123], mode=mode)
    if answer:
        status_line = answer.split(b"\r\n", 1)[0]
        assert b" 200 " not in status_line, f"truncated upload answered {status_line!r}"
    assert_stays_absent(s3, bucket, key)
    # the server is still healthy and the key is usable
    s3.put_object(Bucket=bucket, Key=key, Body=b"fine")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"fine"


@pytest.mark.parametrize("mode", ["half_close", "reset"])
def test_truncated_aws_chunked_connection(strata: StrataServer, s3: Any, bucket: str, mode: str) -> None:
    data = random_bytes(MiB, 15)
    key = f"trunc-chunked-{mode}"
    up = _streaming(strata, bucket, key, data, chunk_size=65536)
    head = rawhttp.request_head("PUT", up.request.path_and_query, up.headers)
    # stop in the middle of the 9th frame
    answer = rawhttp.send_truncated("127.0.0.1", strata.port, head, up.body[: 8 * 65700 + 1000], mode=mode)
    if answer:
        assert b" 200 " not in answer.split(b"\r\n", 1)[0], answer[:200]
    assert_stays_absent(s3, bucket, key)


def _without_final_frame(body: SignedBody) -> bytes:
    return b"".join(f.render() for f in body.frames[:-1])


def test_aws_chunked_missing_final_chunk(strata: StrataServer, s3: Any, bucket: str) -> None:
    """All data frames arrive (Content-Length honest) but the final 0-frame never does."""
    data = random_bytes(4 * 65536, 16)
    up = _streaming(strata, bucket, "nofinal", data, chunk_size=65536, content_length=False)
    assert up.signed_body is not None
    body = _without_final_frame(up.signed_body)
    headers = dict(up.headers, **{"Content-Length": str(len(body))})  # unsigned Content-Length
    resp = rawhttp.request("127.0.0.1", strata.port, "PUT", up.request.path_and_query, headers, body)
    assert 400 <= resp.status < 500, resp.describe()
    assert resp.error_code, resp.describe()
    assert_not_stored(s3, bucket, "nofinal")


def test_aws_chunked_decoded_length_mismatch(strata: StrataServer, s3: Any, bucket: str) -> None:
    data = random_bytes(3 * 65536, 17)
    for declared in (len(data) + 1, len(data) - 1):
        key = f"declen-{declared}"
        up = _streaming(
            strata,
            bucket,
            key,
            data,
            chunk_size=65536,
            extra_headers={"X-Amz-Decoded-Content-Length": str(declared)},
        )
        resp = send(strata, up.request, up.body)
        assert 400 <= resp.status < 500, resp.describe()
        assert resp.error_code, resp.describe()
        assert_not_stored(s3, bucket, key)


def test_unsigned_trailer_missing_trailer(strata: StrataServer, s3: Any, bucket: str) -> None:
    """``x-amz-trailer`` promises a checksum; the body ends without it."""
    data = random_bytes(200_000, 18)
    up = _streaming(
        strata, bucket, "notrailer", data, variant=STREAMING_UNSIGNED_TRAILER, content_length=False
    )
    body = up.body[: up.body.rindex(b"0\r\nx-amz-checksum-crc32:")] + b"0\r\n\r\n"
    headers = dict(up.headers, **{"Content-Length": str(len(body))})
    resp = rawhttp.request("127.0.0.1", strata.port, "PUT", up.request.path_and_query, headers, body)
    assert 400 <= resp.status < 500, resp.describe()
    assert resp.error_code, resp.describe()
    assert_not_stored(s3, bucket, "notrailer")


# ---------------------------------------------------------------------------------------
# ranges
# ---------------------------------------------------------------------------------------
def _get_range(strata: StrataServer, bucket: str, key: str, range_value: str) -> rawhttp.RawResponse:
    req = sign_request(
        "GET",
        url_for(strata, bucket, key),
        access_key=strata.access_key,
        secret_key=strata.secret_key,
        headers={"Range": range_value},
    )
    return send(strata, req, None)


@pytest.mark.parametrize("spec", ["bytes=999999-", "bytes=1000-", "bytes=1000-2000", "bytes=-0"])
def test_unsatisfiable_range(strata: StrataServer, s3: Any, bucket: str, spec: str) -> None:
    s3.put_object(Bucket=bucket, Key="r", Body=random_bytes(1000, 19))
    resp = _get_range(strata, bucket, "r", spec)
    assert_s3_error(resp, 416, "InvalidRange")
    assert resp.header("Content-Range") in (None, "bytes */1000")


@pytest.mark.parametrize(
    "spec",
    [
        "bytes=abc",
        "bytes=",
        "pages=0-10",
        "bytes=1-2-3",
        "bytes 0-10",
        "bytes=--5",
        "bytes=100-50",  # last < first: invalid syntax, ignored (RFC 9110), as S3 does
        "bytes=0-1,5-6",  # several ranges: S3 serves the whole object
    ],
)
def test_malformed_range_is_ignored(strata: StrataServer, s3: Any, bucket: str, spec: str) -> None:
    data = random_bytes(1000, 20)
    s3.put_object(Bucket=bucket, Key="r", Body=data)
    resp = _get_range(strata, bucket, "r", spec)
    assert resp.status == 200, resp.describe()
    assert resp.body == data


# ---------------------------------------------------------------------------------------
# fuzz: garbage aws-chunked bodies
# ---------------------------------------------------------------------------------------
def sensitive_ranges(body: SignedBody) -> list[tuple[int, int]]:
    """Byte ranges of chunk data and signature hex in ``body.render()``.

    Mutations are confined to these (and to truncation before the end of the final frame's
    signature), so every mutated body is invalid by the spec and not merely unusual
    whitespace or a leading zero that a lenient parser could accept harmlessly.
    """
    ranges = []
    pos = 0
    for frame in body.frames:
        header = frame.header()
        sig_start = pos + header.index(b"=") + 1
        ranges.append((sig_start, sig_start + 64))
        data_start = pos + len(header)
        if frame.data:
            ranges.append((data_start, data_start + len(frame.data)))
        pos = data_start + len(frame.data) + 2
    return ranges


@st.composite
def broken_bodies(draw: st.DrawFn, valid: bytes, ranges: list[tuple[int, int]]) -> bytes:
    kind = draw(st.sampled_from(["random", "truncate", "replace", "insert", "drop"]))
    if kind == "random":
        return draw(st.binary(min_size=0, max_size=4096))
    if kind == "truncate":
        return valid[: draw(st.integers(0, ranges[-1][1] - 1))]
    lo, hi = draw(st.sampled_from(ranges))
    pos = draw(st.integers(lo, hi - 1))
    if kind == "replace":
        old = valid[pos : pos + 1]
        new = draw(st.binary(min_size=1, max_size=1).filter(lambda b: b.lower() != old.lower()))
        return valid[:pos] + new + valid[pos + 1 :]
    if kind == "insert":
        return valid[:pos] + draw(st.binary(min_size=1, max_size=16)) + valid[pos:]
    n = draw(st.integers(1, min(64, hi - pos)))
    return valid[:pos] + valid[pos + n :]


def test_fuzz_garbage_aws_chunked(strata: StrataServer, s3: Any, bucket: str) -> None:
    """Random garbage and mutations of a valid signed aws-chunked body: always a 4xx S3
    error, never a stored object. One request is signed (Content-Length left unsigned)
    and replayed with each body."""
    data = random.Random(21).randbytes(3 * 8192 + 500)
    up = _streaming(strata, bucket, "fuzz", data, chunk_size=8192, content_length=False)
    assert up.signed_body is not None
    valid = up.body
    ranges = sensitive_ranges(up.signed_body)
    assert valid[ranges[0][0] : ranges[0][1]] == up.signed_body.frames[0].signature.encode()

    control = dict(up.headers, **{"Content-Length": str(len(valid))})
    ok = rawhttp.request("127.0.0.1", strata.port, "PUT", up.request.path_and_query, control, valid)
    assert ok.status == 200, f"the unmutated body must be accepted:\n{ok.describe()}"
    s3.delete_object(Bucket=bucket, Key="fuzz")

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(body=broken_bodies(valid, ranges))
    def run(body: bytes) -> None:
        headers = dict(up.headers, **{"Content-Length": str(len(body))})
        resp = rawhttp.request(
            "127.0.0.1", strata.port, "PUT", up.request.path_and_query, headers, body, timeout=30
        )
        assert 400 <= resp.status < 500, (
            f"garbage body accepted:\n{resp.describe()}\nbody[:300]={body[:300]!r}"
        )
        assert resp.error_code, f"no S3 error XML:\n{resp.describe()}"
        assert_not_stored(s3, bucket, "fuzz")

    run()


# ---------------------------------------------------------------------------------------
# connection reuse after errors
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["bad-signature", "bad-digest", "no-such-bucket"])
def test_connection_usable_after_error(strata: StrataServer, s3: Any, bucket: str, failure: str) -> None:
    """After an error response to a PUT with a body, the next request on the same keep-alive
    connection must be parsed as a request (the server drained the body or closed)."""
    s3.put_object(Bucket=bucket, Key="probe", Body=b"probe body")
    data = random_bytes(MiB, 40)
    target_bucket = unique_bucket("nob") if failure == "no-such-bucket" else bucket
    extra = {"Content-MD5": content_md5(b"nope")} if failure == "bad-digest" else {}
    req, body = signed_put(strata, target_bucket, "conn", data, extra=extra)
    headers = tamper_signature(req.headers) if failure == "bad-signature" else req.headers

    conn = http.client.HTTPConnection("127.0.0.1", strata.port, timeout=30)
    try:
        conn.putrequest("PUT", req.path_and_query, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        try:
            conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pytest.skip("server closed before reading the body (acceptable)")
        first = conn.getresponse()
        first.read()
        assert 400 <= first.status < 500
        if (first.getheader("Connection") or "").lower() == "close" or first.will_close:
            pytest.skip("server closed the connection after the error (acceptable)")
        get = sign_request(
            "GET",
            url_for(strata, bucket, "probe"),
            access_key=strata.access_key,
            secret_key=strata.secret_key,
        )
        conn.putrequest("GET", get.path_and_query, skip_host=True, skip_accept_encoding=True)
        for k, v in get.headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        second = conn.getresponse()
        assert second.status == 200, second.read()[:300]
        assert second.read() == b"probe body"
    finally:
        conn.close()
