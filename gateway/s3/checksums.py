"""Checksum algorithms of the S3 API: the flexible checksums and Content-MD5.

This module owns everything that turns bytes into the digests S3 talks about:

* the ``x-amz-checksum-*`` algorithms CRC32, CRC32C, CRC64NVME (computed by ``awscrt``,
  which accepts ``bytes``, ``bytearray`` and ``memoryview`` alike), SHA1 and SHA256, plus
  MD5 for ``Content-MD5`` and ETags;
* decoding and validating the base64 digests clients send in headers and trailers;
* the multipart forms: COMPOSITE checksums (``b64(hash(concat(part digests)))-N``),
  FULL_OBJECT CRCs combined from part CRCs without re-reading data, and the multipart
  ETag ``hex(md5(concat(part md5s)))-N``.

CRC digests are big-endian: 4 bytes for CRC32/CRC32C, 8 bytes for CRC64NVME.

Error codes (as S3 returns them):

* an undecodable or wrong-length ``x-amz-checksum-<algo>`` value is ``InvalidRequest``
  "Value for x-amz-checksum-crc32 header is invalid." (``... trailing header ...`` when it
  came in an aws-chunked trailer);
* an invalid ``Content-MD5`` is ``InvalidDigest``;
* a digest that does not match the data is ``BadDigest`` (:func:`check_digest`);
* an unknown algorithm name is ``InvalidRequest``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterable

from awscrt import checksums as _crt

from gateway.s3.errors import S3Error

__all__ = [
    "ALGORITHMS",
    "CRC_ALGORITHMS",
    "DIGEST_SIZES",
    "Checksum",
    "algorithm_from_header",
    "check_digest",
    "combine_full_object_crc",
    "composite_checksum",
    "decode_b64_digest",
    "header_name",
    "multipart_etag",
    "new_checksum",
    "normalize_algorithm",
]

#: The ``x-amz-checksum-*`` algorithms, as S3 spells them (``x-amz-checksum-algorithm``).
ALGORITHMS: tuple[str, ...] = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")
#: The algorithms that support the FULL_OBJECT multipart checksum type.
CRC_ALGORITHMS: tuple[str, ...] = ("CRC32", "CRC32C", "CRC64NVME")
#: Digest length in bytes of every algorithm this module knows, MD5 included.
DIGEST_SIZES: dict[str, int] = {
    "CRC32": 4,
    "CRC32C": 4,
    "CRC64NVME": 8,
    "SHA1": 20,
    "SHA256": 32,
    "MD5": 16,
}

_HEADER_PREFIX = "x-amz-checksum-"
_HEADER_TO_ALGO = {_HEADER_PREFIX + a.lower(): a for a in ALGORITHMS}

_CRC_FUNCS: dict[str, Callable[[bytes, int], int]] = {
    "CRC32": _crt.crc32,
    "CRC32C": _crt.crc32c,
    "CRC64NVME": _crt.crc64nvme,
}
_CRC_COMBINE: dict[str, Callable[[int, int, int], int]] = {
    "CRC32": _crt.combine_crc32,
    "CRC32C": _crt.combine_crc32c,
    "CRC64NVME": _crt.combine_crc64nvme,
}
_HASH_NAMES = {"SHA1": "sha1", "SHA256": "sha256", "MD5": "md5"}

Buffer = bytes | bytearray | memoryview


def _unsupported(algo: str) -> S3Error:
    return S3Error(
        "InvalidRequest",
        "Checksum algorithm provided is unsupported. Please try again with any of the valid types: "
        "[CRC32, CRC32C, CRC64NVME, SHA1, SHA256]",
        ArgumentName="x-amz-checksum-algorithm",
        ArgumentValue=algo,
    )


def normalize_algorithm(algo: str) -> str:
    """The canonical upper-case name of ``algo`` (S3 accepts any case); MD5 included.

    Raises ``InvalidRequest`` for an unknown name.
    """
    name = algo.strip().upper()
    if name not in DIGEST_SIZES:
        raise _unsupported(algo)
    return name


def header_name(algo: str) -> str:
    """``"CRC32"`` -> ``"x-amz-checksum-crc32"`` (MD5 -> ``"content-md5"``)."""
    name = normalize_algorithm(algo)
    if name == "MD5":
        return "content-md5"
    return _HEADER_PREFIX + name.lower()


def algorithm_from_header(name: str) -> str | None:
    """``"X-Amz-Checksum-CRC32"`` -> ``"CRC32"``; ``None`` for any other header.

    Headers that merely share the prefix (``x-amz-checksum-mode``, ``-type``,
    ``-algorithm``) are not checksum values and give ``None``; so does Content-MD5.
    """
    return _HEADER_TO_ALGO.get(name.strip().lower())


class Checksum:
    """A running checksum: feed it with :meth:`update`, read it with :meth:`digest`.

    :meth:`digest` does not finalise: it may be called at any point and updating may go on.
    """

    __slots__ = ("algorithm", "digest_size")

    algorithm: str
    digest_size: int

    def update(self, data: Buffer) -> None:
        raise NotImplementedError

    def digest(self) -> bytes:
        raise NotImplementedError

    def b64(self) -> str:
        """The digest as S3 sends it in ``x-amz-checksum-*`` headers (standard base64)."""
        return base64.b64encode(self.digest()).decode("ascii")

    def hexdigest(self) -> str:
        return self.digest().hex()

    def copy(self) -> Checksum:
        raise NotImplementedError


class _CrcChecksum(Checksum):
    __slots__ = ("_fn", "_value")

    def __init__(self, algo: str, value: int = 0) -> None:
        self.algorithm = algo
        self.digest_size = DIGEST_SIZES[algo]
        self._fn = _CRC_FUNCS[algo]
        self._value = value

    def update(self, data: Buffer) -> None:
        if len(data):
            self._value = self._fn(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self.digest_size, "big")

    def copy(self) -> Checksum:
        return _CrcChecksum(self.algorithm, self._value)


class _HashChecksum(Checksum):
    __slots__ = ("_h",)

    def __init__(self, algo: str, h: hashlib._Hash | None = None) -> None:
        self.algorithm = algo
        self.digest_size = DIGEST_SIZES[algo]
        self._h = h if h is not None else hashlib.new(_HASH_NAMES[algo])

    def update(self, data: Buffer) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()

    def copy(self) -> Checksum:
        return _HashChecksum(self.algorithm, self._h.copy())


def new_checksum(algo: str) -> Checksum:
    """A fresh :class:`Checksum` for ``algo`` (any case; ``MD5`` allowed).

    Raises ``InvalidRequest`` for an unknown algorithm.
    """
    name = normalize_algorithm(algo)
    if name in _CRC_FUNCS:
        return _CrcChecksum(name)
    return _HashChecksum(name)


def _b64decode_strict(value: str) -> bytes | None:
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        return None
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def decode_b64_digest(algo: str, value: str, *, trailing: bool = False) -> bytes:
    """Decode and validate a base64 digest a client sent for ``algo``.

    ``algo`` ``"MD5"`` means ``Content-MD5``: a bad value is ``InvalidDigest``. For the
    ``x-amz-checksum-*`` algorithms a bad value is ``InvalidRequest`` "Value for
    x-amz-checksum-<algo> header is invalid." (``trailing header`` when ``trailing``, for
    values from an aws-chunked trailer). Base64 must be canonical standard base64 with
    padding, and decode to exactly the digest length.
    """
    name = normalize_algorithm(algo)
    digest = _b64decode_strict(value.strip())
    if digest is None or len(digest) != DIGEST_SIZES[name]:
        if name == "MD5":
            raise S3Error("InvalidDigest", "The Content-MD5 you specified was not valid.")
        where = "trailing header" if trailing else "header"
        raise S3Error("InvalidRequest", f"Value for {header_name(name)} {where} is invalid.")
    return digest


def check_digest(algo: str, expected: bytes, actual: bytes) -> None:
    """Raise ``BadDigest`` (with S3's message for ``algo``) unless the digests are equal."""
    if expected == actual:
        return
    name = normalize_algorithm(algo)
    if name == "MD5":
        raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.")
    raise S3Error("BadDigest", f"The {name} you specified did not match the calculated checksum.")


def composite_checksum(algo: str, part_digests: Iterable[bytes]) -> str:
    """The COMPOSITE multipart checksum: ``b64(algo(concat(part digests)))-N``.

    S3 does not offer COMPOSITE for CRC64NVME (FULL_OBJECT only): that is ``InvalidRequest``.
    """
    name = normalize_algorithm(algo)
    if name == "CRC64NVME" or name == "MD5":
        raise S3Error(
            "InvalidRequest",
            f"The COMPOSITE checksum type cannot be used with the {name.lower()} checksum algorithm.",
        )
    outer = new_checksum(name)
    count = 0
    for digest in part_digests:
        outer.update(digest)
        count += 1
    return f"{outer.b64()}-{count}"


def combine_full_object_crc(algo: str, parts: Iterable[tuple[bytes, int]]) -> bytes:
    """The FULL_OBJECT CRC of an object from its parts' ``(crc digest, data length)``.

    Equal to the CRC of the concatenated part data, computed with awscrt's CRC combine
    (no data is re-read). Only CRC algorithms have a FULL_OBJECT form; SHA is
    ``InvalidRequest``. No parts gives the CRC of empty data (all zero bytes).
    """
    name = normalize_algorithm(algo)
    if name not in _CRC_COMBINE:
        raise S3Error(
            "InvalidRequest",
            f"The FULL_OBJECT checksum type cannot be used with the {name.lower()} checksum algorithm.",
        )
    size = DIGEST_SIZES[name]
    combine = _CRC_COMBINE[name]
    value = 0
    first = True
    for digest, length in parts:
        if len(digest) != size:
            raise ValueError(f"{name} part digest must be {size} bytes, got {len(digest)}")
        crc = int.from_bytes(digest, "big")
        value = crc if first else combine(value, crc, length)
        first = False
    return value.to_bytes(size, "big")


def multipart_etag(part_md5s: Iterable[bytes]) -> str:
    """The multipart ETag S3 computes: ``hex(md5(concat(part md5 digests)))-N`` (unquoted)."""
    h = hashlib.md5()
    count = 0
    for digest in part_md5s:
        h.update(digest)
        count += 1
    return f"{h.hexdigest()}-{count}"
