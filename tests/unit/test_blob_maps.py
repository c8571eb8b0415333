"""Kept memory maps of local blobs (gateway/backends/blob_maps.py and the local backend's
``map_range``): an LRU bounded by blob bytes, reused by later reads, forgotten when a blob is
deleted or published again, and never unmapped under a reader."""

from __future__ import annotations

import mmap
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.backends.blob_maps import BlobMaps
from gateway.backends.local import INLINE_READ, LocalBlobBackend

MiB = 1024 * 1024


def _anon(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size)


def test_maps_are_an_lru_bounded_by_blob_bytes() -> None:
    maps = BlobMaps(10 * 4096)
    a, b, c = _anon(4 * 4096), _anon(4 * 4096), _anon(4 * 4096)
    maps.keep("a", a)
    maps.keep("b", b)
    assert (len(maps), maps.held_bytes) == (2, 8 * 4096)
    assert maps.get("a") is a  # "a" is now the most recently used
    maps.keep("c", c)  # 12 pages do not fit in 10: "b" goes
    assert maps.get("b") is None and maps.get("a") is a and maps.get("c") is c
    assert maps.held_bytes == 8 * 4096
    maps.keep("huge", _anon(11 * 4096))  # larger than the whole cache: not kept, nothing evicted
    assert maps.get("huge") is None and len(maps) == 2
    newer = _anon(2 * 4096)
    maps.keep("a", newer)  # a name kept again replaces its map
    assert maps.get("a") is newer and maps.held_bytes == 6 * 4096
    maps.forget("a")
    maps.forget("never kept")
    assert maps.get("a") is None and maps.held_bytes == 4 * 4096
    maps.clear()
    assert (len(maps), maps.held_bytes) == (0, 0)
    assert BlobMaps(0).max_bytes == 0
    off = BlobMaps(0)
    off.keep("a", a)
    assert len(off) == 0


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 12),
    st.lists(
        st.tuples(st.sampled_from(["keep", "get", "forget"]), st.sampled_from("abcde"), st.integers(1, 6)),
        max_size=40,
    ),
)
def test_maps_match_a_reference_lru(limit_pages: int, ops: list[tuple[str, str, int]]) -> None:
    """Any sequence of keeps, gets and forgets leaves what a plain LRU model says: the same
    names in the same order, each with its latest map, within the byte bound."""
    page = mmap.PAGESIZE
    maps = BlobMaps(limit_pages * page)
    model: dict[str, mmap.mmap] = {}  # insertion order = recency order
    for op, name, pages in ops:
        if op == "keep":
            mapped = _anon(pages * page)
            maps.keep(name, mapped)
            model.pop(name, None)
            if pages <= limit_pages:
                while model and sum(len(m) for m in model.values()) + len(mapped) > limit_pages * page:
                    del model[next(iter(model))]
                model[name] = mapped
        elif op == "get":
            got = maps.get(name)
            assert got is model.get(name)
            if got is not None:
                model[name] = model.pop(name)
        else:
            maps.forget(name)
            model.pop(name, None)
        assert maps.held_bytes == sum(len(m) for m in model.values()) <= limit_pages * page
        assert len(maps) == len(model)
    assert [n for n in model if maps.get(n) is not model[n]] == []


async def _publish(backend: LocalBlobBackend, name: str, data: bytes) -> None:
    writer = await backend.open_writer(name)
    await writer.write(data)
    await writer.commit()


@pytest.mark.parametrize("map_cache", [0, 64 * MiB])
async def test_reads_share_one_kept_map_of_the_blob(tmp_path: Path, map_cache: int) -> None:
    backend = LocalBlobBackend(tmp_path / "blobs", map_cache=map_cache)
    try:
        data = random.Random(1).randbytes(3 * MiB + 5)
        await _publish(backend, "packs/aa/a.pack", data)
        spans = [(0, MiB), (MiB, MiB), (2 * MiB + 3, MiB + 2), (4095, INLINE_READ + 1)]
        views = [await backend.map_range("packs/aa/a.pack", off, n) for off, n in spans]
        assert [bytes(v) for v in views] == [data[off : off + n] for off, n in spans]
        kept = map_cache > 0
        assert (len(backend.maps), backend.maps.held_bytes) == ((1, len(data)) if kept else (0, 0))
        if kept:  # every view shows the one kept map
            assert {id(v.obj) for v in views} == {id(backend.maps.get("packs/aa/a.pack"))}
        with pytest.raises(OSError):  # the end is checked against the kept map too
            await backend.map_range("packs/aa/a.pack", len(data) - INLINE_READ, INLINE_READ + 1)
    finally:
        await backend.close()
    assert len(backend.maps) == 0


async def test_a_blob_published_again_is_read_afresh(tmp_path: Path) -> None:
    """A kept map shows the file it was made of: publishing the name again must not leave
    readers on the old bytes."""
    backend = LocalBlobBackend(tmp_path / "blobs", map_cache=64 * MiB)
    try:
        old, new = random.Random(2).randbytes(MiB), random.Random(3).randbytes(2 * MiB)
        await _publish(backend, "packs/bb/b.pack", old)
        before = await backend.map_range("packs/bb/b.pack", 0, MiB)
        await _publish(backend, "packs/bb/b.pack", new)
        assert bytes(await backend.map_range("packs/bb/b.pack", 0, 2 * MiB)) == new
        assert bytes(before) == old  # a reader of the old file keeps its bytes
        assert backend.maps.held_bytes == len(new)
    finally:
        await backend.close()


async def test_deleting_a_blob_drops_its_map_but_not_its_readers(tmp_path: Path) -> None:
    backend = LocalBlobBackend(tmp_path / "blobs", map_cache=64 * MiB)
    try:
        data = random.Random(4).randbytes(2 * MiB)
        await _publish(backend, "packs/cc/c.pack", data)
        view = await backend.map_range("packs/cc/c.pack", 100, MiB)
        await backend.delete("packs/cc/c.pack")
        assert len(backend.maps) == 0  # the deleted file's space is freed once the view goes
        assert bytes(view) == data[100 : 100 + MiB]
        with pytest.raises(FileNotFoundError):
            await backend.map_range("packs/cc/c.pack", 100, MiB)
    finally:
        await backend.close()


async def test_eviction_never_unmaps_a_view_in_use(tmp_path: Path) -> None:
    backend = LocalBlobBackend(tmp_path / "blobs", map_cache=3 * MiB)
    try:
        blobs = {f"packs/dd/{i}.pack": random.Random(10 + i).randbytes(2 * MiB) for i in range(3)}
        for name, data in blobs.items():
            await _publish(backend, name, data)
        views = {name: await backend.map_range(name, 0, 2 * MiB) for name in blobs}
        assert len(backend.maps) == 1 and backend.maps.held_bytes == 2 * MiB  # only the last fits
        assert {name: bytes(v) for name, v in views.items()} == blobs
    finally:
        await backend.close()
