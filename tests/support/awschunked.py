"""An independent, test-side implementation of SigV4 ``aws-chunked`` bodies.

This module deliberately does not import anything from ``gateway``: it encodes bodies the
way the AWS documentation ("Signature Calculations for the Authorization Header:
Transferring Payload in Multiple Chunks" and "... Including Trailing Headers") describes, so
that the server's decoder is checked against a second implementation. The known-answer
vectors from the AWS documentation are checked in ``tests/integration/test_raw_protocol.py``.

Formats (``\\r\\n`` is CRLF)::

    signed chunk      <hex(len)>;chunk-signature=<sig>\\r\\n<data>\\r\\n
    signed final      0;chunk-signature=<sig>\\r\\n\\r\\n
    signed + trailer  0;chunk-signature=<sig>\\r\\n<name>:<value>\\r\\n
                      x-amz-trailer-signature:<tsig>\\r\\n\\r\\n
    unsigned chunk    <hex(len)>\\r\\n<data>\\r\\n
    unsigned trailer  0\\r\\n<name>:<value>\\r\\n\\r\\n

Chunk string-to-sign::

    AWS4-HMAC-SHA256-PAYLOAD\\n<timestamp>\\n<scope>\\n<previous-signature>\\n
    <sha256("")>\\n<sha256(chunk-data)>

Trailer string-to-sign::

    AWS4-HMAC-SHA256-TRAILER\\n<timestamp>\\n<scope>\\n<previous-signature>\\n
    <sha256("<name>:<value>\\n" for each trailer, sorted by name)>

The seed signature (the one in the ``Authorization`` header) is computed by botocore's own
SigV4 signer, with a fixed clock when a test needs one.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"
MIN_CHUNK = 8 * 1024  # every chunk but the last must be at least 8 KiB (AWS rule)

CHECKSUM_ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")


# ---------------------------------------------------------------------------------------
# checksums
# ---------------------------------------------------------------------------------------
def checksum_bytes(algorithm: str, data: bytes) -> bytes:
    """Raw digest bytes of ``data`` for an ``x-amz-checksum-*`` algorithm name."""
    algorithm = algorithm.lower()
    if algorithm == "crc32":
        return zlib.crc32(data).to_bytes(4, "big")
    if algorithm == "crc32c":
        from awscrt import checksums

        return checksums.crc32c(data).to_bytes(4, "big")
    if algorithm == "crc64nvme":
        from awscrt import checksums

        return checksums.crc64nvme(data).to_bytes(8, "big")
    if algorithm == "sha1":
        return hashlib.sha1(data).digest()
    if algorithm == "sha256":
        return hashlib.sha256(data).digest()
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def checksum_b64(algorithm: str, data: bytes) -> str:
    """The base64 value S3 puts in ``x-amz-checksum-<algorithm>``."""
    return base64.b64encode(checksum_bytes(algorithm, data)).decode("ascii")


def content_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def split_chunks(data: bytes, chunk_size: int) -> list[bytes]:
    """Split ``data`` into ``chunk_size`` pieces (the last may be shorter; none if empty)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]


# ---------------------------------------------------------------------------------------
# SigV4 primitives
# ---------------------------------------------------------------------------------------
def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def derive_signing_key(secret_key: str, date: str, region: str, service: str = "s3") -> bytes:
    k_date = _hmac(("AWS4" + secret_key).encode("utf-8"), date)
    k_region = _hmac(k_date, region)
    k_service = _hmac(k_region, service)
    return _hmac(k_service, "aws4_request")


def chunk_string_to_sign(timestamp: str, scope: str, previous_signature: str, data: bytes) -> str:
    return "\n".join(
        [
            "AWS4-HMAC-SHA256-PAYLOAD",
            timestamp,
            scope,
            previous_signature,
            EMPTY_SHA256,
            hashlib.sha256(data).hexdigest(),
        ]
    )


def canonical_trailers(trailers: Iterable[tuple[str, str]]) -> str:
    return "".join(f"{name.lower()}:{value.strip()}\n" for name, value in sorted(trailers))


