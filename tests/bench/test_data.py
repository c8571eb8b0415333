"""Payload generation (bench.data) and the versioned corpus (bench.corpus)."""

from __future__ import annotations

import hashlib

import pytest
import zstandard

from bench.corpus import CorpusSpec, versions
from bench.data import STAMP_LEN, STAMP_PERIOD, PayloadSource, stamp_positions
from bench.units import KiB, MiB
from chunker import ChunkerParams, chunk_buffer
from dedup import chunk_id

KEY = b"k" * 32


def ids(data: bytes) -> set[bytes]:
    return {chunk_id(KEY, c) for c in chunk_buffer(data, ChunkerParams())}


def test_windows_equal_whole_object() -> None:
    src = PayloadSource("random", 3 * MiB + 1234, base=bytes(range(256)) * 4096)  # 1 MiB base repeats
    whole = src.object_bytes(7)
    assert len(whole) == src.size
    pieces = []
    buf = bytearray(100_003)  # odd window size: stamps straddle window edges
    offset = 0
    while offset < src.size:
        n = src.fill(buf, 7, offset)
        pieces.append(bytes(buf[:n]))
        offset += n
    assert b"".join(pieces) == whole


def test_stamp_positions() -> None:
    size = 3 * STAMP_PERIOD + 100
    everything = stamp_positions(size, 0, size)
    assert everything == [0, STAMP_PERIOD, 2 * STAMP_PERIOD, 3 * STAMP_PERIOD, size - STAMP_LEN]
    assert stamp_positions(size, 1, STAMP_PERIOD) == [0]  # stamp at 0 overlaps [1, ...)
    assert stamp_positions(size, STAMP_LEN, STAMP_PERIOD) == []
    assert stamp_positions(10, 0, 10) == []  # too small to stamp
    assert stamp_positions(4096, 0, 4096) == [0, 4096 - STAMP_LEN]


@pytest.mark.parametrize("kind", ["random", "text"])
def test_objects_never_dedup(kind: str) -> None:
    """Distinct objects share no chunk, and a repeated base block does not dedup within one."""
    base = PayloadSource(kind, MiB).base  # 1 MiB base, objects of 6 MiB repeat it 6 times
    src = PayloadSource(kind, 6 * MiB, base=base)
    a, b = src.object_bytes(1), src.object_bytes(2)
    assert a != b
    ids_a, ids_b = ids(a), ids(b)
    assert len(ids_a) == len(chunk_buffer(a))  # no duplicate chunk inside the object
    assert not ids_a & ids_b


def test_small_objects_unique_and_text_compresses() -> None:
    src = PayloadSource("text", 4 * KiB)
    assert src.object_bytes(1) != src.object_bytes(2)
    big = PayloadSource("text", 4 * MiB).object_bytes(3)
    assert len(zstandard.ZstdCompressor(level=1).compress(big)) < 0.4 * len(big)


def _digests(spec: CorpusSpec) -> list[str]:
    return [hashlib.sha256(v).hexdigest() for v in versions(spec)]


@pytest.mark.parametrize("kind", ["text", "random"])
def test_corpus_is_deterministic(kind: str) -> None:
    spec = CorpusSpec(versions=4, size=2 * MiB, kind=kind, seed=42)
    first = _digests(spec)
    assert first == _digests(spec)
    assert len(set(first)) == 4  # every version differs from the others
    assert _digests(CorpusSpec(versions=4, size=2 * MiB, kind=kind, seed=43))[1:] != first[1:]


def test_corpus_versions_are_small_edits() -> None:
    spec = CorpusSpec(versions=3, size=8 * MiB, kind="random", seed=5, edits=1, max_edit=4 * KiB)
    vs = list(versions(spec))
    assert all(abs(len(v) - spec.size) <= 2 * spec.max_edit for v in vs)
    shared = ids(vs[0]) & ids(vs[1])
    assert len(shared) >= len(ids(vs[0])) // 2  # most chunks survive one round of edits
