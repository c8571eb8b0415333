"""Decoder of ``Content-Encoding: aws-chunked`` request bodies (a push parser).

This module owns the aws-chunked framing S3 clients use for streaming uploads::

    <hex-size>[;chunk-signature=<sig>]\\r\\n<data>\\r\\n          (repeated)
    0[;chunk-signature=<sig>]\\r\\n                               (the last chunk)
    [<name>:<value>\\r\\n ...]                                    (trailers, if announced)
    [x-amz-trailer-signature:<sig>\\r\\n]                         (signed trailers only)
    \\r\\n

* ``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` (botocore over https): no chunk signatures,
  trailers such as ``x-amz-checksum-crc32:<b64>``.
* ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``: every chunk, the final 0-size one included, is
  signed in a chain from the request's seed signature (:class:`~gateway.s3.sigv4.ChunkSigner`).
* ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER``: as above, then trailers and their
  ``x-amz-trailer-signature``.

Data may be fed split anywhere. Unsigned chunk data is emitted at once as zero-copy
``memoryview`` slices of what was fed (consume them before reusing a fed buffer); a signed
chunk is held (at most ``max_chunk_size`` bytes) until its signature is verified, so no
unverified byte is ever emitted. Only header and trailer lines are buffered, each capped at
``max_line`` bytes.

Error codes (what S3 answers):

* malformed framing of any kind (bad hex size, missing CRLF, over-long line, missing chunk
  signature, data after the end) and a body that ends early: ``IncompleteBody``;
* a non-final data chunk smaller than 8 KiB: ``InvalidChunkSizeError`` with ``Chunk`` (the
  1-based number of the chunk that followed it) and ``BadChunkSize`` — S3 enforces this for
  signed *and* unsigned streaming (set ``min_chunk_size=0`` to disable);
* a wrong chunk or trailer signature: ``SignatureDoesNotMatch``;
* a malformed trailer line, a duplicate trailer, or trailers when none were announced
  (no ``x-amz-trailer``): ``MalformedTrailerError``;
* a decoded length different from ``X-Amz-Decoded-Content-Length``: ``IncompleteBody``.

The final empty line is required (S3 answers ``IncompleteBody`` without it).
"""

from __future__ import annotations

import hashlib
import re

from gateway.s3.errors import S3Error
from gateway.s3.sigv4 import EMPTY_SHA256, ChunkSigner

__all__ = ["MIN_CHUNK_SIZE", "AwsChunkedDecoder"]

_HEADER = 0  # reading a chunk header line
_DATA = 1  # reading chunk data
_DATA_CRLF = 2  # reading the CRLF after chunk data
_TRAILER = 3  # reading trailer lines after the last chunk, up to the empty line
_DONE = 4

_CRLF = b"\r\n"
_HEX_SIZE_RE = re.compile(rb"[0-9a-fA-F]{1,16}")
_SIGNATURE_EXT_RE = re.compile(rb"chunk-signature=([0-9a-f]{64})")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_TRAILER_SIGNATURE = "x-amz-trailer-signature"
_MAX_TRAILERS = 16
MIN_CHUNK_SIZE = 8192


def _incomplete(reason: str) -> S3Error:
    return S3Error("IncompleteBody", f"The request body terminated unexpectedly ({reason}).")


def _malformed_trailer(reason: str) -> S3Error:
    return S3Error(
        "MalformedTrailerError",
        "The request contained trailing data that was not well-formed or did not conform to our "
        f"published schema ({reason}).",
    )