def trailer_string_to_sign(
    timestamp: str, scope: str, previous_signature: str, trailers: Iterable[tuple[str, str]]
) -> str:
    return "\n".join(
        [
            "AWS4-HMAC-SHA256-TRAILER",
            timestamp,
            scope,
            previous_signature,
            hashlib.sha256(canonical_trailers(trailers).encode("utf-8")).hexdigest(),
        ]
    )


@dataclass
class ChunkSigner:
    """Signs successive chunks; each signature chains on the previous one."""

    signing_key: bytes
    timestamp: str
    scope: str  # "<yyyymmdd>/<region>/s3/aws4_request"
    previous_signature: str  # starts as the seed signature

    @classmethod
    def for_request(cls, secret_key: str, timestamp: str, region: str, seed_signature: str) -> ChunkSigner:
        date = timestamp[:8]
        return cls(
            signing_key=derive_signing_key(secret_key, date, region),
            timestamp=timestamp,
            scope=f"{date}/{region}/s3/aws4_request",
            previous_signature=seed_signature,
        )

    def sign_chunk(self, data: bytes) -> str:
        sts = chunk_string_to_sign(self.timestamp, self.scope, self.previous_signature, data)
        sig = hmac.new(self.signing_key, sts.encode("utf-8"), hashlib.sha256).hexdigest()
        self.previous_signature = sig
        return sig

    def sign_trailer(self, trailers: Iterable[tuple[str, str]]) -> str:
        sts = trailer_string_to_sign(self.timestamp, self.scope, self.previous_signature, trailers)
        sig = hmac.new(self.signing_key, sts.encode("utf-8"), hashlib.sha256).hexdigest()
        self.previous_signature = sig
        return sig


# ---------------------------------------------------------------------------------------
# body encoders
# ---------------------------------------------------------------------------------------
@dataclass
class SignedFrame:
    """One signed chunk as it goes on the wire; tests may tamper with a frame."""

    data: bytes
    signature: str

    def header(self) -> bytes:
        return f"{len(self.data):x};chunk-signature={self.signature}\r\n".encode("ascii")

    def render(self, *, final_with_trailer: bool = False) -> bytes:
        if final_with_trailer:
            return self.header()
        return self.header() + self.data + b"\r\n"


@dataclass
class SignedBody:
    """A signed aws-chunked body: data frames, the final zero frame, optional trailer."""

    frames: list[SignedFrame]  # data frames, then the final empty frame
    trailers: list[tuple[str, str]] = field(default_factory=list)
    trailer_signature: str | None = None

    def render(self) -> bytes:
        out = bytearray()
        for frame in self.frames[:-1]:
            out += frame.render()
        if self.trailer_signature is None:
            out += self.frames[-1].render()
        else:
            out += self.frames[-1].render(final_with_trailer=True)
            for name, value in self.trailers:
                out += f"{name}:{value}\r\n".encode("ascii")
            out += f"x-amz-trailer-signature:{self.trailer_signature}\r\n\r\n".encode("ascii")
        return bytes(out)


def encode_signed(
    chunks: Iterable[bytes], signer: ChunkSigner, trailers: Iterable[tuple[str, str]] | None = None
) -> SignedBody:
    """Encode ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` (``-TRAILER`` when ``trailers`` given)."""
    frames = [SignedFrame(c, signer.sign_chunk(c)) for c in chunks if c]
    frames.append(SignedFrame(b"", signer.sign_chunk(b"")))
    if trailers is None:
        return SignedBody(frames)
    trailer_list = list(trailers)
    return SignedBody(frames, trailer_list, signer.sign_trailer(trailer_list))


def iter_unsigned(chunks: Iterable[bytes], trailers: Iterable[tuple[str, str]] = ()) -> Iterator[bytes]:
    """Yield a ``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` body piece by piece (as botocore does)."""
    for chunk in chunks:
        if chunk:
            yield f"{len(chunk):x}\r\n".encode("ascii") + chunk + b"\r\n"
    tail = b"0\r\n" + b"".join(f"{n}:{v}\r\n".encode("ascii") for n, v in trailers) + b"\r\n"
    yield tail


