"""The local backend's write window (gateway.backends.page_cache): which blobs stay in the
page cache after they are written, checked against the kernel's own page cache."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from gateway.backends.local import LocalBlobBackend
from gateway.backends.page_cache import RecentWrites, drop_cached

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("window", "sizes", "dropped", "held"),
    [
        (0, [5, 5, 5], [], 0),  # 0: keep everything, track nothing
        (10, [4, 4], [], 8),
        (10, [4, 4, 4], [0], 8),  # the oldest leaves first
        (10, [4, 4, 4, 4, 4], [0, 1, 2], 8),
        (10, [2, 2, 9], [0, 1], 9),  # as many as it takes
        (10, [4, 11], [0, 1], 0),  # a blob larger than the window leaves at once
        (10, [10, 1], [0], 1),
    ],
)
def test_window_drops_the_oldest_blobs_beyond_its_size(
    window: int, sizes: list[int], dropped: list[int], held: int
) -> None:
    recent = RecentWrites(window)
    out: list[Path] = []
    for i, size in enumerate(sizes):
        out += recent.add(Path(f"p{i}"), size)
    assert out == [Path(f"p{i}") for i in dropped]
    assert recent.held == held


def test_window_counts_right_under_concurrent_commits() -> None:
    recent = RecentWrites(100)
    dropped: list[Path] = []
    lock = threading.Lock()

    def commit(t: int) -> None:
        for i in range(500):
            out = recent.add(Path(f"{t}-{i}"), 3)
            with lock:
                dropped.extend(out)

    threads = [threading.Thread(target=commit, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(dropped)) == len(dropped) == 2000 - recent.held // 3
    assert 97 <= recent.held <= 100


def test_drop_cached_of_a_missing_file_is_false(tmp_path: Path) -> None:
    assert drop_cached(tmp_path / "gone") is False


def _cached(path: Path, offset: int = 0) -> bool:
    """Whether the page at ``offset`` is in the page cache (a read that may not wait)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(4096)], offset, os.RWF_NOWAIT)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _dropping_works(tmp_path: Path) -> bool:
    """A written, fsynced file is cached, and dropped on advice (not on tmpfs, for one)."""
    probe = tmp_path / "probe"
    with open(probe, "wb") as fh:
        fh.write(os.urandom(MiB))
        fh.flush()
        os.fsync(fh.fileno())
    return _cached(probe) and drop_cached(probe) and not _cached(probe)


needs_page_cache = pytest.mark.skipif(
    not hasattr(os, "RWF_NOWAIT") or not hasattr(os, "POSIX_FADV_DONTNEED"), reason="Linux page-cache calls"
)


@needs_page_cache
@pytest.mark.parametrize("window", [5 * MiB, 0])
async def test_blobs_that_leave_the_window_leave_the_page_cache(tmp_path: Path, window: int) -> None:
    if not _dropping_works(tmp_path):
        pytest.skip("this filesystem keeps pages on POSIX_FADV_DONTNEED")
    backend = LocalBlobBackend(tmp_path / "blobs", write_cache_window=window)
    names = [f"packs/{i:02d}/p{i}.pack" for i in range(4)]
    data = [os.urandom(2 * MiB) for _ in names]
    try:
        for name, body in zip(names, data, strict=True):
            writer = await backend.open_writer(name)
            await writer.write_all([memoryview(body)[:MiB], memoryview(body)[MiB:]])
            await writer.commit()
        cached = [_cached(backend.root / n) and _cached(backend.root / n, MiB + 4096) for n in names]
        if window:  # 4 x 2 MiB through a 5 MiB window: the two oldest left it
            assert cached == [False, False, True, True]
            assert backend.recent_writes.held == 4 * MiB
        else:
            assert cached == [True] * 4
        for name, body in zip(names, data, strict=True):  # a dropped blob reads back whole
            assert await backend.read_range(name, 0, len(body)) == body
            view = await backend.map_range(name, 0, len(body))
            assert bytes(view) == body
            del view
    finally:
        await backend.close()


@needs_page_cache
async def test_direct_writes_stay_out_of_the_window(tmp_path: Path) -> None:
    """A blob written with O_DIRECT is not in the page cache: it takes no room in the window,
    even though its unaligned tail goes through an ordinary write."""
    backend = LocalBlobBackend(tmp_path / "blobs", direct_writes=True, write_cache_window=MiB)
    try:
        writer = await backend.open_writer("packs/aa/a.pack")
        direct = writer.direct  # False where the filesystem refuses O_DIRECT
        await writer.write(os.urandom(MiB // 2 + 100))
        await writer.commit()
        assert backend.recent_writes.held == (0 if direct else MiB // 2 + 100)
    finally:
        await backend.close()