class AwsChunkedDecoder:
    """Push parser for aws-chunked bodies: :meth:`feed` bytes in, get payload pieces out.

    ``signer`` is given for signed streaming (chunks must carry valid signatures) and
    ``None`` for unsigned. ``expect_trailer`` says whether the request announced trailers
    (``x-amz-trailer``); ``signed_trailer`` (STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER)
    requires an ``x-amz-trailer-signature`` line and implies ``expect_trailer``.
    ``decoded_content_length`` (``X-Amz-Decoded-Content-Length``), if given, is enforced
    as soon as a chunk header would exceed it and again at :meth:`finish`; pass it, since
    unsigned chunks are streamed and otherwise bounded only by their 16-hex-digit size.
    ``max_chunk_size`` bounds a signed chunk (held in memory until verified).
    ``min_chunk_size`` is S3's 8 KiB rule for every chunk but the last data chunk.
    ``max_line`` caps a chunk-header or trailer line, CRLF included.

    If :meth:`feed` raises, pieces it had already decoded in that call are lost (the
    request is failing anyway); the error is sticky for later calls.
    """

    decoded_length: int

    def __init__(
        self,
        signer: ChunkSigner | None,
        expect_trailer: bool,
        signed_trailer: bool,
        max_chunk_size: int = 16 * 1024 * 1024,
        *,
        min_chunk_size: int = MIN_CHUNK_SIZE,
        decoded_content_length: int | None = None,
        max_line: int = 4096,
    ) -> None:
        if signed_trailer and signer is None:
            raise ValueError("signed trailers need a ChunkSigner")
        self.decoded_length = 0
        self._signer = signer
        self._expect_trailer = expect_trailer or signed_trailer
        self._signed_trailer = signed_trailer
        self._max_chunk = max_chunk_size
        self._min_chunk = min_chunk_size
        self._expected_length = decoded_content_length
        self._max_line = max_line
        self._state = _HEADER
        self._line = bytearray()
        self._remaining = 0
        self._crlf_seen = 0
        self._chunks = 0
        self._declared = 0  # sum of the declared chunk sizes so far
        self._last_size: int | None = None
        self._signature = ""
        self._hash: hashlib._Hash | None = None
        self._held: list[memoryview | bytes] = []
        self._held_size = 0
        self._trailers: dict[str, str] = {}
        self._trailer_signed = False
        self._error: S3Error | None = None

    # ------------------------------------------------------------------ public

    @property
    def done(self) -> bool:
        """True once the final empty line has been read."""
        return self._state == _DONE

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview | bytes]:
        """Consume ``data``; return the payload pieces it completed, in order."""
        if self._error is not None:
            raise self._error
        try:
            return self._feed(data)
        except S3Error as exc:
            self._error = exc
            raise

    def finish(self) -> dict[str, str]:
        """End of input: return the trailers (lower-case names); ``IncompleteBody`` if cut short."""
        if self._error is not None:
            raise self._error
        try:
            if self._state != _DONE:
                raise _incomplete("the body ended before the final chunk and trailer section")
            if self._expected_length is not None:
                self.check_decoded_length(self._expected_length)
        except S3Error as exc:
            self._error = exc
            raise
        return dict(self._trailers)

    def check_decoded_length(self, expected: int) -> None:
        """``IncompleteBody`` unless exactly ``expected`` payload bytes were decoded."""
        if self.decoded_length != expected:
            raise S3Error(
                "IncompleteBody",
                "You did not provide the number of bytes specified by the "
                f"X-Amz-Decoded-Content-Length HTTP header ({expected} expected, "
                f"{self.decoded_length} received).",
            )

    # ------------------------------------------------------------------ parsing

    def _feed(self, data: bytes | bytearray | memoryview) -> list[memoryview | bytes]:
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        # A bytes object never changes, so views of it may be held; anything else is copied
        # before it is held across feed() calls.
        immutable = isinstance(data, bytes)
        searchable = data if isinstance(data, bytes | bytearray) else None
        out: list[memoryview | bytes] = []
        pos = 0
        n = len(mv)
        while pos < n:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, n - pos)
                piece = mv[pos : pos + take]
                pos += take
                self._remaining -= take
                if self._hash is None:
                    out.append(piece)
                    self.decoded_length += take
                else:
                    self._hash.update(piece)
                    self._held.append(piece if immutable else bytes(piece))
                    self._held_size += take
                if self._remaining == 0:
                    if self._hash is not None:
                        self._release_signed_chunk(out)
                    self._state = _DATA_CRLF
                    self._crlf_seen = 0
            elif state == _DATA_CRLF:
                want = _CRLF[self._crlf_seen :]
                got = mv[pos : pos + len(want)]
                if got != want[: len(got)]:
                    raise _incomplete("chunk data is not followed by CRLF")
                pos += len(got)
                self._crlf_seen += len(got)
                if self._crlf_seen == 2:
                    self._state = _HEADER
            elif state == _DONE:
                raise _incomplete("data after the end of the aws-chunked body")
            else:
                line, pos = self._take_line(mv, searchable, pos, n)
                if line is None:
                    break
                if state == _HEADER:
                    self._on_chunk_header(line)
                else:
                    self._on_trailer_line(line)
        return out

    def _take_line(
        self, mv: memoryview, searchable: bytes | bytearray | None, pos: int, n: int
    ) -> tuple[bytes | None, int]:
        """The next CRLF-terminated line (without CRLF), or ``None`` after buffering a partial one."""
        room = self._max_line - len(self._line)
        end = min(n, pos + room)
        if searchable is not None:
            lf = searchable.find(b"\n", pos, end)
        else:
            lf = bytes(mv[pos:end]).find(b"\n")
            if lf >= 0:
                lf += pos
        if lf < 0:
            if end - pos >= room:
                raise _incomplete(f"a chunk header or trailer line is longer than {self._max_line} bytes")
            self._line += mv[pos:n]
            return None, n
        if self._line:
            self._line += mv[pos:lf]
            raw = bytes(self._line)
            self._line.clear()
        else:
            raw = bytes(mv[pos:lf])
        if not raw.endswith(b"\r") or b"\r" in raw[:-1]:
            raise _incomplete("a line is not terminated by CRLF")
        return raw[:-1], lf + 1

    def _on_chunk_header(self, line: bytes) -> None:
        size_field, sep, extension = line.partition(b";")
        if not _HEX_SIZE_RE.fullmatch(size_field):
            raise _incomplete("invalid chunk size")
        size = int(size_field, 16)
        self._chunks += 1
        signature = ""
        if self._signer is not None:
            match = _SIGNATURE_EXT_RE.fullmatch(extension) if sep else None
            if match is None:
                raise _incomplete("a signed chunk has no chunk-signature")
            signature = match.group(1).decode("ascii")
        if size > 0 and self._last_size is not None and self._last_size < self._min_chunk:
            raise S3Error(
                "InvalidChunkSizeError",
                f"Only the last chunk is allowed to have a size less than {self._min_chunk} bytes",
                Chunk=str(self._chunks),
                BadChunkSize=str(self._last_size),
            )
        if self._signer is not None and size > self._max_chunk:
            raise _incomplete(f"chunk of {size} bytes exceeds the {self._max_chunk}-byte limit")
        if self._expected_length is not None and self._declared + size > self._expected_length:
            raise S3Error(
                "IncompleteBody",
                "The chunks carry more data than X-Amz-Decoded-Content-Length "
                f"({self._expected_length} bytes) declares.",
            )
        self._declared += size
        if size == 0:
            if self._signer is not None:
                self._signer.verify_chunk(signature, EMPTY_SHA256)
            self._state = _TRAILER
            return
        self._last_size = size
        self._remaining = size
        if self._signer is not None:
            self._signature = signature
            self._hash = hashlib.sha256()
        self._state = _DATA

    def _release_signed_chunk(self, out: list[memoryview | bytes]) -> None:
        assert self._signer is not None and self._hash is not None
        self._signer.verify_chunk(self._signature, self._hash.hexdigest())
        out.extend(self._held)
        self.decoded_length += self._held_size
        self._held = []
        self._held_size = 0
        self._hash = None

    def _on_trailer_line(self, line: bytes) -> None:
        if not line:
            if self._signed_trailer and not self._trailer_signed:
                raise _incomplete("the trailer has no x-amz-trailer-signature")
            self._state = _DONE
            return
        if not self._expect_trailer:
            raise _malformed_trailer("trailers were sent but no x-amz-trailer was declared")
        if self._trailer_signed:
            raise _malformed_trailer("a trailer follows x-amz-trailer-signature")
        name_raw, sep, value_raw = line.partition(b":")
        try:
            name = name_raw.decode("ascii").strip().lower()
            value = " ".join(value_raw.decode("ascii").split())
        except UnicodeDecodeError:
            raise _malformed_trailer("non-ASCII trailer") from None
        if not sep or not _TOKEN_RE.fullmatch(name):
            raise _malformed_trailer("a trailer line is not name:value")
        if name == _TRAILER_SIGNATURE:
            if self._signer is not None and self._signed_trailer:
                self._signer.verify_trailer(value, self._canonical_trailers())
            self._trailer_signed = True
            return
        if name in self._trailers:
            raise _malformed_trailer(f"duplicate trailer {name}")
        if len(self._trailers) >= _MAX_TRAILERS:
            raise _malformed_trailer("too many trailers")
        self._trailers[name] = value

    def _canonical_trailers(self) -> bytes:
        return "".join(f"{k}:{v}\n" for k, v in sorted(self._trailers.items())).encode("ascii")