def encode_unsigned(chunks: Iterable[bytes], trailers: Iterable[tuple[str, str]] = ()) -> bytes:
    return b"".join(iter_unsigned(chunks, trailers))


def decoded_length(chunks: Iterable[bytes]) -> int:
    return sum(len(c) for c in chunks)


# ---------------------------------------------------------------------------------------
# request signing (seed signature and presigned URLs come from botocore)
# ---------------------------------------------------------------------------------------
def utc_timestamp(when: datetime.datetime | None = None) -> str:
    when = when or datetime.datetime.now(datetime.UTC)
    return when.astimezone(datetime.UTC).strftime(SIGV4_TIMESTAMP)


class _HeaderSigner(S3SigV4Auth):
    """botocore's S3 SigV4 header signer with a fixed clock and a caller-chosen payload hash.

    The caller must set ``X-Amz-Content-SHA256``; it is signed as given (that is how the
    streaming and unsigned variants are requested).
    """

    def __init__(self, credentials: Credentials, region: str, timestamp: str) -> None:
        super().__init__(credentials, "s3", region)
        self._timestamp = timestamp
        self.signature_hex = ""

    def _modify_request_before_signing(self, request: AWSRequest) -> None:
        SigV4Auth._modify_request_before_signing(self, request)

    def add_auth(self, request: AWSRequest) -> None:
        request.context["timestamp"] = self._timestamp
        self._modify_request_before_signing(request)
        canonical = self.canonical_request(request)
        sts = self.string_to_sign(request, canonical)
        self.signature_hex = self.signature(sts, request)
        self._inject_signature_to_request(request, self.signature_hex)


class _QuerySigner(S3SigV4QueryAuth):
    """botocore's presigned-URL signer with a fixed clock (to mint already-expired URLs)."""

    def __init__(self, credentials: Credentials, region: str, timestamp: str, expires: int) -> None:
        super().__init__(credentials, "s3", region, expires=expires)
        self._timestamp = timestamp

    def add_auth(self, request: AWSRequest) -> None:
        request.context["timestamp"] = self._timestamp
        self._modify_request_before_signing(request)
        canonical = self.canonical_request(request)
        sts = self.string_to_sign(request, canonical)
        self._inject_signature_to_request(request, self.signature(sts, request))


def object_path(bucket: str, key: str = "") -> str:
    """Path-style request path, encoded the way botocore encodes it."""
    path = "/" + quote(bucket, safe="")
    if key:
        path += "/" + quote(key, safe="/~")
    return path


@dataclass
class SignedRequest:
    method: str
    url: str  # full URL as signed (its host may be a virtual host)
    headers: dict[str, str]
    signature: str  # the seed signature
    timestamp: str

    @property
    def path_and_query(self) -> str:
        parts = urlsplit(self.url)
        return parts.path + (f"?{parts.query}" if parts.query else "")


def sign_request(
    method: str,
    url: str,
    *,
    access_key: str,
    secret_key: str,
    region: str = "us-east-1",
    headers: Mapping[str, str] | None = None,
    payload_hash: str = EMPTY_SHA256,
    timestamp: str | None = None,
) -> SignedRequest:
    """Sign a request with an ``Authorization`` header; ``url`` must already be %-encoded.

    ``headers`` are all signed (with ``host`` and ``x-amz-date`` added). ``payload_hash`` is
    the ``x-amz-content-sha256`` value (a hex digest, ``UNSIGNED-PAYLOAD`` or a STREAMING-*
    literal).
    """
    timestamp = timestamp or utc_timestamp()
    hdrs = dict(headers or {})
    if not any(k.lower() == "host" for k in hdrs):
        hdrs["Host"] = urlsplit(url).netloc
    hdrs["X-Amz-Content-SHA256"] = payload_hash
    request = AWSRequest(method=method, url=url, headers=hdrs)
    signer = _HeaderSigner(Credentials(access_key, secret_key), region, timestamp)
    signer.add_auth(request)
    return SignedRequest(
        method=method,
        url=url,
        headers=dict(request.headers.items()),
        signature=signer.signature_hex,
        timestamp=timestamp,
    )


