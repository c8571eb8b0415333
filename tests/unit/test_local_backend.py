"""The local-directory blob backend: atomic publish, aborts leave nothing, ranged reads,
and blob names that cannot escape the root."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.backends.local import LocalBlobBackend


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
