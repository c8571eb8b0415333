"""A primary blob backend with an asynchronous replica: copies after commit, reads fall back.

This module owns replication between two blob backends:

* **Writes** go to the primary only; a client's PUT waits for the primary alone. When a
  writer commits, the blob's name joins a bounded in-memory queue, and background workers
  copy it from the primary to the replica (streamed in :data:`PIECE` reads: memory stays
  bounded). A full queue never blocks a commit: the name is left to the next backfill.
* **Durability of the replication backlog: a backfill, no journal.** The queue is lost on
  a restart or crash, so :meth:`ReplicatedBackend.backfill` walks the primary's and the
  replica's listings side by side (both sorted by name, so memory stays constant) and
  queues every blob that the replica lacks or holds with another size. It runs when the
  process starts, every ``backfill_interval`` seconds, and sooner (after ``retry_gap``)
  when a copy failed or the queue overflowed. We chose this over a journal because the
  primary's listing *is* the list of what must be replicated: nothing can be skipped
  silently, a restart needs no extra state, and a lost or corrupt journal cannot hide a
  blob. The cost is two bucket listings per pass (1,000 names per request).
* **Reads** (``read_range``, ``size``) go to the primary and fall back to the replica when
  the primary fails in any way or says the blob does not exist. If both fail, the caller
  gets :class:`BackendUnavailable` when either side was unavailable (retry later), else
  the primary's error.
* **Deletes** go to both; a replica that cannot delete leaves an orphan (logged), which is
  harmless. Listings come from the primary alone. Blobs found only on the replica are never
  deleted by the backfill: after losing blobs on the primary, the replica is the copy to
  restore from.

The background work is the coroutines of :meth:`ReplicatedBackend.jobs` (a backfill loop
and ``workers`` copy workers); the serving runtime spawns them and cancels them on close.
Without them (admin commands) the backend still reads with fallback and deletes from both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.backends.base import BackendUnavailable, BlobBackend, BlobInfo, BlobWriter

log = logging.getLogger(__name__)

T = TypeVar("T")
PIECE = 4 * 1024 * 1024  # bytes per read while copying a blob


@dataclass
class ReplicationStats:
    copied: int = 0  # blobs copied to the replica
    failed: int = 0  # copies that failed (retried by the next backfill)
    vanished: int = 0  # blobs deleted from the primary before their copy
    overflowed: int = 0  # commits whose name did not fit in the queue
    fallback_reads: int = 0  # reads the replica answered


async def copy_blob(source: BlobBackend, target: BlobBackend, name: str, piece: int = PIECE) -> int:
    """Copy blob ``name`` from ``source`` to ``target`` in ``piece``-byte reads; returns its
    size. A failed copy leaves nothing on ``target``."""
    size = await source.size(name)
    writer = await target.open_writer(name)
    try:
        for offset in range(0, size, piece):
            await writer.write(await source.read_range(name, offset, min(piece, size - offset)))
        await writer.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            await writer.abort()
        raise
    return size


async def missing_blobs(
    primary: AsyncIterator[BlobInfo], replica: AsyncIterator[BlobInfo]
) -> AsyncIterator[str]:
    """Names in the ``primary`` listing that ``replica`` lacks or holds with another size.
    Both listings must be sorted by name."""
    other = await anext(replica, None)
    async for info in primary:
        while other is not None and other.name < info.name:
            other = await anext(replica, None)
        if other is None or other.name != info.name or other.size != info.size:
            yield info.name


class ReplicatedWriter:
    """Writes to the primary; a successful commit queues the blob for replication."""

    def __init__(self, backend: ReplicatedBackend, name: str, inner: BlobWriter) -> None:
        self._backend = backend
        self._name = name
        self._inner = inner

    async def write(self, data: bytes | memoryview) -> None:
        await self._inner.write(data)

    async def write_all(self, pieces: Sequence[bytes | memoryview]) -> None:
        await self._inner.write_all(pieces)

    async def commit(self) -> None:
        await self._inner.commit()
        self._backend.enqueue(self._name)

    async def abort(self) -> None:
        await self._inner.abort()


class ReplicatedBackend:
    """``primary`` for everything, ``replica`` as an asynchronous copy and read fallback."""

    def __init__(
        self,
        primary: BlobBackend,
        replica: BlobBackend,
        *,
        queue_size: int = 1024,
        workers: int = 2,
        backfill_interval: float = 300.0,
        retry_gap: float = 10.0,
        piece: int = PIECE,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self.stats = ReplicationStats()
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=max(1, queue_size))
        self._queued: set[str] = set()  # waiting in the queue or being copied
        self._workers = max(1, workers)
        self._interval = backfill_interval
        self._retry_gap = retry_gap
        self._piece = piece
        self._wake = asyncio.Event()  # run the backfill before the interval is over

    # -- replication ------------------------------------------------------------------------
    def jobs(self) -> list[Coroutine[Any, Any, None]]:
        """The background work to spawn once in a serving process (see the module doc)."""
        return [self._backfill_loop(), *(self._worker() for _ in range(self._workers))]

    def enqueue(self, name: str) -> None:
        """Queue ``name`` for copying, unless it already is; never blocks."""
        if name in self._queued:
            return
        try:
            self._queue.put_nowait(name)
        except asyncio.QueueFull:
            self.stats.overflowed += 1
            self._wake.set()
            return
        self._queued.add(name)

    def pending(self) -> int:
        """Blobs queued or being copied."""
        return len(self._queued)

    async def replicate(self, name: str) -> None:
        """Copy one blob now; failures are counted and logged, and left to the backfill."""
        try:
            await copy_blob(self.primary, self.replica, name, self._piece)
        except FileNotFoundError:
            self.stats.vanished += 1
        except Exception as exc:
            self.stats.failed += 1
            self._wake.set()
            log.warning(
                "replicating %s failed (the backfill retries it): %s: %s", name, type(exc).__name__, exc
            )
        else:
            self.stats.copied += 1

    async def backfill(self) -> int:
        """Queue every blob the replica lacks (or holds with another size); returns how many
        were queued. Waits for queue space, so it follows the workers' pace."""
        queued = 0
        async for name in missing_blobs(self.primary.list_info(), self.replica.list_info()):
            if name not in self._queued:
                self._queued.add(name)
                await self._queue.put(name)
                queued += 1
        if queued:
            log.info("replication backfill queued %d blob(s)", queued)
        return queued

    async def _worker(self) -> None:
        while True:
            name = await self._queue.get()
            try:
                await self.replicate(name)
            finally:
                self._queued.discard(name)

    async def _backfill_loop(self) -> None:
        while True:
            try:
                await self.backfill()
            except Exception as exc:
                self._wake.set()
                log.warning("replication backfill failed: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await asyncio.sleep(self._retry_gap)  # a failing replica is not hammered

    # -- BlobBackend ------------------------------------------------------------------------
    async def open_writer(self, name: str) -> ReplicatedWriter:
        return ReplicatedWriter(self, name, await self.primary.open_writer(name))

    async def _read(self, op: Callable[[BlobBackend], Awaitable[T]], what: str) -> T:
        try:
            return await op(self.primary)
        except Exception as first:
            try:
                result = await op(self.replica)
            except Exception as second:
                if isinstance(first, BackendUnavailable) or not isinstance(second, BackendUnavailable):
                    raise first from None
                raise second from first
            self.stats.fallback_reads += 1
            log.info("the replica answered %s (primary: %s: %s)", what, type(first).__name__, first)
            return result

    async def read_range(self, name: str, offset: int, length: int) -> bytes:
        return await self._read(lambda b: b.read_range(name, offset, length), f"read {name}")

    async def size(self, name: str) -> int:
        return await self._read(lambda b: b.size(name), f"size {name}")

    async def delete(self, name: str) -> None:
        await self.primary.delete(name)
        try:
            await self.replica.delete(name)
        except Exception as exc:
            log.warning(
                "deleting %s from the replica failed (orphan left): %s: %s", name, type(exc).__name__, exc
            )

    def list(self, prefix: str = "") -> AsyncIterator[str]:
        return self.primary.list(prefix)

    def list_info(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        return self.primary.list_info(prefix)

    async def ping(self) -> None:
        ping = getattr(self.primary, "ping", None)
        if callable(ping):
            await ping()

    async def close(self) -> None:
        try:
            await self.primary.close()
        finally:
            await self.replica.close()