def presign_url(
    method: str,
    url: str,
    *,
    access_key: str,
    secret_key: str,
    region: str = "us-east-1",
    expires: int = 300,
    timestamp: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """A presigned URL (query auth). Give an old ``timestamp`` to get an expired one."""
    timestamp = timestamp or utc_timestamp()
    request = AWSRequest(method=method, url=url, headers=dict(headers or {}))
    signer = _QuerySigner(Credentials(access_key, secret_key), region, timestamp, expires)
    signer.add_auth(request)
    return str(request.url)


# ---------------------------------------------------------------------------------------
# whole streaming uploads
# ---------------------------------------------------------------------------------------
@dataclass
class StreamingUpload:
    """A ready-to-send streaming PUT: headers (with Authorization) and the encoded body."""

    request: SignedRequest
    body: bytes
    signed_body: SignedBody | None  # for signed variants; tests may tamper and re-render

    @property
    def headers(self) -> dict[str, str]:
        return self.request.headers


def build_streaming_put(
    url: str,
    data: bytes,
    *,
    access_key: str,
    secret_key: str,
    region: str = "us-east-1",
    variant: str = STREAMING_SIGNED,
    chunk_size: int = 64 * 1024,
    checksum: str | None = None,
    checksum_value: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    content_length: bool = True,
    timestamp: str | None = None,
) -> StreamingUpload:
    """Build a streaming ``aws-chunked`` PUT of ``data``.

    ``variant`` is one of STREAMING_SIGNED, STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER. For trailer variants ``checksum`` names the algorithm sent
    in the trailer (default crc32); ``checksum_value`` overrides the computed value (to
    send a wrong one). With ``content_length`` False, no Content-Length is set (the caller
    sends the body with ``Transfer-Encoding: chunked``).
    """
    chunks = split_chunks(data, chunk_size)
    trailers: list[tuple[str, str]] | None = None
    headers: dict[str, str] = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Decoded-Content-Length": str(len(data)),
    }
    if variant in (STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER):
        algorithm = (checksum or "crc32").lower()
        name = f"x-amz-checksum-{algorithm}"
        trailers = [(name, checksum_value or checksum_b64(algorithm, data))]
        headers["X-Amz-Trailer"] = name
    elif variant != STREAMING_SIGNED:
        raise ValueError(f"unknown streaming variant {variant!r}")
    headers.update(extra_headers or {})
    timestamp = timestamp or utc_timestamp()

    if variant == STREAMING_UNSIGNED_TRAILER:
        body = encode_unsigned(chunks, trailers or [])
        if content_length:
            headers["Content-Length"] = str(len(body))
        req = sign_request(
            "PUT",
            url,
            access_key=access_key,
            secret_key=secret_key,
            region=region,
            headers=headers,
            payload_hash=variant,
            timestamp=timestamp,
        )
        return StreamingUpload(req, body, None)

    # Signed variants: the encoded length is known before signing (signatures are fixed
    # width), so Content-Length can be part of the seed signature.
    if content_length:
        dummy = encode_signed(chunks, ChunkSigner(b"k", timestamp, "s", "0" * 64), trailers)
        headers["Content-Length"] = str(len(dummy.render()))
    req = sign_request(
        "PUT",
        url,
        access_key=access_key,
        secret_key=secret_key,
        region=region,
        headers=headers,
        payload_hash=variant,
        timestamp=timestamp,
    )
    signer = ChunkSigner.for_request(secret_key, timestamp, region, req.signature)
    signed = encode_signed(chunks, signer, trailers)
    return StreamingUpload(req, signed.render(), signed)
