"""Tests for dedup/: chunk ids, sealed records and the pack format."""

from __future__ import annotations

import random
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import blake3
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import IntegrityError, Sealer, WrappedKey, new_dek
from dedup import (
    FLAG_ZSTD,
    FOOTER_LEN,
    HEADER_MAX,
    RECORD_OVERHEAD,
    ChunkLocation,
    CorruptPackError,
    PackWriter,
    SealedChunk,
    chunk_id,
    new_dedup_key,
    new_pack_id,
    open_record,
    parse_footer,
    parse_header,
    parse_record_header,
    parse_trailer,
    parse_trailer_full,
    scan_records,
    seal_chunk,
)

WORDS = [
    "storage", "gateway", "chunk", "pack", "dedup", "object", "bucket", "version", "manifest",
    "the", "of", "and", "a", "to", "in", "is", "that", "for", "it", "with", "as", "on",
]  # fmt: skip


def text_bytes(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    lines = []
    size = 0
    while size < n:
        line = f"{rng.randrange(10**6):06d} " + " ".join(rng.choices(WORDS, k=rng.randrange(4, 14))) + "\n"
        lines.append(line)
        size += len(line)
    return "".join(lines).encode()[:n]


WRAPPED = WrappedKey("local:test", 3, bytes(61))


@dataclass
class Built:
    pack: bytes
    pack_id: str
    sealer: Sealer
    chunks: list[tuple[bytes, bytes, ChunkLocation, SealedChunk]]  # id, plain, location, sealed


def build_pack(payloads: list[bytes], key: bytes | None = None) -> Built:
    sealer = Sealer(new_dek())
    key = key or new_dedup_key()
    pack_id = new_pack_id()
    writer = PackWriter(pack_id, WRAPPED)
    out = [writer.header()]
    chunks = []
    for plain in payloads:
        cid = chunk_id(key, plain)
        sealed = seal_chunk(sealer, cid, plain)
        loc = writer.add(sealed)
        assert loc.offset == sum(len(p) for p in out)
        out.append(sealed.record)
        chunks.append((cid, plain, loc, sealed))
    assert writer.size == sum(len(p) for p in out)
    out.append(writer.trailer())
    return Built(b"".join(out), pack_id, sealer, chunks)


@pytest.fixture(scope="module")
def built() -> Built:
    rng = random.Random(11)
    payloads = [
        rng.randbytes(1 << 20),
        text_bytes(1 << 20, 1),
        rng.randbytes(300_000),
        text_bytes(70_000, 2),
        b"",
        b"tiny",
        text_bytes(5000, 3),
        rng.randbytes(200),
    ]
    return build_pack(payloads)


# -- chunk ids -----------------------------------------------------------------------------


def test_chunk_id_is_keyed_blake3() -> None:
    key, other = new_dedup_key(), new_dedup_key()
    data = b"hello world" * 100
    assert chunk_id(key, data) == blake3.blake3(data, key=key).digest()
    assert len(chunk_id(key, data)) == 32
    assert chunk_id(key, memoryview(data)) == chunk_id(key, data)
    assert chunk_id(key, data) != chunk_id(other, data)
    with pytest.raises(ValueError):
        chunk_id(b"short", data)


# -- whole pack ----------------------------------------------------------------------------


def test_pack_round_trip(built: Built) -> None:
    pack = built.pack
    header = parse_header(pack[:HEADER_MAX])
    assert header.pack_id == built.pack_id
    assert header.wrapped_dek == WRAPPED
    assert header.header_len == built.chunks[0][2].offset

    trailer_len = parse_footer(pack[-FOOTER_LEN:])
    entries = parse_trailer(pack[-trailer_len:], built.pack_id)
    assert [e.location for e in entries] == [loc for _, _, loc, _ in built.chunks]
    assert [e.chunk_id for e in entries] == [cid for cid, _, _, _ in built.chunks]
    full = parse_trailer_full(pack)  # any suffix that ends with the footer works
    assert full.chunks == entries
    assert full.records_end == len(pack) - trailer_len

    view = memoryview(pack)
    for entry, (cid, plain, _, _) in zip(entries, built.chunks, strict=True):
        record = view[entry.offset : entry.offset + entry.length]
        assert open_record(built.sealer, record, entry.chunk_id) == plain
        assert entry.chunk_id == cid


def test_scan_records_matches_trailer(built: Built) -> None:
    scanned = scan_records(built.pack)
    assert scanned.chunks == parse_trailer(built.pack, built.pack_id)
    trailer_len = parse_footer(built.pack)
    no_trailer = built.pack[:-trailer_len]
    assert scan_records(no_trailer).chunks == scanned.chunks


def test_compression_flag(built: Built) -> None:
    sealed = [c[3] for c in built.chunks]
    for i in (1, 3, 6):  # text: stored compressed
        assert sealed[i].flags & FLAG_ZSTD
        assert len(sealed[i].record) < 0.5 * sealed[i].plain_len
    for i in (0, 2, 7):  # random: stored raw
        assert sealed[i].flags == 0
        assert len(sealed[i].record) == sealed[i].plain_len + RECORD_OVERHEAD
    assert sealed[4].flags == sealed[5].flags == 0  # empty and tiny chunks


def test_header_and_wrapped_dek_fields() -> None:
    wrapped = WrappedKey("arn:aws:kms:eu-west-1:123456789012:key/ab-cd", 42, bytes(range(200)))
    writer = PackWriter("pack-01", wrapped)
    header = parse_header(writer.header() + b"trailing bytes are ignored")
    assert header.wrapped_dek == wrapped
    assert header.pack_id == "pack-01"
    assert header.header_len == len(writer.header()) <= HEADER_MAX


def test_empty_pack() -> None:
    writer = PackWriter(new_pack_id(), WRAPPED)
    pack = writer.header() + writer.trailer()
    assert parse_trailer(pack, writer.pack_id) == []


def test_writer_rules() -> None:
    sealer = Sealer(new_dek())
    writer = PackWriter(new_pack_id(), WRAPPED)
    sealed = seal_chunk(sealer, bytes(32), b"data")
    with pytest.raises(ValueError):
        writer.add(SealedChunk(bytes([1] * 32), sealed.record, sealed.plain_len, sealed.flags))
    writer.add(sealed)
    assert writer.count == 1
    writer.trailer()
    with pytest.raises(RuntimeError):
        writer.add(sealed)
    with pytest.raises(ValueError):
        PackWriter("bad/pack id", WRAPPED)
    with pytest.raises(ValueError):
        seal_chunk(sealer, b"short id", b"data")


# -- corruption ----------------------------------------------------------------------------


def test_every_byte_flip_of_a_small_record_raises() -> None:
    sealer = Sealer(new_dek())
    for plain in (text_bytes(3000, 4), random.Random(5).randbytes(150)):
        cid = chunk_id(new_dedup_key(), plain)
        record = seal_chunk(sealer, cid, plain).record
        assert open_record(sealer, record, cid) == plain
        for i in range(len(record)):
            bad = bytearray(record)
            bad[i] ^= 0x04
            with pytest.raises(IntegrityError):  # CorruptPackError is an IntegrityError
                open_record(sealer, bytes(bad), cid)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_byte_flip_of_a_record_raises(built: Built, data: st.DataObject) -> None:
    _cid, _plain, _loc, sealed = data.draw(st.sampled_from(built.chunks))
    pos = data.draw(st.integers(0, len(sealed.record) - 1))
    xor = data.draw(st.integers(1, 255))
    bad = bytearray(sealed.record)
    bad[pos] ^= xor
    with pytest.raises((CorruptPackError, IntegrityError)):
        open_record(built.sealer, bytes(bad), sealed.chunk_id)


def test_truncated_or_extended_record_raises(built: Built) -> None:
    cid, _plain, _loc, sealed = built.chunks[1]
    for cut in (0, 10, 47, 48, 60, len(sealed.record) - 1):
        with pytest.raises(CorruptPackError):
            open_record(built.sealer, sealed.record[:cut], cid)
    with pytest.raises(CorruptPackError):
        open_record(built.sealer, sealed.record + b"\0", cid)


def test_aad_binds_chunk_id(built: Built) -> None:
    _cid, _plain, _loc, sealed = built.chunks[3]
    other = bytes(32)
    moved = sealed.record[:8] + other + sealed.record[40:]  # same record filed under another id
    assert parse_record_header(moved).chunk_id == other
    with pytest.raises(IntegrityError) as info:
        open_record(built.sealer, moved, other)
    assert not isinstance(info.value, CorruptPackError)  # it is the GCM tag that caught it
    with pytest.raises(CorruptPackError, match="expected"):
        open_record(built.sealer, sealed.record, other)  # untouched record, wrong id asked for


def test_record_from_another_pack_fails(built: Built) -> None:
    cid, _plain, _loc, sealed = built.chunks[0]
    with pytest.raises(IntegrityError):
        open_record(Sealer(new_dek()), sealed.record, cid)


def test_truncated_trailer_raises(built: Built) -> None:
    pack = built.pack
    trailer_len = parse_footer(pack)
    tail = pack[-trailer_len:]
    for k in range(len(tail)):
        with pytest.raises(CorruptPackError):
            parse_trailer(tail[k + 1 :], built.pack_id)  # missing its first bytes
    for k in range(1, FOOTER_LEN + 3):
        with pytest.raises(CorruptPackError):
            parse_footer(pack[:-k])  # pack truncated at the end: footer lost
        with pytest.raises(CorruptPackError):
            parse_trailer(pack[:-k], built.pack_id)


def test_every_byte_flip_of_trailer_and_header_raises(built: Built) -> None:
    pack = built.pack
    trailer_len = parse_footer(pack)
    tail = pack[-trailer_len:]
    for i in range(len(tail)):
        bad = bytearray(tail)
        bad[i] ^= 0x10
        with pytest.raises(CorruptPackError):
            parse_trailer(bytes(bad), built.pack_id)
    header_len = parse_header(pack).header_len
    head = pack[:header_len]
    for i in range(header_len):
        bad = bytearray(head)
        bad[i] ^= 0x10
        with pytest.raises(CorruptPackError):
            parse_header(bytes(bad))
    with pytest.raises(CorruptPackError):
        parse_header(head[:-1])


def test_trailer_of_another_pack_is_refused(built: Built) -> None:
    with pytest.raises(CorruptPackError, match="belongs to pack"):
        parse_trailer(built.pack, new_pack_id())


def test_unknown_major_version_is_refused(built: Built) -> None:
    pack = bytearray(built.pack)
    pack[8] = 2  # header major version
    with pytest.raises(CorruptPackError, match="version"):
        parse_header(bytes(pack))
    cid, _plain, _loc, sealed = built.chunks[5]
    record = bytearray(sealed.record)
    record[4] = 2
    with pytest.raises(CorruptPackError, match="version"):
        open_record(built.sealer, bytes(record), cid)
    tail = bytearray(built.pack[-FOOTER_LEN:])
    tail[4] = 2  # footer major version
    with pytest.raises(CorruptPackError, match="version"):
        parse_footer(bytes(tail))


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=400), cut=st.integers(0, 64))
def test_parsers_only_raise_corrupt_pack_error(blob: bytes, cut: int) -> None:
    # Garbage, and garbage behind plausible magics, must never leak IndexError/struct.error.
    head = b"STRPACK\x00\x01\x00\x00\x00" + struct.pack("<I", 16 + len(blob) + 8) + blob
    body = b"STRTRAIL\x01\x00\x00\x00" + blob
    foot = struct.pack("<IB3x", len(body) + FOOTER_LEN, 1)
    candidates = [
        blob,
        b"STRPACK\x00\x01\x00\x00\x00" + struct.pack("<I", 30 + cut) + blob,
        head + struct.pack("<Q", xxhash.xxh64_intdigest(head)),  # valid checksum, garbage fields
        blob + struct.pack("<IB3xQ", 40 + cut, 1, 0) + b"STRTRAIL",
        body + foot + struct.pack("<Q", xxhash.xxh64_intdigest(body + foot)) + b"STRTRAIL",
        b"SREC\x01\x00\x00\x00" + blob,
    ]
    for data in candidates:
        for parse in (
            parse_header,
            parse_footer,
            parse_trailer_full,
            parse_record_header,
            scan_records,
            lambda d: open_record(Sealer(bytes(32)), d, bytes(32)),
        ):
            try:
                parse(data)
            except CorruptPackError:
                pass
            except IntegrityError:
                assert parse not in (parse_header, parse_footer, parse_trailer_full)


# -- concurrency ---------------------------------------------------------------------------


def test_seal_chunk_is_thread_safe() -> None:
    sealer = Sealer(new_dek())
    key = new_dedup_key()
    payloads = [text_bytes(200_000, i) if i % 2 else random.Random(i).randbytes(200_000) for i in range(16)]

    def work(plain: bytes) -> tuple[bytes, SealedChunk]:
        cid = chunk_id(key, plain)
        return cid, seal_chunk(sealer, cid, plain)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, payloads))
        opened = list(pool.map(lambda r: open_record(sealer, r[1].record, r[0]), results))
    assert opened == payloads
