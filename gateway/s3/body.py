"""Request payloads: turn an HTTP body into verified payload bytes.

Handles raw bodies (Content-Length or HTTP chunked) and ``aws-chunked`` bodies (signed
chunks, unsigned chunks with trailers, signed trailers), and collects the digests that must
hold once the last byte is in: Content-MD5, ``x-amz-checksum-*`` (header or trailer), the
signed payload SHA-256, and the MD5 that becomes the ETag. Nothing here stores data; the
caller streams :meth:`PayloadReader.pieces` into the ingest pipeline and calls
:meth:`PayloadReader.verify` before committing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Executor
from typing import Any, Protocol

from gateway.s3.checksums import (
    ALGORITHMS,
    Checksum,
    algorithm_from_header,
    decode_b64_digest,
    header_name,
    new_checksum,
)
from gateway.s3.chunked import AwsChunkedDecoder
from gateway.s3.errors import S3Error
from gateway.s3.sigv4 import ChunkSigner, SigningContext

DEFAULT_CHECKSUM = "CRC64NVME"  # what S3 computes when the client sends none
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_STREAMING = {
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD": (True, False),  # (signed chunks, trailer)
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER": (True, True),
    "STREAMING-UNSIGNED-PAYLOAD-TRAILER": (False, True),
}


class ByteStream(Protocol):
    async def readany(self) -> bytes: ...


class PayloadReader:
    """One request body: its payload pieces, and the checks they must pass."""

    def __init__(
        self,
        stream: ByteStream,
        headers: Mapping[str, str],
        ctx: SigningContext | None,
        pool: Executor,
    ) -> None:
        self._stream = stream
        self._headers = headers
        self._pool = pool
        payload_hash = ctx.payload_hash if ctx else headers.get("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
        self.md5 = hashlib.md5()
        self._sha256 = hashlib.sha256() if _HEX64.match(payload_hash or "") else None
        self._expected_sha256 = payload_hash if self._sha256 else None
        self._decoder: AwsChunkedDecoder | None = None
        self._signed_chunks = False
        mode = _STREAMING.get(payload_hash or "")
        if mode is None and payload_hash and payload_hash.startswith("STREAMING-"):
            raise S3Error("InvalidArgument", f"Unsupported x-amz-content-sha256 value {payload_hash}")
        if mode is not None:
            signed, trailer = mode
            self._signed_chunks = signed
            if signed and ctx is None:
                raise S3Error("AccessDenied", "Signed streaming payloads need a signed request.")
            declared = headers.get("x-amz-decoded-content-length")
            if declared is None:
                raise S3Error("MissingContentLength", "x-amz-decoded-content-length is required.")
            self.expected_length: int | None = _parse_length(declared)
            self._decoder = AwsChunkedDecoder(
                ChunkSigner(ctx) if signed and ctx else None,
                expect_trailer=trailer,
                signed_trailer=signed and trailer,
                decoded_content_length=self.expected_length,
            )
        else:
            raw = headers.get("content-length")
            self.expected_length = _parse_length(raw) if raw is not None else None
            if raw is None and "chunked" not in headers.get("transfer-encoding", "").lower():
                raise S3Error("MissingContentLength")
        self._content_md5 = _content_md5(headers.get("content-md5"))
        self._trailer_algo = self._trailer_algorithm(headers.get("x-amz-trailer"))
        self._header_checksum = self._header_checksum_value()
        algo = self._trailer_algo or (self._header_checksum[0] if self._header_checksum else None)
        sdk_algo = headers.get("x-amz-sdk-checksum-algorithm") or headers.get("x-amz-checksum-algorithm")
        if algo is None and sdk_algo and sdk_algo.upper() in ALGORITHMS:
            algo = sdk_algo.upper()
        self.checksum_algorithm = algo or DEFAULT_CHECKSUM
        self.client_checksum = algo is not None
        self.checksum: Checksum = new_checksum(self.checksum_algorithm)
        self.length = 0

    # -- header interpretation ------------------------------------------------------------
    def _trailer_algorithm(self, trailer: str | None) -> str | None:
        if not trailer:
            return None
        if self._decoder is None:
            raise S3Error("InvalidRequest", "x-amz-trailer requires an aws-chunked body.")
        algo = algorithm_from_header(trailer.strip().lower())
        if algo is None:
            raise S3Error("InvalidRequest", f"Unsupported trailer {trailer}.")
        return algo

    def _header_checksum_value(self) -> tuple[str, bytes] | None:
        found = [
            (algo, self._headers[header_name(algo)])
            for algo in ALGORITHMS
            if header_name(algo) in self._headers
        ]
        if len(found) > 1:
            raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- header.")
        if not found:
            return None
        if self._trailer_algo:
            raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- header or trailer.")
        algo, value = found[0]
        return algo, decode_b64_digest(algo, value)

    # -- streaming ---------------------------------------------------------------------
    @property
    def digests(self) -> list[Any]:
        """Digests the ingest pipeline must update with every payload byte, in order."""
        out: list[Any] = [self.md5, self.checksum]
        if self._sha256 is not None:
            out.append(self._sha256)
        return out

    @property
    def raw_length(self) -> int | None:
        """The payload's length where the HTTP body is the payload itself (no aws-chunked
        framing, a declared length), else None."""
        return self.expected_length if self._decoder is None else None

    @property
    def has_content_md5(self) -> bool:
        return self._content_md5 is not None

    async def _raw(self) -> AsyncIterator[bytes]:
        # aiohttp's readchunk() hands over the pieces it buffered one by one, as received;
        # readany() would join them all into one more copy (~0.7 MiB per busy upload).
        # (b"", True) marks the end of an HTTP chunk, and also the end of an empty body
        # (aiohttp's shared EMPTY_PAYLOAD answers it forever): at_eof() tells them apart.
        readchunk = getattr(self._stream, "readchunk", None)
        at_eof = getattr(self._stream, "at_eof", None)
        while True:
            try:
                if readchunk is None or at_eof is None:
                    data = await self._stream.readany()
                else:
                    data, end_of_http_chunk = await readchunk()
                    if not data and end_of_http_chunk and not at_eof():
                        continue
            except Exception as exc:  # connection lost / malformed HTTP framing
                raise S3Error("IncompleteBody") from exc
            if not data:
                return
            yield data

    async def pieces(self) -> AsyncIterator[bytes | memoryview]:
        """Payload bytes, decoded and signature-checked, in order."""
        decoder = self._decoder
        loop = asyncio.get_running_loop()
        async for data in self._raw():
            if decoder is None:
                self.length += len(data)
                if self.expected_length is not None and self.length > self.expected_length:
                    raise S3Error("IncompleteBody")
                yield data
                continue
            if self._signed_chunks and len(data) > 65536:
                out = await loop.run_in_executor(self._pool, decoder.feed, data)
            else:
                out = decoder.feed(data)
            for piece in out:
                self.length += len(piece)
                yield piece
        if decoder is not None:
            self._trailers = decoder.finish()
        if self.expected_length is not None and self.length != self.expected_length:
            raise S3Error("IncompleteBody")

    # -- verification ------------------------------------------------------------------
    def verify(self) -> dict[str, str]:
        """Check every digest the client declared; return the checksum record to store."""
        md5 = self.md5.digest()
        if self._content_md5 is not None and not hmac.compare_digest(md5, self._content_md5):
            raise S3Error("BadDigest")
        if self._sha256 is not None and self._sha256.hexdigest() != self._expected_sha256:
            raise S3Error("XAmzContentSHA256Mismatch")
        actual = self.checksum.digest()
        expected: bytes | None = None
        if self._header_checksum is not None:
            expected = self._header_checksum[1]
        elif self._trailer_algo is not None:
            trailers = getattr(self, "_trailers", {})
            value = trailers.get(header_name(self._trailer_algo))
            if value is None:
                raise S3Error("InvalidRequest", f"The trailer {header_name(self._trailer_algo)} is missing.")
            expected = decode_b64_digest(self._trailer_algo, value)
        if expected is not None and not hmac.compare_digest(actual, expected):
            raise S3Error(
                "BadDigest",
                f"The {self.checksum_algorithm} you specified did not match the calculated checksum.",
            )
        return {
            "algorithm": self.checksum_algorithm,
            "value": base64.b64encode(actual).decode(),
            "type": "FULL_OBJECT",
        }


def _parse_length(value: str) -> int:
    if not value.isdigit():
        raise S3Error("InvalidArgument", f"Invalid length {value!r}.")
    return int(value)


def _content_md5(value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise S3Error("InvalidDigest") from exc
    if len(digest) != 16:
        raise S3Error("InvalidDigest")
    return digest
