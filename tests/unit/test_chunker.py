"""Tests for chunker/: streaming FastCDC boundaries."""

from __future__ import annotations

import hashlib
import itertools
import random

import pyfastcdc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunker import DEFAULT_PARAMS, ChunkerParams, StreamChunker, chunk_buffer

SMALL = ChunkerParams(min_size=64, avg_size=256, max_size=1024)


def reference(data: bytes, params: ChunkerParams) -> list[bytes]:
    cdc = pyfastcdc.FastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size)
    return [bytes(c.data) for c in cdc.cut_buf(data)]


def stream(
    pieces: list[bytes | bytearray | memoryview],
    params: ChunkerParams,
    batch_size: int | None = None,
    owned: bool = False,
) -> list[bytes]:
    chunker = StreamChunker(params, batch_size=batch_size)
    out: list[memoryview] = []
    for piece in pieces:
        out += chunker.feed(piece, owned=owned)
    out += chunker.finish()
    return [bytes(c) for c in out]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(min(c, len(data)) for c in cuts)
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 12_000),
    cuts=st.lists(st.integers(0, 12_000), max_size=40),
    kinds=st.lists(st.sampled_from(["bytes", "bytearray", "memoryview"]), min_size=1, max_size=8),
    batch=st.sampled_from([None, 1024, 1500, 5000]),
    low_entropy=st.booleans(),
    owned=st.booleans(),
)
def test_boundaries_do_not_depend_on_split(
    seed: int, size: int, cuts: list[int], kinds: list[str], batch: int | None, low_entropy: bool, owned: bool
) -> None:
    rng = random.Random(seed)
    data = bytes(rng.choices(b"ab", k=size)) if low_entropy else rng.randbytes(size)
    wrap = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}
    pieces = [wrap[kinds[i % len(kinds)]](piece) for i, piece in enumerate(split(data, cuts))]
    assert stream(pieces, SMALL, batch_size=batch, owned=owned) == reference(data, SMALL)


def test_one_byte_and_empty_pieces() -> None:
    data = random.Random(7).randbytes(5000)
    pieces: list[bytes | bytearray | memoryview] = []
    for i in range(len(data)):
        pieces += [b"", data[i : i + 1]]
    assert stream(pieces, SMALL) == reference(data, SMALL)


def test_forced_max_size_boundaries() -> None:
    data = bytes(5 * SMALL.max_size + 17)  # zeros never hit the gear mask: every cut is forced
    ref = reference(data, SMALL)
    assert [len(c) for c in ref[:-1]] == [SMALL.max_size] * 5
    for piece_len in (1, 100, SMALL.max_size, SMALL.max_size + 1, len(data)):
        assert stream(split(data, list(range(piece_len, len(data), piece_len))), SMALL) == ref


def test_default_params_large_stream_matches_cut_buf() -> None:
    data = random.Random(1).randbytes(24 << 20)
    ref = reference(data, DEFAULT_PARAMS)
    rng = random.Random(2)
    cuts: list[int] = []
    pos = 0
    while pos < len(data):  # mix of 64 KiB network reads and large zero-copy pieces
        pos += rng.choice([65536, 65536, 1, 3 << 20, 9 << 20])
        cuts.append(pos)
    pieces = split(data, cuts)
    assert stream(pieces, DEFAULT_PARAMS) == ref
    assert stream([bytearray(p) for p in pieces], DEFAULT_PARAMS) == ref
    assert stream([bytearray(p) for p in pieces], DEFAULT_PARAMS, owned=True) == ref
    assert stream(split(data, list(range(0, len(data), 4 << 20))), DEFAULT_PARAMS, owned=True) == ref
    assert [bytes(c) for c in chunk_buffer(data)] == ref


def test_chunks_survive_reuse_of_callers_buffer() -> None:
    data = random.Random(3).randbytes(20_000)
    chunker = StreamChunker(SMALL)
    buf = bytearray(700)
    out: list[memoryview] = []
    for i in range(0, len(data), 700):
        piece = data[i : i + 700]
        buf[: len(piece)] = piece
        out += chunker.feed(memoryview(buf)[: len(piece)])
        buf[:] = b"\xff" * len(buf)  # the caller reuses its read buffer
    out += chunker.finish()
    assert [bytes(c) for c in out] == reference(data, SMALL)
    assert all(c.readonly for c in out)


def test_owned_batches_are_cut_in_place() -> None:
    data = random.Random(8).randbytes(40 << 20)
    step = (9 << 20) + 1000
    batches = [bytearray(data[i : i + step]) for i in range(0, len(data), step)]
    chunker = StreamChunker()
    out: list[memoryview] = []
    for batch in batches:
        out += chunker.feed(batch, owned=True)
    out += chunker.finish()
    assert [bytes(c) for c in out] == reference(data, DEFAULT_PARAMS)
    in_place = sum(len(c) for c in out if any(c.obj is b for b in batches))
    # Only the chunk spanning each batch junction is copied (~2.4 MiB of every 9 MiB here).
    assert in_place > 0.6 * len(data)


