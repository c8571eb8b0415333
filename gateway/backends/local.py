"""Local-directory blob backend for the embedded default.

Blobs are files under the root directory. A writer appends to a temporary file; ``commit``
fsyncs it, renames it into place and fsyncs the directory, so a committed blob survives a
crash and a half-written one is never visible. File I/O runs in a small dedicated thread
pool so the event loop never blocks on the disk.

Committed blobs are immutable (never truncated or rewritten in place: repacking writes new
packs and unlinks old ones), so :meth:`LocalBlobBackend.map_range` can hand out read-only
memory maps of them: the read path decrypts straight from the page cache instead of copying
every byte into a buffer first (and without a hop through the I/O pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import mmap
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from gateway.backends.base import BlobInfo
from gateway.libc import function

T = TypeVar("T")
IOV_MAX = 1024  # buffers per writev call (Linux UIO_MAXIOV)
INLINE_READ = 64 * 1024  # reads up to this size run on the event loop


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _writeback_starter() -> Callable[[int, int, int], object] | None:
    """Linux ``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)``: start writing a range
    to disk without waiting for it (None where libc has no such call)."""
    fn = function("sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])
    if fn is None:
        return None
    return lambda fd, offset, n: fn(fd, offset, n, SYNC_FILE_RANGE_WRITE)


SYNC_FILE_RANGE_WRITE = 2
_start_writeback = _writeback_starter() if sys.platform.startswith("linux") else None


class LocalBlobWriter:
    """Streams one blob into a temp file and publishes it on commit.

    Each write also starts the kernel writing those bytes to disk (``sync_file_range``), so
    the fsync of ``commit`` finds little left to flush: a pack's disk I/O overlaps with the
    upload instead of all of it stalling the upload's last step.
    """

    def __init__(self, backend: LocalBlobBackend, final: Path, tmp: Path, fh: int) -> None:
        self._backend = backend
        self._final = final
        self._tmp = tmp
        self._fd = fh
        self._closed = False
        self._size = 0

    async def write(self, data: bytes | memoryview) -> None:
        await self.write_all([data])

    async def write_all(self, pieces: Sequence[bytes | memoryview]) -> None:
        """Append several buffers with one thread hop (os.writev, no joining copy)."""

        def write() -> None:
            views = [memoryview(p) for p in pieces if len(p)]
            start = self._size
            self._size += sum(v.nbytes for v in views)
            while views:
                n = os.writev(self._fd, views[:IOV_MAX])
                while views and n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                if n:
                    views[0] = views[0][n:]
            if _start_writeback is not None:
                _start_writeback(self._fd, start, self._size - start)

        await self._backend.run(write)

    async def commit(self) -> None:
        def publish() -> None:
            try:
                try:
                    os.fsync(self._fd)
                finally:
                    os.close(self._fd)
                self._final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self._tmp, self._final)
            except BaseException:  # not published: leave no temp file (abort() is a no-op now)
                self._tmp.unlink(missing_ok=True)
                raise
            _fsync_dir(self._final.parent)

        self._closed = True
        await self._backend.run(publish)

    async def abort(self) -> None:
        if self._closed:
            return
        self._closed = True

        def discard() -> None:
            os.close(self._fd)
            self._tmp.unlink(missing_ok=True)

        await self._backend.run(discard)


class LocalBlobBackend:
    """Blobs as files under ``root``; temp files under ``root/.tmp``."""

    def __init__(self, root: Path, io_threads: int = 4, clear_stale: bool = True) -> None:
        """``clear_stale=False`` for admin commands beside a live gateway, whose in-flight
        uploads own the temp files."""
        self.root = root.resolve()
        self._tmpdir = root / ".tmp"
        self._tmpdir.mkdir(parents=True, exist_ok=True)
        for stale in self._tmpdir.iterdir() if clear_stale else ():  # left by a crash mid-upload
            stale.unlink(missing_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="blob-io")

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _path(self, name: str) -> Path:
        """The file for blob ``name``: a relative path of plain components (checked lexically,
        without touching the disk: this runs on the event loop for every read)."""
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in name:
            raise ValueError(f"invalid blob name: {name!r}")
        return self.root.joinpath(*parts)

    async def open_writer(self, name: str) -> LocalBlobWriter:
        final = self._path(name)
        tmp = self._tmpdir / f"{secrets.token_hex(16)}.part"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        opening = asyncio.ensure_future(self.run(lambda: os.open(tmp, flags, 0o600)))
        try:
            fd = await asyncio.shield(opening)
        except asyncio.CancelledError:  # the file may be created anyway: remove it
            with contextlib.suppress(OSError):
                os.close(await opening)
                tmp.unlink(missing_ok=True)
            raise
        return LocalBlobWriter(self, final, tmp, fd)

    async def read_range(self, name: str, offset: int, length: int) -> bytes:
        path = self._path(name)

        def read() -> bytes:
            with open(path, "rb", buffering=0) as fh:
                data = os.pread(fh.fileno(), length, offset)
            if len(data) != length:
                raise OSError(f"short read from {name}: {len(data)} of {length} bytes at {offset}")
            return data

        if length <= INLINE_READ:  # small reads of (page-cached) packs: cheaper than a thread hop
            return read()
        return await self.run(read)

    async def map_range(self, name: str, offset: int, length: int) -> bytes | memoryview:
        """``read_range`` without the copy: a read-only view of a memory map of the committed
        blob, unmapped once the last view of it is released. Small ranges are read as
        ``read_range`` does.

        Mapping is a few system calls and reads nothing, so it runs right here, without a
        thread hop. The pages are faulted in by whoever reads the view (the CPU pool, as it
        decrypts), straight from the page cache; for a blob that is not cached, the kernel is
        asked to start reading it ahead at once (``MADV_WILLNEED``)."""
        if length <= INLINE_READ:
            return await self.read_range(name, offset, length)
        with open(self._path(name), "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            if offset < 0 or offset + length > size:  # never map past the end (SIGBUS)
                raise OSError(f"short read from {name}: {length} bytes at {offset} of a {size}-byte blob")
            base = offset - offset % mmap.ALLOCATIONGRANULARITY
            mapped = mmap.mmap(
                fh.fileno(), offset + length - base, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=base
            )
        mapped.madvise(mmap.MADV_WILLNEED)
        return memoryview(mapped)[offset - base :]

    async def size(self, name: str) -> int:
        path = self._path(name)
        return await self.run(lambda: path.stat().st_size)

    async def delete(self, name: str) -> None:
        path = self._path(name)
        await self.run(lambda: path.unlink(missing_ok=True))

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        for name in await self.run(lambda: self._walk(prefix)):
            yield name

    async def list_info(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        def stat(name: str) -> BlobInfo | None:
            try:
                st = os.stat(self._path(name))
            except FileNotFoundError:  # deleted since the walk
                return None
            return BlobInfo(name, st.st_size, st.st_mtime)

        names = await self.run(lambda: self._walk(prefix))
        for i in range(0, len(names), 256):  # one thread hop per 256 stats
            for info in await self.run(lambda batch=names[i : i + 256]: [stat(n) for n in batch]):
                if info is not None:
                    yield info

    def _walk(self, prefix: str) -> list[str]:
        """Names of the committed blobs starting with ``prefix``, sorted (temp files excluded)."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if d != ".tmp"]
            rel = os.path.relpath(dirpath, self.root)
            for f in filenames:
                name = f if rel == "." else f"{rel}/{f}"
                if name.startswith(prefix):
                    out.append(name)
        return sorted(out)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
