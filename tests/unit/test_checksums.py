"""Tests for gateway.s3.checksums: known vectors, independent reference CRCs, multipart forms."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.s3.checksums import (
    ALGORITHMS,
    CRC_ALGORITHMS,
    DIGEST_SIZES,
    algorithm_from_header,
    check_digest,
    combine_full_object_crc,
    composite_checksum,
    decode_b64_digest,
    header_name,
    multipart_etag,
    new_checksum,
)
from gateway.s3.errors import S3Error

CHECK = b"123456789"


# --- independent bit-by-bit reference CRCs (reflected, init and xorout all ones) -------------


def _reference_crc(data: bytes, poly_reflected: int, width: int) -> int:
    mask = (1 << width) - 1
    crc = mask
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly_reflected if crc & 1 else crc >> 1
    return crc ^ mask


def reference_digest(algo: str, data: bytes) -> bytes:
    if algo == "CRC32":
        return zlib.crc32(data).to_bytes(4, "big")
    if algo == "CRC32C":
        return _reference_crc(data, 0x82F63B78, 32).to_bytes(4, "big")
    if algo == "CRC64NVME":
        return _reference_crc(data, 0x9A6C9329AC4BC9B5, 64).to_bytes(8, "big")
    return hashlib.new(algo.lower(), data).digest()


# --- known vectors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algo", "expected"),
    [
        ("CRC32", 0xCBF43926),
        ("CRC32C", 0xE3069283),
        ("CRC64NVME", 0xAE8B14860A799888),
    ],
)
def test_crc_check_values(algo: str, expected: int) -> None:
    c = new_checksum(algo)
    c.update(CHECK)
    assert c.digest() == expected.to_bytes(DIGEST_SIZES[algo], "big")
    assert c.b64() == base64.b64encode(expected.to_bytes(DIGEST_SIZES[algo], "big")).decode()
    assert reference_digest(algo, CHECK) == c.digest()


def test_known_b64_values() -> None:
    # Values seen on the wire: botocore's crc32 of b"hello" and the AWS trailer example
    # (66560 bytes of "a", x-amz-checksum-crc32c:sOO8/Q==).
    c = new_checksum("CRC32")
    c.update(b"hello")
    assert c.b64() == "NhCmhg=="
    c = new_checksum("CRC32C")
    c.update(b"a" * 66560)
    assert c.b64() == "sOO8/Q=="


@pytest.mark.parametrize("algo", ["SHA1", "SHA256", "MD5"])
def test_hash_algorithms_match_hashlib(algo: str) -> None:
    c = new_checksum(algo)
    c.update(CHECK)
    assert c.digest() == hashlib.new(algo.lower(), CHECK).digest()
    assert c.hexdigest() == hashlib.new(algo.lower(), CHECK).hexdigest()


@pytest.mark.parametrize("algo", [*ALGORITHMS, "MD5"])
def test_empty_digest_and_sizes(algo: str) -> None:
    c = new_checksum(algo)
    assert len(c.digest()) == DIGEST_SIZES[algo] == c.digest_size
    assert c.digest() == reference_digest(algo, b"")
    assert c.algorithm == algo


@pytest.mark.parametrize("algo", [*ALGORITHMS, "MD5"])
def test_accepts_memoryview_and_bytearray(algo: str) -> None:
    data = bytes(range(256)) * 5
    a, b, c = new_checksum(algo), new_checksum(algo), new_checksum(algo)
    a.update(data)
    b.update(bytearray(data))
    view = memoryview(b"xx" + data + b"yy")[2:-2]
    c.update(view)
    assert a.digest() == b.digest() == c.digest() == reference_digest(algo, data)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_copy_and_digest_does_not_finalise(algo: str) -> None:
    c = new_checksum(algo)
    c.update(b"abc")
    snapshot = c.copy()
    first = c.digest()
    c.update(b"def")
    assert snapshot.digest() == first == reference_digest(algo, b"abc")
    assert c.digest() == reference_digest(algo, b"abcdef")


@settings(max_examples=60, deadline=None)
@given(
    algo=st.sampled_from([*ALGORITHMS, "MD5"]),
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 300)),
)
def test_incremental_equals_one_shot_and_reference(algo: str, data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    c = new_checksum(algo)
    prev = 0
    for p in [*points, len(data)]:
        c.update(memoryview(data)[prev:p])
        prev = p
    assert c.digest() == reference_digest(algo, data)


# --- names --------------------------------------------------------------------------------


def test_header_names_round_trip() -> None:
    for algo in ALGORITHMS:
        name = header_name(algo)
        assert name == "x-amz-checksum-" + algo.lower()
        assert algorithm_from_header(name) == algo
        assert algorithm_from_header(name.upper()) == algo
        assert header_name(algo.lower()) == name
    assert header_name("md5") == "content-md5"


@pytest.mark.parametrize(
    "name",
    [
        "x-amz-checksum-mode",
        "x-amz-checksum-type",
        "x-amz-checksum-algorithm",
        "content-md5",
        "x-amz-checksum-md5",
        "",
    ],
)
def test_non_checksum_headers(name: str) -> None:
    assert algorithm_from_header(name) is None


@pytest.mark.parametrize("bad", ["CRC16", "sha512", "", "crc-32"])
def test_unknown_algorithm(bad: str) -> None:
    with pytest.raises(S3Error) as e:
        new_checksum(bad)
    assert e.value.code == "InvalidRequest"
    with pytest.raises(S3Error):
        header_name(bad)


def test_algorithm_names_are_case_insensitive() -> None:
    assert new_checksum("crc64nvme").algorithm == "CRC64NVME"
    assert new_checksum("Sha256").algorithm == "SHA256"


# --- decoding client digests ------------------------------------------------------------------


@pytest.mark.parametrize("algo", [*ALGORITHMS, "MD5"])
def test_decode_valid(algo: str) -> None:
    digest = reference_digest(algo, CHECK)
    assert decode_b64_digest(algo, base64.b64encode(digest).decode()) == digest


@pytest.mark.parametrize(
    "value",
    [
        "",
        "NhCmhg",  # missing padding
        "NhCmhg==AA",  # data after padding
        "NhC*hg==",  # not base64
        "AAAAAAAA",  # 6 bytes: wrong length for crc32
        "AAA=",  # 2 bytes
        "NhCm hg==",  # inner space
        "Nh€mhg==",  # non-ASCII
    ],
)
def test_decode_invalid_checksum_header(value: str) -> None:
    with pytest.raises(S3Error) as e:
        decode_b64_digest("CRC32", value)
    assert e.value.code == "InvalidRequest"
    assert e.value.message == "Value for x-amz-checksum-crc32 header is invalid."
    with pytest.raises(S3Error) as e:
        decode_b64_digest("crc32", value, trailing=True)
    assert e.value.message == "Value for x-amz-checksum-crc32 trailing header is invalid."


def test_decode_wrong_length_for_each_algorithm() -> None:
    for algo in ALGORITHMS:
        too_long = base64.b64encode(b"\0" * (DIGEST_SIZES[algo] + 1)).decode()
        with pytest.raises(S3Error) as e:
            decode_b64_digest(algo, too_long)
        assert e.value.code == "InvalidRequest"
        assert header_name(algo) in e.value.message


@pytest.mark.parametrize("value", ["", "abc", base64.b64encode(b"x" * 15).decode(), "!!!!"])
def test_decode_invalid_content_md5(value: str) -> None:
    with pytest.raises(S3Error) as e:
        decode_b64_digest("MD5", value)
    assert e.value.code == "InvalidDigest"


def test_check_digest() -> None:
    check_digest("CRC32", b"1234", b"1234")
    with pytest.raises(S3Error) as e:
        check_digest("crc32", b"1234", b"1235")
    assert e.value.code == "BadDigest"
    assert e.value.message == "The CRC32 you specified did not match the calculated checksum."
    with pytest.raises(S3Error) as e:
        check_digest("MD5", b"a" * 16, b"b" * 16)
    assert e.value.code == "BadDigest"
    assert "Content-MD5" in e.value.message


# --- multipart ----------------------------------------------------------------------------


def test_multipart_etag_vector() -> None:
    parts = [b"part one " * 1000, b"part two", b""]
    md5s = [hashlib.md5(p).digest() for p in parts]
    expected = hashlib.md5(b"".join(md5s)).hexdigest() + "-3"
    assert multipart_etag(md5s) == expected
    # a single part still carries the -1 suffix
    assert (
        multipart_etag([hashlib.md5(b"x").digest()])
        == hashlib.md5(hashlib.md5(b"x").digest()).hexdigest() + "-1"
    )
    assert not multipart_etag(md5s).startswith('"')


@pytest.mark.parametrize("algo", ["CRC32", "CRC32C", "SHA1", "SHA256"])
def test_composite_checksum(algo: str) -> None:
    parts = [b"a" * 100, b"b" * 7, b"c"]
    digests = [reference_digest(algo, p) for p in parts]
    expected = base64.b64encode(reference_digest(algo, b"".join(digests))).decode() + "-3"
    assert composite_checksum(algo, digests) == expected
    assert composite_checksum(algo.lower(), iter(digests)) == expected


def test_composite_rejects_crc64nvme() -> None:
    with pytest.raises(S3Error) as e:
        composite_checksum("CRC64NVME", [b"\0" * 8])
    assert e.value.code == "InvalidRequest"


@pytest.mark.parametrize("algo", CRC_ALGORITHMS)
def test_full_object_combine_vector(algo: str) -> None:
    parts = [b"1234", b"", b"56789"]
    combined = combine_full_object_crc(algo, [(reference_digest(algo, p), len(p)) for p in parts])
    assert combined == reference_digest(algo, CHECK)


@settings(max_examples=50, deadline=None)
@given(algo=st.sampled_from(CRC_ALGORITHMS), parts=st.lists(st.binary(max_size=200), max_size=8))
def test_full_object_combine_equals_concatenation(algo: str, parts: list[bytes]) -> None:
    pairs = []
    for p in parts:
        c = new_checksum(algo)
        c.update(p)
        pairs.append((c.digest(), len(p)))
    whole = new_checksum(algo)
    whole.update(b"".join(parts))
    assert combine_full_object_crc(algo, pairs) == whole.digest()


def test_full_object_combine_large_lengths() -> None:
    # Combining must use the data length, not the digest length: check with long parts.
    a, b = b"x" * 1_000_003, b"y" * 65_537
    for algo in CRC_ALGORITHMS:
        pairs = [(_crt_digest(algo, a), len(a)), (_crt_digest(algo, b), len(b))]
        assert combine_full_object_crc(algo, pairs) == _crt_digest(algo, a + b)
    assert combine_full_object_crc("CRC32", [(zlib.crc32(a).to_bytes(4, "big"), len(a))]) == _crt_digest(
        "CRC32", a
    )


def _crt_digest(algo: str, data: bytes) -> bytes:
    c = new_checksum(algo)
    c.update(data)
    return c.digest()


@pytest.mark.parametrize("algo", ["SHA1", "SHA256", "MD5"])
def test_full_object_rejects_hashes(algo: str) -> None:
    with pytest.raises(S3Error) as e:
        combine_full_object_crc(algo, [(b"\0" * DIGEST_SIZES[algo], 1)])
    assert e.value.code == "InvalidRequest"


def test_full_object_empty_and_bad_digest() -> None:
    assert combine_full_object_crc("CRC64NVME", []) == b"\0" * 8
    with pytest.raises(ValueError):
        combine_full_object_crc("CRC32", [(b"\0" * 8, 1)])


def test_agrees_with_botocore_checksums() -> None:
    # botocore's own flexible-checksum classes: what clients will send us.
    from botocore import httpchecksum

    data = b"The quick brown fox jumps over the lazy dog" * 100
    for algo, cls in [
        ("CRC32", httpchecksum.CrtCrc32Checksum),
        ("CRC32C", httpchecksum.CrtCrc32cChecksum),
        ("CRC64NVME", httpchecksum.CrtCrc64NvmeChecksum),
        ("SHA1", httpchecksum.Sha1Checksum),
        ("SHA256", httpchecksum.Sha256Checksum),
    ]:
        theirs = cls()
        theirs.update(data)
        ours = new_checksum(algo)
        ours.update(data)
        assert ours.b64() == theirs.b64digest()
