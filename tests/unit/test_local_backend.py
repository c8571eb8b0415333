"""The local-directory blob backend: atomic publish, aborts leave nothing, ranged reads
(copied or memory-mapped), and blob names that cannot escape the root."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from gateway.backends import local
from gateway.backends.local import INLINE_READ, LocalBlobBackend


async def test_write_commit_read_and_abort(tmp_path: Path) -> None:
    backend = LocalBlobBackend(tmp_path / "blobs")
    try:
        writer = await backend.open_writer("packs/ab/abc.pack")
        await writer.write(b"hello ")
        await writer.write(memoryview(b"world"))
        assert not (tmp_path / "blobs" / "packs" / "ab" / "abc.pack").exists()  # invisible until commit
        await writer.commit()
        assert await backend.read_range("packs/ab/abc.pack", 6, 5) == b"world"
        assert await backend.size("packs/ab/abc.pack") == 11
        with pytest.raises(OSError):
            await backend.read_range("packs/ab/abc.pack", 8, 10)  # short read is an error
        aborted = await backend.open_writer("packs/cd/x.pack")
        await aborted.write(b"partial")
        await aborted.abort()
        assert [n async for n in backend.list()] == ["packs/ab/abc.pack"]
        assert list((tmp_path / "blobs" / ".tmp").iterdir()) == []
        await backend.delete("packs/ab/abc.pack")
        assert [n async for n in backend.list()] == []
    finally:
        await backend.close()


@pytest.mark.parametrize("name", ["", "/etc/passwd", "../x", "packs/../../x", "a//b", "./a", "a/\0b"])
async def test_names_cannot_escape_the_root(tmp_path: Path, name: str) -> None:
    backend = LocalBlobBackend(tmp_path / "blobs")
    try:
        with pytest.raises(ValueError):
            await backend.read_range(name, 0, 1)
    finally:
        await backend.close()


async def test_write_all_appends_every_piece_in_order(tmp_path: Path) -> None:
    backend = LocalBlobBackend(tmp_path / "blobs")
    try:
        pieces = [bytes([i % 256]) * (i * 37 % 5000) for i in range(1500)]  # > IOV_MAX, some empty
        writer = await backend.open_writer("p/big")
        await writer.write_all([memoryview(p) for p in pieces])
        await writer.commit()
        total = b"".join(pieces)
        assert await backend.read_range("p/big", 0, len(total)) == total
    finally:
        await backend.close()


async def test_map_range_reads_exactly_what_read_range_reads(tmp_path: Path) -> None:
    backend = LocalBlobBackend(tmp_path / "blobs")
    try:
        data = random.Random(7).randbytes(3 * 1024 * 1024 + 123)
        writer = await backend.open_writer("packs/ab/m.pack")
        await writer.write(data)
        await writer.commit()
        size = len(data)
        spans = [(0, size), (1, INLINE_READ + 1), (4095, 300_000), (4096, 65_537), (size - 70_000, 70_000)]
        spans += [(5, 10), (size - 1, 1), (100, 0)]  # small ranges: read as read_range does
        for offset, length in spans:
            got = await backend.map_range("packs/ab/m.pack", offset, length)
            assert (
                bytes(got)
                == data[offset : offset + length]
                == await backend.read_range("packs/ab/m.pack", offset, length)
            )
        for offset, length in [(size - 70_000, 70_001), (size, INLINE_READ + 1), (-4096, INLINE_READ + 1)]:
            with pytest.raises(OSError):  # never a map past the end (that would be SIGBUS on access)
                await backend.map_range("packs/ab/m.pack", offset, length)
        with pytest.raises(FileNotFoundError):
            await backend.map_range("packs/ab/none.pack", 0, INLINE_READ + 1)
    finally:
        await backend.close()


async def test_a_mapped_range_outlives_the_blob_being_deleted(tmp_path: Path) -> None:
    """Repacking unlinks packs while a GET may still be decrypting a mapped run of one."""
    backend = LocalBlobBackend(tmp_path / "blobs")
    try:
        data = random.Random(8).randbytes(INLINE_READ * 4)
        writer = await backend.open_writer("packs/cd/gone.pack")
        await writer.write(data)
        await writer.commit()
        view = await backend.map_range("packs/cd/gone.pack", 10, len(data) - 10)
        await backend.delete("packs/cd/gone.pack")
        assert [n async for n in backend.list()] == []
        assert bytes(view) == data[10:]
    finally:
        await backend.close()


async def test_a_failed_publish_leaves_no_temp_file(tmp_path: Path) -> None:
    backend = LocalBlobBackend(tmp_path / "blobs")
    try:
        (tmp_path / "blobs" / "taken").write_bytes(b"a file where the pack's directory would go")
        writer = await backend.open_writer("taken/x.pack")
        await writer.write(b"data")
        with pytest.raises(OSError):
            await writer.commit()
        await writer.abort()  # a no-op now: the failed commit cleaned up itself
        assert list((tmp_path / "blobs" / ".tmp").iterdir()) == []
        assert [n async for n in backend.list()] == ["taken"]
    finally:
        await backend.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
async def test_writes_start_their_writeback_and_still_read_back(tmp_path: Path) -> None:
    assert local._start_writeback is not None  # else every pack's fsync flushes it all at once
    backend = LocalBlobBackend(tmp_path / "blobs")
    try:
        pieces = [random.Random(i).randbytes(100_000 + i) for i in range(5)]
        writer = await backend.open_writer("packs/ef/w.pack")
        for piece in pieces:
            await writer.write(piece)
        await writer.commit()
        assert await backend.read_range("packs/ef/w.pack", 0, sum(map(len, pieces))) == b"".join(pieces)
    finally:
        await backend.close()
