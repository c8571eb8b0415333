"""ReplicatedBackend over two real local-directory backends: commits are copied to the
replica in the background, a restart's backfill finds what was never copied, reads fall
back to the replica, deletes reach both, and a full queue never blocks a commit."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest
from support.waiting import eventually

from gateway.backends.base import BackendUnavailable, BlobInfo
from gateway.backends.local import LocalBlobBackend
from gateway.backends.replicated import ReplicatedBackend, copy_blob, missing_blobs


async def put(backend: object, name: str, data: bytes) -> None:
    writer = await backend.open_writer(name)  # type: ignore[attr-defined]
    await writer.write(data)
    await writer.commit()


async def names(backend: LocalBlobBackend) -> list[str]:
    return [n async for n in backend.list()]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[LocalBlobBackend, LocalBlobBackend]]:
    primary, replica = LocalBlobBackend(tmp_path / "primary"), LocalBlobBackend(tmp_path / "replica")
    yield primary, replica
    await primary.close()
    await replica.close()


class Running:
    """A ReplicatedBackend with its background jobs running (as the runtime spawns them)."""

    def __init__(self, backend: ReplicatedBackend) -> None:
        self.backend = backend
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> ReplicatedBackend:
        self.tasks = [asyncio.ensure_future(job) for job in self.backend.jobs()]
        return self.backend

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_commits_are_copied_to_the_replica(pair: tuple[LocalBlobBackend, LocalBlobBackend]) -> None:
    primary, replica = pair
    blobs = {f"packs/{i:02x}/p{i}.pack": os.urandom(1000 * i + 1) for i in range(1, 8)}
    async with Running(ReplicatedBackend(primary, replica, piece=1000)) as backend:
        for name, data in blobs.items():
            await put(backend, name, data)
        await eventually(lambda: _equal(names(replica), sorted(blobs)))
        await eventually(lambda: _true(backend.pending() == 0))
    for name, data in blobs.items():
        assert await replica.read_range(name, 0, len(data)) == data
    assert backend.stats.copied == len(blobs) and backend.stats.failed == 0


async def test_aborted_writes_are_not_replicated(pair: tuple[LocalBlobBackend, LocalBlobBackend]) -> None:
    primary, replica = pair
    async with Running(ReplicatedBackend(primary, replica)) as backend:
        writer = await backend.open_writer("packs/aa/gone.pack")
        await writer.write(b"partial")
        await writer.abort()
        await put(backend, "packs/bb/kept.pack", b"kept")
        await eventually(lambda: _equal(names(replica), ["packs/bb/kept.pack"]))
    assert await names(primary) == ["packs/bb/kept.pack"]


async def test_a_restart_backfills_what_was_never_copied(
    pair: tuple[LocalBlobBackend, LocalBlobBackend],
) -> None:
    primary, replica = pair
    await put(primary, "packs/01/a.pack", b"a" * 10)  # committed, then the process died
    await put(primary, "packs/02/b.pack", b"b" * 20)
    await put(replica, "packs/02/b.pack", b"b" * 5)  # a stale copy of another size
    await put(primary, "packs/03/c.pack", b"c" * 30)
    await put(replica, "packs/03/c.pack", b"c" * 30)  # already there
    await put(replica, "packs/00/orphan.pack", b"o")  # only on the replica: never deleted
    async with Running(ReplicatedBackend(primary, replica)) as backend:
        await eventually(lambda: _true(backend.stats.copied == 2))
    assert await replica.read_range("packs/01/a.pack", 0, 10) == b"a" * 10
    assert await replica.size("packs/02/b.pack") == 20
    assert await names(replica) == [
        "packs/00/orphan.pack",
        "packs/01/a.pack",
        "packs/02/b.pack",
        "packs/03/c.pack",
    ]


async def test_reads_fall_back_to_the_replica(pair: tuple[LocalBlobBackend, LocalBlobBackend]) -> None:
    primary, replica = pair
    backend = ReplicatedBackend(primary, replica)
    await put(primary, "packs/01/both.pack", b"primary!")
    await put(replica, "packs/01/both.pack", b"replica!")
    await put(replica, "packs/02/lost.pack", b"only on the replica")
    assert await backend.read_range("packs/01/both.pack", 0, 8) == b"primary!"
    assert backend.stats.fallback_reads == 0
    assert await backend.read_range("packs/02/lost.pack", 8, 11) == b"the replica"
    assert await backend.size("packs/02/lost.pack") == 19
    assert backend.stats.fallback_reads == 2
    with pytest.raises(FileNotFoundError):
        await backend.read_range("packs/03/nowhere.pack", 0, 1)
    assert [n async for n in backend.list()] == ["packs/01/both.pack"]  # listings: the primary's


class Down:
    """A backend that is unavailable (as ResilientBackend reports an open breaker)."""

    async def read_range(self, name: str, offset: int, length: int) -> bytes:
        raise BackendUnavailable("down")

    async def size(self, name: str) -> int:
        raise BackendUnavailable("down")

    async def delete(self, name: str) -> None:
        raise BackendUnavailable("down")

    async def close(self) -> None:
        pass


async def test_an_unavailable_primary_reads_from_the_replica(
    pair: tuple[LocalBlobBackend, LocalBlobBackend],
) -> None:
    _, replica = pair
    await put(replica, "packs/01/x.pack", b"xyz")
    backend = ReplicatedBackend(Down(), replica)  # type: ignore[arg-type]
    assert await backend.read_range("packs/01/x.pack", 1, 2) == b"yz"
    with pytest.raises(BackendUnavailable):  # not on the replica: the primary may have it, retry later
        await backend.read_range("packs/02/y.pack", 0, 1)
    backend = ReplicatedBackend(replica, Down())  # type: ignore[arg-type]
    with pytest.raises(BackendUnavailable):  # primary says missing, replica unreachable: retry later
        await backend.read_range("packs/02/y.pack", 0, 1)


async def test_delete_reaches_both_and_tolerates_a_failing_replica(
    pair: tuple[LocalBlobBackend, LocalBlobBackend],
) -> None:
    primary, replica = pair
    for b in pair:
        await put(b, "packs/01/d.pack", b"d")
    await ReplicatedBackend(primary, replica).delete("packs/01/d.pack")
    assert await names(primary) == [] and await names(replica) == []
    await put(primary, "packs/02/e.pack", b"e")
    await ReplicatedBackend(primary, Down()).delete("packs/02/e.pack")  # type: ignore[arg-type]
    assert await names(primary) == []


async def test_a_full_queue_never_blocks_a_commit_and_the_backfill_catches_up(
    pair: tuple[LocalBlobBackend, LocalBlobBackend],
) -> None:
    primary, replica = pair
    backend = ReplicatedBackend(primary, replica, queue_size=1)
    for i in range(3):  # no workers running: the queue fills after one
        await asyncio.wait_for(put(backend, f"packs/0{i}/q.pack", b"q"), 5)
    assert backend.stats.overflowed == 2 and backend.pending() == 1
    async with Running(backend):
        await eventually(lambda: _equal(names(replica), [f"packs/0{i}/q.pack" for i in range(3)]))


async def test_a_failed_copy_is_counted_and_leaves_nothing(
    pair: tuple[LocalBlobBackend, LocalBlobBackend],
) -> None:
    primary, replica = pair
    await put(primary, "packs/01/f.pack", os.urandom(5000))

    class Truncated(LocalBlobBackend):
        async def read_range(self, name: str, offset: int, length: int) -> bytes:
            if offset > 0:
                raise OSError("injected read failure")
            return await super().read_range(name, offset, length)

    source = Truncated(primary.root)
    try:
        backend = ReplicatedBackend(source, replica, piece=1000)
        await backend.replicate("packs/01/f.pack")
        assert backend.stats.failed == 1 and await names(replica) == []
        assert list((replica.root / ".tmp").iterdir()) == []  # the partial copy was aborted
        await backend.replicate("packs/09/never-existed.pack")
        assert backend.stats.vanished == 1
    finally:
        await source.close()


async def test_copy_blob_streams_in_pieces(pair: tuple[LocalBlobBackend, LocalBlobBackend]) -> None:
    primary, replica = pair
    data = os.urandom(10_001)
    await put(primary, "b", data)
    assert await copy_blob(primary, replica, "b", piece=1000) == len(data)
    assert await replica.read_range("b", 0, len(data)) == data


@pytest.mark.parametrize(
    ("primary", "replica", "missing"),
    [
        ([], [], []),
        ([("a", 1), ("b", 2)], [], ["a", "b"]),
        ([("a", 1), ("b", 2), ("c", 3)], [("b", 2)], ["a", "c"]),
        ([("a", 1), ("b", 2)], [("a", 1), ("b", 9)], ["b"]),  # size differs
        ([("b", 1)], [("a", 1), ("c", 1), ("d", 1)], ["b"]),  # replica-only names ignored
        ([("a", 1), ("z", 1)], [("a", 1), ("m", 1), ("z", 1)], []),
    ],
)
async def test_missing_blobs_merges_sorted_listings(
    primary: list[tuple[str, int]], replica: list[tuple[str, int]], missing: list[str]
) -> None:
    async def listing(items: list[tuple[str, int]]) -> AsyncIterator[BlobInfo]:
        for name, size in items:
            yield BlobInfo(name, size, 0.0)

    assert [n async for n in missing_blobs(listing(primary), listing(replica))] == missing


async def _equal(got: Awaitable[list[str]], want: list[str]) -> bool:
    return await got == want


async def _true(value: bool) -> bool:
    return value