def refill(data: bytes, params: ChunkerParams, size: int) -> tuple[list[bytes], list[bool]]:
    """Cut ``data`` the way ingest does: each buffer is the carry taken back from the chunker,
    then up to ``size`` fresh bytes, fed with ``owned=True``. Returns the chunks and, per
    chunk, whether it is a view of the buffer it was cut from (no copy)."""
    chunker = StreamChunker(params)
    chunks: list[memoryview] = []
    buffers: list[bytearray] = []
    pos = 0
    while pos < len(data):
        carry = chunker.take_carry()
        buf = bytearray(carry) + data[pos : pos + size]
        pos += size
        buffers.append(buf)
        chunks += chunker.feed(buf, owned=True)
    chunks += chunker.finish()
    in_place = [any(c.obj is b for b in buffers) for c in chunks]
    return [bytes(c) for c in chunks], in_place


@pytest.mark.parametrize("size", [1, 100, 700, SMALL.max_size, 3 * SMALL.max_size + 5])
def test_take_carry_and_refill_keeps_boundaries(size: int) -> None:
    for seed, low_entropy in ((11, False), (12, True)):
        rng = random.Random(seed)
        data = bytes(rng.choices(b"ab", k=20_000)) if low_entropy else rng.randbytes(20_000)
        chunks, in_place = refill(data, SMALL, size)
        assert chunks == reference(data, SMALL)
        assert all(in_place[:-1])  # the carry went into the next buffer: nothing was copied


def test_take_carry_default_params_large_stream() -> None:
    data = random.Random(13).randbytes(24 << 20)
    for size in (1 << 20, 3 << 20, 4 << 20):
        chunks, in_place = refill(data, DEFAULT_PARAMS, size)
        assert chunks == reference(data, DEFAULT_PARAMS)
        assert all(in_place)


def test_take_carry_hands_back_what_was_not_cut() -> None:
    data = random.Random(14).randbytes(5000)
    chunker = StreamChunker(SMALL)
    first = chunker.feed(data[:3000], owned=True)  # nothing buffered: cut in place
    assert all(c.obj is not None and bytes(c.obj) == data[:3000] for c in first)
    cut = sum(len(c) for c in first)
    carry = chunker.take_carry()
    assert carry.readonly and bytes(carry) == data[cut:3000]
    assert chunker.buffered == 0
    assert chunker.bytes_in == cut
    rest = chunker.feed(bytes(carry) + data[3000:]) + chunker.finish()
    assert [bytes(c) for c in first + rest] == reference(data, SMALL)
    assert chunker.bytes_in == len(data)
    with pytest.raises(RuntimeError):
        chunker.take_carry()


def test_take_carry_of_small_buffered_pieces() -> None:
    data = random.Random(15).randbytes(3000)
    chunker = StreamChunker(SMALL)
    out: list[memoryview] = []
    for i in range(0, 600, 100):  # mutable, not owned: copied into the chunker's buffer
        out += chunker.feed(bytearray(data[i : i + 100]))
    carry = chunker.take_carry()
    assert bytes(carry) == data[sum(len(c) for c in out) : 600]
    out += chunker.feed(bytes(carry) + data[600:]) + chunker.finish()
    assert [bytes(c) for c in out] == reference(data, SMALL)


def test_sizes_within_limits() -> None:
    data = random.Random(4).randbytes(16 << 20)
    chunks = chunk_buffer(data)
    assert b"".join(chunks) == data
    for c in chunks[:-1]:
        assert DEFAULT_PARAMS.min_size <= len(c) <= DEFAULT_PARAMS.max_size
    assert 0 < len(chunks[-1]) <= DEFAULT_PARAMS.max_size


def test_insert_at_start_changes_only_first_chunks() -> None:
    data = random.Random(5).randbytes(32 << 20)

    def digests(buf: bytes) -> list[bytes]:
        return [hashlib.blake2b(c, digest_size=16).digest() for c in chunk_buffer(buf)]

    before, after = digests(data), digests(b"0123456789" + data)
    common = 0
    while common < min(len(before), len(after)) and before[-1 - common] == after[-1 - common]:
        common += 1
    assert len(before) > 10
    assert len(before) - common <= 2
    assert len(after) - common <= 2


def test_empty_input_gives_no_chunks() -> None:
    assert StreamChunker().finish() == []
    chunker = StreamChunker()
    assert chunker.feed(b"") == []
    assert chunker.feed(memoryview(b"")) == []
    assert chunker.finish() == []
    assert chunk_buffer(b"") == []


def test_feed_after_finish_raises() -> None:
    chunker = StreamChunker(SMALL)
    chunker.feed(b"x" * 10)
    assert [bytes(c) for c in chunker.finish()] == [b"x" * 10]
    assert chunker.finish() == []
    with pytest.raises(RuntimeError):
        chunker.feed(b"more")


def test_memory_stays_bounded_between_feeds() -> None:
    chunker = StreamChunker(DEFAULT_PARAMS)
    piece = random.Random(6).randbytes(65536)
    for _ in range(200):
        chunker.feed(piece)
        assert chunker.buffered < 2 * DEFAULT_PARAMS.max_size
    assert chunker.bytes_in == 200 * 65536


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_size": 10},
        {"avg_size": 100 << 20},
        {"min_size": 512 * 1024, "avg_size": 256 * 1024},
        {"max_size": 512 * 1024},
    ],
)
def test_params_validated(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ChunkerParams(**kwargs)
