"""Tests for gateway.s3.sigv4.

The verifier is checked against independent signers — botocore's S3SigV4Auth /
S3SigV4QueryAuth, boto3 clients end to end, and the AWS CRT's C signer — and against the
worked examples published in the S3 API reference (Signature Version 4 pages).
"""

from __future__ import annotations

import hashlib
import hmac
import io
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

import boto3
import pytest
from awscrt.auth import (
    AwsCredentialsProvider,
    AwsSignatureType,
    AwsSignedBodyHeaderType,
    AwsSigningAlgorithm,
    AwsSigningConfig,
    aws_sign_request,
)
from awscrt.http import HttpHeaders, HttpRequest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from yarl import URL

from gateway.s3.errors import S3Error
from gateway.s3.sigv4 import (
    EMPTY_SHA256,
    ChunkSigner,
    SigningContext,
    canonical_query_string,
    canonical_uri,
    derive_signing_key,
    verify_request,
)

AK = "AKIDSTRATATEST"
SK = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SECRETS = {AK: SK, "AKIAIOSFODNN7EXAMPLE": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
ENDPOINT = "http://127.0.0.1:9000"


def lookup(access_key: str) -> str | None:
    return SECRETS.get(access_key)


@dataclass
class ServerRequest:
    """A request as the HTTP layer hands it to verify_request."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: CIMultiDict[str]

    def verify(self, now: datetime = NOW, **kw: Any) -> SigningContext | None:
        return verify_request(self.method, self.path, self.query, self.headers, lookup, now, **kw)

    def copy(self) -> ServerRequest:
        return ServerRequest(self.method, self.path, list(self.query), CIMultiDict(self.headers))


def server_view(method: str, url: str, headers: Any) -> ServerRequest:
    """Decode a client request the way aiohttp/yarl would."""
    u = URL(url, encoded=True)
    hdrs: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        hdrs.add(name, value.decode() if isinstance(value, bytes) else value)
    if "host" not in hdrs:
        hdrs["Host"] = urlsplit(url).netloc
    return ServerRequest(method, u.path, list(u.query.items()), hdrs)


def encode_key(key: str) -> str:
    return quote(key, safe="/~")  # what botocore's serializer does with S3 keys


def encode_query(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs)


def url_for(key: str, query: list[tuple[str, str]] | None = None, bucket: str = "bucket") -> str:
    url = f"{ENDPOINT}/{bucket}/{encode_key(key)}"
    if query:
        url += "?" + encode_query(query)
    return url


def botocore_sign(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    when: datetime = NOW,
    region: str = "us-east-1",
    access_key: str = AK,
    secret: str = SK,
) -> ServerRequest:
    request = AWSRequest(method=method, url=url, headers=dict(headers or {}), data=body)
    with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
        S3SigV4Auth(Credentials(access_key, secret), "s3", region).add_auth(request)
    return server_view(method, request.url, request.headers)


def botocore_presign(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    expires: int = 3600,
    when: datetime = NOW,
    region: str = "us-east-1",
) -> ServerRequest:
    request = AWSRequest(method=method, url=url, headers=dict(headers or {}))
    with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
        S3SigV4QueryAuth(Credentials(AK, SK), "s3", region, expires=expires).add_auth(request)
    return server_view(method, request.url, request.headers)


def expect_error(code: str, fn: Callable[[], object]) -> S3Error:
    with pytest.raises(S3Error) as info:
        fn()
    assert info.value.code == code, (info.value.code, info.value.message)
    return info.value


KEYS = [
    "plain.txt",
    "a b c",
    "plus+sign+",
    "eq=uals==",
    "tilde~ok",
    "percent%25literal%",
    "100% sure",
    "unicode/ünïcödé/€/日本語/🙂",
    "dir/sub/dir/",
    "double//slash///",
    "./dot/../segments/.",
    "!$&'()*,;:@",
    'quote"and<angle>',
    "hash#and?question",
    "[brackets]{braces}|pipe^caret`tick",
    "tab\tand\nnewline",
    "-_.~ unreserved",
    "a/b%2Fc",
    "x" * 300,
]

QUERIES: list[list[tuple[str, str]]] = [
    [],
    [("uploads", "")],
    [("list-type", "2"), ("prefix", "a b/ü€"), ("delimiter", "/")],
    [("partNumber", "3"), ("uploadId", "a/b+c==~x")],
    [("versionId", "null")],
    [("prefix", ""), ("max-keys", "1000"), ("encoding-type", "url")],
    [("response-content-disposition", 'attachment; filename="a b.txt"'), ("x-id", "GetObject")],
    [("start-after", "x+y=z&w"), ("continuation-token", "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=")],
    [("a", "1"), ("a", "0"), ("A", "2"), ("_", "~")],
    [("tagging", ""), ("acl", "")],
]


# --- AWS documentation examples ---------------------------------------------------------------

DOC_AK = "AKIAIOSFODNN7EXAMPLE"
DOC_NOW = datetime(2013, 5, 24, 0, 0, 0, tzinfo=UTC)


def _doc_auth(signed: str, signature: str) -> str:
    return (
        f"AWS4-HMAC-SHA256 Credential={DOC_AK}/20130524/us-east-1/s3/aws4_request,"
        f"SignedHeaders={signed},Signature={signature}"
    )


def doc_examples() -> dict[str, ServerRequest]:
    base = {"Host": "examplebucket.s3.amazonaws.com", "x-amz-date": "20130524T000000Z"}
    return {
        "GET Object (Range)": ServerRequest(
            "GET",
            "/test.txt",
            [],
            CIMultiDict(
                base,
                Range="bytes=0-9",
                **{"x-amz-content-sha256": EMPTY_SHA256},
                Authorization=_doc_auth(
                    "host;range;x-amz-content-sha256;x-amz-date",
                    "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
                ),
            ),
        ),
        "PUT Object": ServerRequest(
            "PUT",
            "/test$file.text",
            [],
            CIMultiDict(
                base,
                Date="Fri, 24 May 2013 00:00:00 GMT",
                **{
                    "x-amz-storage-class": "REDUCED_REDUNDANCY",
                    "x-amz-content-sha256": hashlib.sha256(b"Welcome to Amazon S3.").hexdigest(),
                },
                Authorization=_doc_auth(
                    "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                    "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
                ),
            ),
        ),
        "GET Bucket Lifecycle": ServerRequest(
            "GET",
            "/",
            [("lifecycle", "")],
            CIMultiDict(
                base,
                **{"x-amz-content-sha256": EMPTY_SHA256},
                Authorization=_doc_auth(
                    "host;x-amz-content-sha256;x-amz-date",
                    "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
                ),
            ),
        ),
        "GET Bucket (List Objects)": ServerRequest(
            "GET",
            "/",
            [("max-keys", "2"), ("prefix", "J")],
            CIMultiDict(
                base,
                **{"x-amz-content-sha256": EMPTY_SHA256},
                Authorization=_doc_auth(
                    "host;x-amz-content-sha256;x-amz-date",
                    "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
                ),
            ),
        ),
        "presigned GET": ServerRequest(
            "GET",
            "/test.txt",
            [
                ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
                ("X-Amz-Credential", f"{DOC_AK}/20130524/us-east-1/s3/aws4_request"),
                ("X-Amz-Date", "20130524T000000Z"),
                ("X-Amz-Expires", "86400"),
                ("X-Amz-SignedHeaders", "host"),
                ("X-Amz-Signature", "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"),
            ],
            CIMultiDict(Host="examplebucket.s3.amazonaws.com"),
        ),
        "chunked PUT (seed)": ServerRequest(
            "PUT",
            "/examplebucket/chunkObject.txt",
            [],
            CIMultiDict(
                {
                    "Host": "s3.amazonaws.com",
                    "x-amz-date": "20130524T000000Z",
                    "x-amz-storage-class": "REDUCED_REDUNDANCY",
                    "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                    "Content-Encoding": "aws-chunked",
                    "x-amz-decoded-content-length": "66560",
                    "Content-Length": "66824",
                    "Authorization": _doc_auth(
                        "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                        "x-amz-decoded-content-length;x-amz-storage-class",
                        "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
                    ),
                }
            ),
        ),
        "chunked PUT with trailer (seed)": ServerRequest(
            "PUT",
            "/examplebucket/chunkObject.txt",
            [],
            CIMultiDict(
                {
                    "Host": "s3.amazonaws.com",
                    "x-amz-date": "20130524T000000Z",
                    "x-amz-storage-class": "REDUCED_REDUNDANCY",
                    "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
                    "Content-Encoding": "aws-chunked",
                    "x-amz-decoded-content-length": "66560",
                    "x-amz-trailer": "x-amz-checksum-crc32c",
                    "Authorization": _doc_auth(
                        "content-encoding;host;x-amz-content-sha256;x-amz-date;"
                        "x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer",
                        "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
                    ),
                }
            ),
        ),
    }


@pytest.mark.parametrize("name", list(doc_examples()))
def test_aws_documentation_examples(name: str) -> None:
    req = doc_examples()[name]
    ctx = req.verify(DOC_NOW)
    assert ctx is not None
    assert ctx.access_key == DOC_AK
    assert ctx.scope == "20130524/us-east-1/s3/aws4_request"
    assert ctx.region == "us-east-1"
    assert ctx.amz_date == "20130524T000000Z"
    assert ctx.signing_key == derive_signing_key(SECRETS[DOC_AK], "20130524", "us-east-1")
    assert ctx.presigned == name.startswith("presigned")
    # the documented signature is the seed of the chunk chain
    if "Authorization" in req.headers:
        assert ctx.seed_signature == req.headers["Authorization"].rsplit("Signature=", 1)[1]


@pytest.mark.parametrize("name", list(doc_examples()))
def test_aws_documentation_examples_tampered(name: str) -> None:
    req = doc_examples()[name]
    bad = req.copy()
    bad.path = bad.path + "x"
    expect_error("SignatureDoesNotMatch", lambda: bad.verify(DOC_NOW))
    bad = req.copy()
    bad.method = "DELETE"
    expect_error("SignatureDoesNotMatch", lambda: bad.verify(DOC_NOW))


def test_aws_documentation_chunk_signatures() -> None:
    ctx = doc_examples()["chunked PUT (seed)"].verify(DOC_NOW)
    assert ctx is not None
    signer = ChunkSigner(ctx)
    signer.verify_chunk(
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        hashlib.sha256(b"a" * 65536).hexdigest(),
    )
    signer.verify_chunk(
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        hashlib.sha256(b"a" * 1024).hexdigest(),
    )
    signer.verify_chunk("b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9", EMPTY_SHA256)
    assert signer.previous_signature == "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"


def test_aws_documentation_trailer_signature() -> None:
    ctx = doc_examples()["chunked PUT with trailer (seed)"].verify(DOC_NOW)
    assert ctx is not None
    key, date, scope = ctx.signing_key, ctx.amz_date, ctx.scope
    s1 = ChunkSigner.sign_chunk(key, date, scope, ctx.seed_signature, b"a" * 65536)
    s2 = ChunkSigner.sign_chunk(key, date, scope, s1, b"a" * 1024)
    s3 = ChunkSigner.sign_chunk(key, date, scope, s2, b"")
    assert [s1, s2, s3] == [
        "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
        "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
        "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
    ]
    trailer = b"x-amz-checksum-crc32c:sOO8/Q==\n"
    sig = "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"
    assert ChunkSigner.sign_trailer(key, date, scope, s3, trailer) == sig
    signer = ChunkSigner(ctx)
    for data, s in [(b"a" * 65536, s1), (b"a" * 1024, s2), (b"", s3)]:
        signer.verify_chunk(s, hashlib.sha256(data).hexdigest())
    with pytest.raises(S3Error) as e:
        ChunkSigner(ctx).verify_trailer(sig, trailer)  # wrong previous signature
    assert e.value.code == "SignatureDoesNotMatch"
    signer.verify_trailer(sig, trailer)


def test_chunk_signer_rejects_and_does_not_advance() -> None:
    ctx = doc_examples()["chunked PUT (seed)"].verify(DOC_NOW)
    assert ctx is not None
    signer = ChunkSigner(ctx)
    good = "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
    digest = hashlib.sha256(b"a" * 65536).hexdigest()
    for bad in [good.upper(), good[:-1] + "0", "", good + "0", "é" * 64]:
        expect_error("SignatureDoesNotMatch", lambda bad=bad: signer.verify_chunk(bad, digest))
        assert signer.previous_signature == ctx.seed_signature
    expect_error("SignatureDoesNotMatch", lambda: signer.verify_chunk(good, EMPTY_SHA256))
    signer.verify_chunk(good, digest)


# --- canonical forms ----------------------------------------------------------------------


def test_canonical_uri() -> None:
    assert canonical_uri("/") == "/"
    assert canonical_uri("") == "/"
    assert canonical_uri("/b/a b+c=d~e") == "/b/a%20b%2Bc%3Dd~e"
    assert canonical_uri("/b//./../x") == "/b//./../x"
    assert canonical_uri("/b/€") == "/b/%E2%82%AC"
    assert canonical_uri("/b/%2F") == "/b/%252F"
    assert canonical_uri(b"/b/\xff\xfe") == "/b/%FF%FE"
    assert canonical_uri("/b/\udcff") == "/b/%FF"  # surrogate-escaped raw byte


def test_canonical_query() -> None:
    q = [("prefix", "a/b c"), ("uploads", ""), ("B", "2"), ("a", "z"), ("a", "b"), ("X-Amz-Signature", "s")]
    assert canonical_query_string(q) == "B=2&X-Amz-Signature=s&a=b&a=z&prefix=a%2Fb%20c&uploads="
    assert canonical_query_string(q, presigned=True) == "B=2&a=b&a=z&prefix=a%2Fb%20c&uploads="


def test_signing_context_repr_hides_key() -> None:
    ctx = doc_examples()["GET Object (Range)"].verify(DOC_NOW)
    assert ctx is not None
    assert repr(ctx.signing_key) not in repr(ctx)


# --- cross-checks against botocore ----------------------------------------------------------


def queries_for(key: str) -> list[list[tuple[str, str]]]:
    """A few of the query strings for each key (all of them across KEYS), to keep the suite fast."""
    i = KEYS.index(key)
    return [QUERIES[(i + k) % len(QUERIES)] for k in (0, 3, 7)]


@pytest.mark.parametrize("key", KEYS)
def test_botocore_header_auth_paths_and_queries(key: str) -> None:
    for query in queries_for(key):
        for method, body in [("GET", b""), ("PUT", b"some body bytes")]:
            req = botocore_sign(method, url_for(key, query), body=body)
            ctx = req.verify()
            assert ctx is not None
            assert ctx.access_key == AK and not ctx.presigned
            assert ctx.payload_hash == req.headers["x-amz-content-sha256"]


@pytest.mark.parametrize("key", KEYS)
def test_botocore_presigned_paths_and_queries(key: str) -> None:
    for query in queries_for(key):
        if len({k for k, _ in query}) != len(query):
            continue  # botocore's presigner collapses repeated parameters
        for method in ("GET", "PUT"):
            req = botocore_presign(method, url_for(key, query), expires=600)
            ctx = req.verify()
            assert ctx is not None
            assert ctx.presigned and ctx.payload_hash == "UNSIGNED-PAYLOAD"


def test_botocore_signed_headers_and_whitespace() -> None:
    headers = {
        "x-amz-meta-note": "  several   spaces\tand tab  ",
        "x-amz-meta-empty": "",
        "Content-Type": "text/plain; charset=utf-8",
        "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==",
        "x-amz-copy-source": "/src/a%20b",
        "x-amz-checksum-crc32": "AAAAAA==",
        "Range": "bytes=0-9",
    }
    req = botocore_sign("PUT", url_for("k"), headers=headers, body=b"")
    assert req.verify() is not None
    # a header value whose whitespace differs only in runs/ends still verifies
    req.headers["x-amz-meta-note"] = "several spaces and tab"
    assert req.verify() is not None


def test_repeated_header_values_are_joined() -> None:
    request = AWSRequest(method="GET", url=url_for("k"), headers={})
    request.headers["X-Amz-Meta-Multi"] = "one"
    request.headers["X-Amz-Meta-Multi"] = "two"  # HTTPHeaders appends
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(request)
    req = server_view("GET", request.url, request.headers)
    assert req.headers.getall("x-amz-meta-multi") == ["one", "two"]
    assert req.verify() is not None
    # the same headers as a plain dict (joined by the proxy) verify too
    plain = {k: v for k, v in req.headers.items() if k.lower() != "x-amz-meta-multi"}
    plain["X-AMZ-META-MULTI"] = "one,two"
    assert verify_request(req.method, req.path, req.query, plain, lookup, NOW) is not None
    swapped = req.copy()
    swapped.headers.popall("x-amz-meta-multi")
    swapped.headers.add("x-amz-meta-multi", "two")
    swapped.headers.add("x-amz-meta-multi", "one")
    expect_error("SignatureDoesNotMatch", swapped.verify)


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1", "auto", "us-west-2"])
def test_any_region_is_accepted(region: str) -> None:
    ctx = botocore_sign("GET", url_for("k"), region=region).verify()
    assert ctx is not None and ctx.region == region
    assert ctx.signing_key == derive_signing_key(SK, "20261124", region)
    ctx = botocore_presign("GET", url_for("k"), region=region).verify()
    assert ctx is not None and ctx.region == region


def test_plain_dict_headers_any_case() -> None:
    req = botocore_sign("GET", url_for("k", [("prefix", "x")]))
    plain = {k.upper(): v for k, v in req.headers.items()}
    assert verify_request("GET", req.path, req.query, plain, lookup, NOW) is not None


def test_bytes_path_keeps_raw_bytes() -> None:
    # A key that is not UTF-8: the HTTP layer can hand over unquote_to_bytes(raw_path).
    request = AWSRequest(method="GET", url=f"{ENDPOINT}/bucket/%FF%FEraw", headers={})
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(request)
    req = server_view("GET", request.url, request.headers)
    ctx = verify_request("GET", b"/bucket/\xff\xferaw", req.query, req.headers, lookup, NOW)
    assert ctx is not None


# --- cross-check against the AWS CRT signer (C implementation) --------------------------------


def crt_sign(
    method: str,
    path: str,
    body_value: str,
    headers: list[tuple[str, str]] | None = None,
    region: str = "us-east-1",
) -> ServerRequest:
    http = HttpRequest(method, path, HttpHeaders([("host", "127.0.0.1:9000"), *(headers or [])]))
    config = AwsSigningConfig(
        algorithm=AwsSigningAlgorithm.V4,
        signature_type=AwsSignatureType.HTTP_REQUEST_HEADERS,
        credentials_provider=AwsCredentialsProvider.new_static(AK, SK),
        region=region,
        service="s3",
        date=NOW,
        use_double_uri_encode=False,
        should_normalize_uri_path=False,
        signed_body_value=body_value,
        signed_body_header_type=AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256,
    )
    signed = aws_sign_request(http, config).result()
    return server_view(method, ENDPOINT + signed.path, dict(signed.headers))


@pytest.mark.parametrize("key", KEYS[:12])
def test_crt_signer(key: str) -> None:
    for query in queries_for(key):
        path = f"/bucket/{encode_key(key)}"
        if query:
            path += "?" + encode_query(query)
        for body_value in ("UNSIGNED-PAYLOAD", EMPTY_SHA256, "STREAMING-UNSIGNED-PAYLOAD-TRAILER"):
            headers = [("x-amz-meta-a", "  x   y "), ("content-type", "a/b")]
            ctx = crt_sign("PUT", path, body_value, headers, region="eu-west-3").verify()
            assert ctx is not None and ctx.payload_hash == body_value and ctx.region == "eu-west-3"


def test_crt_presigned() -> None:
    http = HttpRequest("GET", "/bucket/a%20b?versionId=3", HttpHeaders([("host", "127.0.0.1:9000")]))
    config = AwsSigningConfig(
        algorithm=AwsSigningAlgorithm.V4,
        signature_type=AwsSignatureType.HTTP_REQUEST_QUERY_PARAMS,
        credentials_provider=AwsCredentialsProvider.new_static(AK, SK),
        region="us-east-1",
        service="s3",
        date=NOW,
        use_double_uri_encode=False,
        should_normalize_uri_path=False,
        signed_body_value="UNSIGNED-PAYLOAD",
        expiration_in_seconds=900,
    )
    signed = aws_sign_request(http, config).result()
    req = server_view("GET", ENDPOINT + signed.path, dict(signed.headers))
    ctx = req.verify()
    assert ctx is not None and ctx.presigned


# --- boto3 end to end (requests captured before they leave the client) -------------------------


class _EmptyRaw:
    def stream(self, **_: Any) -> Any:
        yield b""


def boto3_capture(endpoint: str, call: Callable[[Any], object], *, presign_v4: bool = True) -> list[Any]:
    captured: list[Any] = []

    def before_send(request: Any, **_: Any) -> AWSResponse:
        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        captured.append((request.method, request.url, request.headers, body))
        return AWSResponse(request.url, 200, {"ETag": '"0"'}, _EmptyRaw())

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4", retries={"max_attempts": 1}),
        verify=False,
    )
    client.meta.events.register("before-send.s3.*", before_send)
    call(client)
    return captured


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9000", "https://127.0.0.1:9443"])
def test_boto3_requests_verify(endpoint: str) -> None:
    def calls(c: Any) -> None:
        c.put_object(Bucket="bkt", Key="dir/a b+c=d~€.txt", Body=b"hello", Metadata={"k": "v  w"})
        c.put_object(Bucket="bkt", Key="stream", Body=io.BytesIO(b"x" * 70000))
        c.get_object(Bucket="bkt", Key="a%b", Range="bytes=0-1", ChecksumMode="ENABLED")
        c.head_object(Bucket="bkt", Key="ü")
        c.list_objects_v2(Bucket="bkt", Prefix="p q/ü", Delimiter="/", StartAfter="a+b")
        c.list_objects(Bucket="bkt", Prefix="x", Marker="m=n")
        c.delete_objects(Bucket="bkt", Delete={"Objects": [{"Key": "a"}, {"Key": "b c"}]})
        c.upload_part(Bucket="bkt", Key="big", PartNumber=2, UploadId="abc/def+==", Body=b"p" * 10)
        c.copy_object(Bucket="bkt", Key="dst key", CopySource={"Bucket": "bkt", "Key": "src key+€"})
        c.create_multipart_upload(Bucket="bkt", Key="m", ChecksumAlgorithm="CRC32")

    captured = boto3_capture(endpoint, calls)
    assert len(captured) >= 10
    for method, url, headers, _ in captured:
        req = server_view(method, url, headers)
        ctx = req.verify(datetime.now(UTC))
        assert ctx is not None, url


def test_boto3_presigned_urls_verify() -> None:
    client = boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )
    for op, params, headers in [
        ("get_object", {"Bucket": "b", "Key": "a b/€+=~"}, {}),
        (
            "put_object",
            {"Bucket": "b", "Key": "k", "ContentType": "text/plain"},
            {"Content-Type": "text/plain"},
        ),
        ("get_object", {"Bucket": "b", "Key": "k", "ResponseContentDisposition": "attachment; x=1"}, {}),
        ("upload_part", {"Bucket": "b", "Key": "k", "UploadId": "u/+=", "PartNumber": 1}, {}),
    ]:
        url = client.generate_presigned_url(op, Params=params, ExpiresIn=300)
        method = {"get_object": "GET"}.get(op, "PUT")
        req = server_view(method, url, headers)
        ctx = req.verify(datetime.now(UTC))
        assert ctx is not None and ctx.presigned
        if headers:  # the presigned URL signed Content-Type: it must be sent as signed
            req.headers["Content-Type"] = "image/png"
            expect_error("SignatureDoesNotMatch", lambda req=req: req.verify(datetime.now(UTC)))


def test_boto3_default_presigned_url_is_sigv2() -> None:
    # boto3 presigns with SigV2 unless signature_version="s3v4": we answer like v4-only regions.
    client = boto3.client(
        "s3", endpoint_url=ENDPOINT, aws_access_key_id=AK, aws_secret_access_key=SK, region_name="us-east-1"
    )
    url = client.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    req = server_view("GET", url, {})
    if any(k == "AWSAccessKeyId" for k, _ in req.query):
        err = expect_error("InvalidRequest", req.verify)
        assert "AWS4-HMAC-SHA256" in err.message
    else:
        assert req.verify(datetime.now(UTC)) is not None


# --- error codes ------------------------------------------------------------------------------


def _good() -> ServerRequest:
    return botocore_sign("PUT", url_for("k", [("partNumber", "1")]), headers={"x-amz-meta-a": "b"}, body=b"x")


def _with_auth(req: ServerRequest, auth: str) -> ServerRequest:
    bad = req.copy()
    bad.headers["Authorization"] = auth
    return bad


def test_anonymous_returns_none() -> None:
    req = ServerRequest("GET", "/b/k", [("prefix", "x")], CIMultiDict(Host="h"))
    assert req.verify() is None
    assert verify_request("GET", "/", [], {}, lookup, NOW) is None


def _v4(
    cred: str = f"{AK}/20261124/us-east-1/s3/aws4_request", signed: str = "host", sig: str = "0" * 64
) -> str:
    return f"AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders={signed}, Signature={sig}"


@pytest.mark.parametrize(
    ("auth", "code"),
    [
        ("AWS AKID:c2lnbmF0dXJl", "InvalidRequest"),
        ("Bearer token", "InvalidArgument"),
        ("Basic dXNlcjpwYXNz", "InvalidArgument"),
        ("", "InvalidArgument"),
        (_v4().replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"), "NotImplemented"),
        ("AWS4-HMAC-SHA256", "AuthorizationHeaderMalformed"),
        ("AWS4-HMAC-SHA256 Credential=x", "AuthorizationHeaderMalformed"),
        (_v4().rsplit(",", 1)[0], "AuthorizationHeaderMalformed"),
        (_v4() + ", Extra=1", "AuthorizationHeaderMalformed"),
        (_v4() + ", Signature=" + "0" * 64, "AuthorizationHeaderMalformed"),
        (_v4().replace("Signature=", "Signature "), "AuthorizationHeaderMalformed"),
        (_v4(cred=f"{AK}/20261124/us-east-1/s3"), "AuthorizationHeaderMalformed"),
        (_v4(cred=f"{AK}/2026112/us-east-1/s3/aws4_request"), "AuthorizationHeaderMalformed"),
        (_v4(cred=f"{AK}/20261124/us-east-1/ec2/aws4_request"), "AuthorizationHeaderMalformed"),
        (_v4(cred=f"{AK}/20261124/us-east-1/s3/aws5_request"), "AuthorizationHeaderMalformed"),
        (_v4(cred=f"{AK}//us-east-1/s3/aws4_request"), "AuthorizationHeaderMalformed"),
        (_v4(cred=f"{AK}/20261123/us-east-1/s3/aws4_request"), "AuthorizationHeaderMalformed"),
        (_v4(signed="x-amz-date"), "AuthorizationHeaderMalformed"),
        (_v4(signed="Host;x-amz-date"), "AuthorizationHeaderMalformed"),
        (_v4(signed="host;;x"), "AuthorizationHeaderMalformed"),
        (_v4(signed="host;host"), "AuthorizationHeaderMalformed"),
        (_v4(signed=""), "AuthorizationHeaderMalformed"),
        (_v4(cred="NOSUCHKEY/20261124/us-east-1/s3/aws4_request"), "InvalidAccessKeyId"),
        (_v4(), "SignatureDoesNotMatch"),
        (_v4(sig="zz").replace(", ", ","), "SignatureDoesNotMatch"),
        (_v4(sig="é"), "SignatureDoesNotMatch"),
    ],
)
def test_authorization_header_errors(auth: str, code: str) -> None:
    expect_error(code, _with_auth(_good(), auth).verify)


def test_unsupported_authorization_type_echoes_value() -> None:
    err = expect_error("InvalidArgument", _with_auth(_good(), "Bearer abc").verify)
    assert err.message == "Unsupported Authorization Type"
    assert err.extra == {"ArgumentName": "Authorization", "ArgumentValue": "Bearer abc"}


def test_sigv2_message() -> None:
    err = expect_error("InvalidRequest", _with_auth(_good(), "AWS AKID:sig").verify)
    assert err.message == (
        "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
    )
    req = ServerRequest(
        "GET", "/b/k", [("AWSAccessKeyId", AK), ("Signature", "x"), ("Expires", "1")], CIMultiDict()
    )
    expect_error("InvalidRequest", req.verify)


def test_signature_mismatch_carries_debug_details() -> None:
    req = _good()
    req.path += "2"
    err = expect_error("SignatureDoesNotMatch", req.verify)
    assert err.extra["AWSAccessKeyId"] == AK
    assert err.extra["StringToSign"].startswith("AWS4-HMAC-SHA256\n20261124T120000Z\n")
    assert err.extra["CanonicalRequest"].startswith("PUT\n/bucket/k2\npartNumber=1\n")


def test_missing_or_bad_date() -> None:
    req = _good()
    req.headers.popall("x-amz-date")
    err = expect_error("AccessDenied", req.verify)
    assert "Date or x-amz-date" in err.message
    for bad in ["2026-11-24T12:00:00Z", "20261124T120000", "20261332T120000Z", ""]:
        req = _good()
        req.headers["x-amz-date"] = bad
        expect_error("AccessDenied", req.verify)


def test_date_header_instead_of_x_amz_date() -> None:
    request = AWSRequest(method="GET", url=url_for("k"), headers={})
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(request)
    req = server_view("GET", request.url, request.headers)
    # Re-sign the same canonical request with a Date header only (as s3fs-fuse may).
    date_only = req.copy()
    date_only.headers.popall("x-amz-date")
    date_only.headers["Date"] = "Tue, 24 Nov 2026 12:00:00 GMT"
    auth = date_only.headers["Authorization"].replace("x-amz-date", "date")
    date_only.headers["Authorization"] = auth
    err = expect_error("SignatureDoesNotMatch", date_only.verify)
    sts = err.extra["StringToSign"]
    assert sts.split("\n")[1] == "20261124T120000Z"
    canonical = err.extra["CanonicalRequest"]
    assert "date:Tue, 24 Nov 2026 12:00:00 GMT" in canonical
    key = derive_signing_key(SK, "20261124", "us-east-1")
    good_sig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    date_only.headers["Authorization"] = auth.rsplit("Signature=", 1)[0] + "Signature=" + good_sig
    assert date_only.verify() is not None


def test_missing_and_invalid_content_sha256() -> None:
    req = _good()
    req.headers.popall("x-amz-content-sha256")
    err = expect_error("InvalidRequest", req.verify)
    assert err.message == "Missing required header for this request: x-amz-content-sha256"
    for value, code in [
        ("abc", "InvalidArgument"),
        ("STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD", "NotImplemented"),
        ("unsigned-payload", "InvalidArgument"),
    ]:
        req = _good()
        req.headers["x-amz-content-sha256"] = value
        expect_error(code, req.verify)


@pytest.mark.parametrize(
    "payload",
    [
        "UNSIGNED-PAYLOAD",
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        EMPTY_SHA256,
        EMPTY_SHA256.upper(),
    ],
)
def test_payload_tokens_accepted(payload: str) -> None:
    req = crt_sign("PUT", "/bucket/k", payload)
    ctx = req.verify()
    assert ctx is not None and ctx.payload_hash == payload
    req.headers["x-amz-content-sha256"] = (
        "UNSIGNED-PAYLOAD" if payload != "UNSIGNED-PAYLOAD" else EMPTY_SHA256
    )
    expect_error("SignatureDoesNotMatch", req.verify)


def test_clock_skew() -> None:
    req = _good()
    skew = timedelta(minutes=15)
    assert req.verify(NOW + skew) is not None
    assert req.verify(NOW - skew) is not None
    for now in (NOW + skew + timedelta(seconds=1), NOW - skew - timedelta(seconds=1)):
        err = expect_error("RequestTimeTooSkewed", lambda now=now: req.verify(now))
        assert err.extra["RequestTime"] == "20261124T120000Z"
        assert err.extra["MaxAllowedSkewMilliseconds"] == "900000"
    assert req.verify(NOW + timedelta(minutes=40), max_skew=timedelta(hours=1)) is not None
    # naive "now" means UTC
    assert req.verify(NOW.replace(tzinfo=None)) is not None


def test_unsigned_amz_headers_are_refused() -> None:
    req = _good()
    req.headers["x-amz-meta-late"] = "added after signing"
    req.headers["X-Amz-Acl"] = "public-read"
    err = expect_error("AccessDenied", req.verify)
    assert err.extra["HeadersNotSigned"] == "x-amz-acl, x-amz-meta-late"
    # other headers may be unsigned (User-Agent, Expect, Content-Length set by the transport)
    req = _good()
    req.headers["User-Agent"] = "curl"
    req.headers["X-Amzn-Trace-Id"] = "Root=1"
    req.headers["amz-sdk-request"] = "attempt=1"
    assert req.verify() is not None


def test_both_mechanisms() -> None:
    req = _good()
    req.query.append(("X-Amz-Signature", "0" * 64))
    expect_error("InvalidArgument", req.verify)


def test_two_authorization_headers() -> None:
    req = _good()
    req.headers.add("Authorization", req.headers["Authorization"])
    expect_error("AuthorizationHeaderMalformed", req.verify)


def test_unknown_access_key() -> None:
    req = botocore_sign("GET", url_for("k"), access_key="AKIDUNKNOWN")
    err = expect_error("InvalidAccessKeyId", req.verify)
    assert err.extra["AWSAccessKeyId"] == "AKIDUNKNOWN"


def test_wrong_secret() -> None:
    expect_error("SignatureDoesNotMatch", botocore_sign("GET", url_for("k"), secret="wrong").verify)


# --- presigned URLs ------------------------------------------------------------------------


def _presigned(expires: int = 3600, **kw: Any) -> ServerRequest:
    return botocore_presign("GET", url_for("obj key", [("versionId", "7")]), expires=expires, **kw)


def test_presigned_expiry_window() -> None:
    req = _presigned(expires=3600)
    assert req.verify(NOW) is not None
    assert req.verify(NOW + timedelta(seconds=3600)) is not None
    err = expect_error("AccessDenied", lambda: req.verify(NOW + timedelta(seconds=3601)))
    assert err.message == "Request has expired"
    assert err.extra["X-Amz-Expires"] == "3600"
    assert err.extra["Expires"] == "2026-11-24T13:00:00Z"
    # dated in the future: within the skew fine, beyond it not yet valid
    assert req.verify(NOW - timedelta(minutes=15)) is not None
    err = expect_error("AccessDenied", lambda: req.verify(NOW - timedelta(minutes=16)))
    assert err.message == "Request is not yet valid"


def test_presigned_expires_bounds() -> None:
    assert _presigned(expires=604800).verify(NOW + timedelta(days=6)) is not None
    assert _presigned(expires=1).verify(NOW) is not None
    for expires, fragment in [(604801, "less than a week"), (0, "positive"), (-5, "positive")]:
        err = expect_error(
            "AuthorizationQueryParametersError", lambda e=expires: _presigned(expires=e).verify()
        )
        assert fragment in err.message
    req = _presigned()
    req.query = [(k, "soon" if k == "X-Amz-Expires" else v) for k, v in req.query]
    expect_error("AuthorizationQueryParametersError", req.verify)


def _edit_query(req: ServerRequest, name: str, value: str | None) -> ServerRequest:
    bad = req.copy()
    bad.query = [(k, v) for k, v in bad.query if k != name]
    if value is not None:
        bad.query.append((name, value))
    return bad


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("X-Amz-Algorithm", None, "AuthorizationQueryParametersError"),
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA1", "AuthorizationQueryParametersError"),
        ("X-Amz-Algorithm", "AWS4-ECDSA-P256-SHA256", "NotImplemented"),
        ("X-Amz-Credential", None, "AuthorizationQueryParametersError"),
        ("X-Amz-Credential", "garbage", "AuthorizationQueryParametersError"),
        (
            "X-Amz-Credential",
            f"{AK}/20261124/us-east-1/sqs/aws4_request",
            "AuthorizationQueryParametersError",
        ),
        ("X-Amz-Credential", f"{AK}/20261125/us-east-1/s3/aws4_request", "AuthorizationQueryParametersError"),
        ("X-Amz-Credential", "NOKEY/20261124/us-east-1/s3/aws4_request", "InvalidAccessKeyId"),
        ("X-Amz-Date", None, "AuthorizationQueryParametersError"),
        ("X-Amz-Date", "2026-11-24T12:00:00Z", "AuthorizationQueryParametersError"),
        ("X-Amz-Expires", None, "AuthorizationQueryParametersError"),
        ("X-Amz-SignedHeaders", None, "AuthorizationQueryParametersError"),
        ("X-Amz-SignedHeaders", "x-amz-date", "AuthorizationQueryParametersError"),
        ("X-Amz-Signature", None, "AuthorizationQueryParametersError"),
        ("X-Amz-Signature", "0" * 64, "SignatureDoesNotMatch"),
        ("X-Amz-Content-Sha256", "nonsense", "InvalidArgument"),
        ("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD", "SignatureDoesNotMatch"),  # not what was signed
    ],
)
def test_presigned_parameter_errors(name: str, value: str | None, code: str) -> None:
    expect_error(code, _edit_query(_presigned(), name, value).verify)


def test_presigned_duplicate_parameter() -> None:
    req = _presigned()
    req.query.append(("X-Amz-Date", "20261124T120000Z"))
    expect_error("AuthorizationQueryParametersError", req.verify)


def test_presigned_with_signed_content_sha256_and_headers() -> None:
    # botocore signs an x-amz-content-sha256 header and any x-amz-* header present.
    sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    req = botocore_presign(
        "PUT",
        url_for("k"),
        headers={"X-Amz-Content-SHA256": sha, "x-amz-meta-a": "1", "Content-Type": "text/plain"},
    )
    ctx = req.verify()
    assert ctx is not None and ctx.payload_hash == sha
    bad = req.copy()
    bad.headers["x-amz-meta-a"] = "2"
    expect_error("SignatureDoesNotMatch", bad.verify)
    bad = req.copy()
    bad.headers["x-amz-meta-b"] = "2"
    expect_error("AccessDenied", bad.verify)


def test_presigned_unsigned_content_sha256_header_is_ignored() -> None:
    req = _presigned()
    req.headers["x-amz-content-sha256"] = EMPTY_SHA256
    ctx = req.verify()
    assert ctx is not None and ctx.payload_hash == "UNSIGNED-PAYLOAD"


# --- property: any mutation of a signed request fails ----------------------------------------

_key_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=30
)
_param_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC-_.~%+=/ é", min_size=1, max_size=8)
_param_value = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_meta_value = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 -_", min_size=1, max_size=12).filter(
    lambda s: s.strip() != ""
)


@st.composite
def signed_requests(draw: st.DrawFn) -> tuple[ServerRequest, bool]:
    key = draw(_key_text)
    names = draw(st.lists(_param_name, max_size=4, unique=True))
    query = [(n, draw(_param_value)) for n in names]
    metas = draw(
        st.dictionaries(st.sampled_from(["x-amz-meta-a", "x-amz-meta-b", "x-amz-tagging"]), _meta_value)
    )
    presigned = draw(st.booleans())
    method = draw(st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD"]))
    if presigned:
        return botocore_presign(method, url_for(key, query), headers=metas), True
    return botocore_sign(method, url_for(key, query), headers=metas, body=draw(st.binary(max_size=20))), False


def _canon(v: str) -> str:
    return " ".join(v.split())


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(signed=signed_requests(), data=st.data())
def test_mutations_of_signed_requests_fail(signed: tuple[ServerRequest, bool], data: st.DataObject) -> None:
    req, presigned = signed
    assert req.verify() is not None
    bad = req.copy()
    signed_names = (
        dict(bad.query)["X-Amz-SignedHeaders"]
        if presigned
        else bad.headers["Authorization"].split("SignedHeaders=")[1].split(",")[0]
    ).split(";")
    kind = data.draw(
        st.sampled_from(
            ["method", "path", "add-param", "change-param", "drop-param", "header", "drop-header", "add-amz"]
        )
    )
    if kind in ("change-param", "drop-param") and not bad.query:
        kind = "add-param"
    if kind == "method":
        bad.method = data.draw(
            st.sampled_from([m for m in ["GET", "PUT", "POST", "DELETE", "HEAD"] if m != req.method])
        )
    elif kind == "path":
        i = data.draw(st.integers(1, len(bad.path)))
        ch = data.draw(st.characters(blacklist_categories=("Cs",)))
        if i < len(bad.path) and ch != bad.path[i] and data.draw(st.booleans()):
            bad.path = bad.path[:i] + ch + bad.path[i + 1 :]  # replace a character
        else:
            bad.path = bad.path[:i] + ch + bad.path[i:]  # insert one
    elif kind == "add-param":
        existing = {k for k, _ in bad.query}
        name = data.draw(_param_name.filter(lambda n: n not in existing))
        bad.query.append((name, data.draw(_param_value)))
    elif kind == "change-param":
        i = data.draw(st.integers(0, len(bad.query) - 1))
        name, value = bad.query[i]
        bad.query[i] = (name, data.draw(_param_value.filter(lambda v: v != value)))
    elif kind == "drop-param":
        bad.query.pop(data.draw(st.integers(0, len(bad.query) - 1)))
    elif kind == "header":
        name = data.draw(st.sampled_from(signed_names))
        old = bad.headers.get(name, "")
        bad.headers[name] = data.draw(_meta_value.filter(lambda v: _canon(v) != _canon(old)))
    elif kind == "drop-header":
        name = data.draw(st.sampled_from(signed_names))
        if name in bad.headers:
            bad.headers.popall(name)
        else:
            bad.headers[name] = "x"
    else:
        bad.headers["x-amz-meta-injected"] = "evil"
    with pytest.raises(S3Error):
        bad.verify()


def test_signing_context_is_frozen() -> None:
    ctx = _good().verify()
    assert ctx is not None
    with pytest.raises(AttributeError):
        ctx.access_key = "other"  # type: ignore[misc]
    assert replace(ctx, presigned=True).presigned
