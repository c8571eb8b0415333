"""The local-directory blob backend: atomic publish, aborts leave nothing, ranged reads
(copied or memory-mapped), and blob names that cannot escape the root."""

from __future__ import annotations

import errno
import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# -- direct writes (storage.direct_writes): O_DIRECT through an aligned staging buffer -----


def _has_o_direct(fd: int) -> bool:
    info = Path(f"/proc/self/fdinfo/{fd}").read_text()
    flags = next(line for line in info.splitlines() if line.startswith("flags:"))
    return bool(int(flags.split()[1], 8) & os.O_DIRECT)


def _direct_supported(directory: Path) -> bool:
    probe = directory / ".odirect-probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
    return True


linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="O_DIRECT and fdinfo are Linux's"
)

# piece sizes around the alignment and the staging buffer (DIRECT_STAGE)
_SIZES = st.sampled_from(
    [0, 1, 4095, 4096, 4097, 65_536, local.DIRECT_STAGE - 1, local.DIRECT_STAGE, local.DIRECT_STAGE + 4097]
) | st.integers(0, 3 * local.DIRECT_STAGE)


@linux_only
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(st.lists(_SIZES, max_size=4), max_size=5), seed=st.integers(0, 2**32))
async def test_direct_writes_commit_exactly_the_bytes_written(
    tmp_path_factory: pytest.TempPathFactory, calls: list[list[int]], seed: int
) -> None:
    root = tmp_path_factory.mktemp("direct")
    if not _direct_supported(root):
        pytest.skip("this filesystem refuses O_DIRECT")
    rng = random.Random(seed)
    backend = LocalBlobBackend(root / "blobs", direct_writes=True)
    try:
        writer = await backend.open_writer("packs/d/x.pack")
        assert writer.direct and _has_o_direct(writer._fd)
        written = bytearray()
        for sizes in calls:
            pieces = [rng.randbytes(n) for n in sizes]
            await writer.write_all([memoryview(p) for p in pieces])
            written += b"".join(pieces)
        assert writer.direct  # aligned blocks went straight to the disk; nothing fell back
        await writer.commit()
        assert (root / "blobs" / "packs" / "d" / "x.pack").read_bytes() == written
        assert list((root / "blobs" / ".tmp").iterdir()) == []
    finally:
        await backend.close()


@linux_only
@pytest.mark.parametrize("refusal", ["einval", "short"])
async def test_a_refused_or_short_direct_write_falls_back_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    """The kernel refuses a direct write (EINVAL: an alignment this code did not expect) or
    writes only part of it: the descriptor drops O_DIRECT and every byte still lands."""
    if not _direct_supported(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    real = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if not _has_o_direct(fd):
            return real(fd, data, offset)
        if refusal == "einval":
            raise OSError(errno.EINVAL, "refused")
        return real(fd, memoryview(data)[: len(data) // 2 // 4096 * 4096], offset)

    backend = LocalBlobBackend(tmp_path / "blobs", direct_writes=True)
    try:
        data = random.Random(3).randbytes(3 * local.DIRECT_STAGE + 12345)
        writer = await backend.open_writer("packs/f/b.pack")
        fd = writer._fd
        monkeypatch.setattr(local.os, "pwrite", pwrite)
        await writer.write_all([memoryview(data)[:5000], memoryview(data)[5000:]])
        assert not writer.direct and not _has_o_direct(fd)
        await writer.commit()
        monkeypatch.undo()
        assert (tmp_path / "blobs" / "packs" / "f" / "b.pack").read_bytes() == data
    finally:
        await backend.close()


async def test_a_filesystem_that_refuses_o_direct_gets_ordinary_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.open

    def refuse_direct(path: Any, flags: int, mode: int = 0o777) -> int:
        if flags & local._O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT refused")
        return real(path, flags, mode)

    backend = LocalBlobBackend(tmp_path / "blobs", direct_writes=True)
    try:
        monkeypatch.setattr(local.os, "open", refuse_direct)
        writer = await backend.open_writer("packs/g/c.pack")
        monkeypatch.undo()
        assert not writer.direct
        await writer.write(b"ordinary bytes")
        await writer.commit()
        assert await backend.read_range("packs/g/c.pack", 0, 14) == b"ordinary bytes"
    finally:
        await backend.close()
