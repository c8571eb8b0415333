"""Local-directory blob backend for the embedded default.

Blobs are files under the root directory. A writer appends to a temporary file; ``commit``
fsyncs it, renames it into place and fsyncs the directory, so a committed blob survives a
crash and a half-written one is never visible. File I/O runs in a small dedicated thread
pool so the event loop never blocks on the disk.

With ``direct_writes`` (``storage.direct_writes``), blobs are written with ``O_DIRECT``
through a page-aligned staging buffer per I/O thread: the bytes go to the disk without
passing through (and growing) the page cache. On a VM whose fresh guest pages are expensive
to touch, that halves the CPU of a large PUT; the price is that a new pack is not in the
page cache when it is first read (see bench/README.md). Where ``O_DIRECT`` is refused, the
writer falls back to ordinary writes. Without it, only the most recently written blobs stay
in the page cache (``storage.write_cache_window``, :mod:`gateway.backends.page_cache`).

Committed blobs are immutable (never truncated or rewritten in place: repacking writes new
packs and unlinks old ones), so :meth:`LocalBlobBackend.map_range` can hand out read-only
memory maps of them: the read path decrypts straight from the page cache instead of copying
every byte into a buffer first (and without a hop through the I/O pool). The maps of the
most recently read blobs are kept for their next reads (``storage.map_cache``,
:mod:`gateway.backends.blob_maps`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import secrets
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from gateway.backends.base import BlobInfo
from gateway.backends.blob_maps import BlobMaps
from gateway.backends.page_cache import RecentWrites, drop_cached
from gateway.buffers import byte_view
from gateway.libc import function

T = TypeVar("T")
IOV_MAX = 1024  # buffers per writev call (Linux UIO_MAXIOV)
INLINE_READ = 64 * 1024  # reads up to this size run on the event loop
DIRECT_ALIGN = 4096  # O_DIRECT offsets, lengths and buffer addresses are multiples of this
DIRECT_STAGE = 1024 * 1024  # each I/O thread's staging buffer for O_DIRECT writes
_O_DIRECT = getattr(os, "O_DIRECT", 0)


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


def _pwrite_all(fd: int, views: list[memoryview], offset: int) -> int:
    """Write ``views`` at ``offset`` in order (os.pwritev, no joining copy); the end offset."""
    while views:
        n = os.pwritev(fd, views[:IOV_MAX], offset)
        offset += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]
    return offset


_stages = threading.local()


def _stage() -> memoryview:
    """This thread's page-aligned staging buffer, made once and reused, so its pages stay
    resident (touching fresh pages is what direct writes avoid)."""
    view: memoryview | None = getattr(_stages, "view", None)
    if view is None:
        view = _stages.view = memoryview(mmap.mmap(-1, DIRECT_STAGE))
    return view


class _DirectAppender:
    """Appends to a file descriptor opened with ``O_DIRECT``.

    Bytes are copied into the calling thread's staging buffer and written in whole
    :data:`DIRECT_ALIGN` blocks; the unaligned rest waits in ``tail`` for the next append or
    for :meth:`finish`, which writes it without ``O_DIRECT``. If the kernel refuses a direct
    write (``EINVAL``) or writes short, the descriptor drops ``O_DIRECT`` and every later byte
    is written the ordinary way.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.end = 0  # bytes on disk, a multiple of DIRECT_ALIGN while direct
        self.tail = b""
        self.direct = True

    def append(self, views: list[memoryview]) -> None:
        if not self.direct:
            self.end = _pwrite_all(self.fd, views, self.end)
            return
        stage = _stage()
        fill = len(self.tail)
        stage[:fill] = self.tail
        for view in views:
            pos = 0
            while pos < len(view):
                take = min(len(view) - pos, DIRECT_STAGE - fill)
                stage[fill : fill + take] = view[pos : pos + take]
                fill, pos = fill + take, pos + take
                if fill == DIRECT_STAGE:
                    self._put(stage)
                    fill = 0
        whole = fill - fill % DIRECT_ALIGN if self.direct else fill
        self.tail = bytes(stage[whole:fill])
        if whole:
            self._put(stage[:whole])

    def _put(self, block: memoryview) -> None:
        """Write ``block`` (whole aligned blocks while direct); fall back to ordinary writes
        for what a direct write refused or left unwritten."""
        n = 0
        if self.direct:
            try:
                n = os.pwrite(self.fd, block, self.end)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
            self.end += n
            if n == len(block):
                return
            self._fall_back()
        self.end = _pwrite_all(self.fd, [block[n:]], self.end)

    def _fall_back(self) -> None:
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~_O_DIRECT)
        self.direct = False

    def finish(self) -> None:
        """Write the unaligned tail (ordinary write: O_DIRECT would need it padded)."""
        if self.tail:
            if self.direct:
                self._fall_back()
            self.end = _pwrite_all(self.fd, [memoryview(self.tail)], self.end)
            self.tail = b""


def _map_whole(path: Path) -> mmap.mmap:
    """A read-only shared map of the whole file at ``path`` (OSError if it is empty)."""
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        if not size:
            raise OSError(f"{path} is empty")
        return mmap.mmap(fh.fileno(), size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)


def _create(path: Path, direct: bool) -> tuple[int, bool]:
    """Create ``path`` for writing, with O_DIRECT if ``direct`` and the filesystem allows it;
    the descriptor and whether it is direct."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    if direct:
        try:
            return os.open(path, flags | _O_DIRECT, 0o600), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o600), False


class LocalBlobWriter:
    """Streams one blob into a temp file and publishes it on commit.

    Each write also starts the kernel writing those bytes to disk (``sync_file_range``), so
    the fsync of ``commit`` finds little left to flush: a pack's disk I/O overlaps with the
    upload instead of all of it stalling the upload's last step. Direct writers
    (:class:`_DirectAppender`) need no such start: their bytes are on the disk when each
    write returns.
    """

    def __init__(
        self, backend: LocalBlobBackend, name: str, final: Path, tmp: Path, fh: int, direct: bool = False
    ) -> None:
        self._backend = backend
        self._name = name
        self._final = final
        self._tmp = tmp
        self._fd = fh
        self._closed = False
        self._size = 0
        self._direct = _DirectAppender(fh) if direct else None

    @property
    def direct(self) -> bool:
        """Whether bytes still go to the disk with O_DIRECT."""
        return self._direct is not None and self._direct.direct

    async def write(self, data: bytes | memoryview) -> None:
        await self.write_all([data])

    async def write_all(self, pieces: Sequence[bytes | memoryview]) -> None:
        """Append several buffers with one thread hop (os.writev, no joining copy)."""

        def write() -> None:
            views = [byte_view(p) for p in pieces if len(p)]
            start = self._size
            self._size += sum(len(v) for v in views)
            if self._direct is not None:
                self._direct.append(views)
                return
            _pwrite_all(self._fd, views, start)
            if _start_writeback is not None:
                _start_writeback(self._fd, start, self._size - start)

        await self._backend.run(write)

    async def commit(self) -> None:
        def publish() -> None:
            try:
                try:
                    if self._direct is not None:
                        self._direct.finish()
                    os.fsync(self._fd)
                finally:
                    os.close(self._fd)
                self._final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self._tmp, self._final)
            except BaseException:  # not published: leave no temp file (abort() is a no-op now)
                self._tmp.unlink(missing_ok=True)
                raise
            _fsync_dir(self._final.parent)
            if self._direct is None:  # written through the page cache: it joins the window
                for old in self._backend.recent_writes.add(self._final, self._size):
                    drop_cached(old)

        self._closed = True
        await self._backend.run(publish)
        self._backend.maps.forget(self._name)  # a map kept of an earlier file of this name

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

    def __init__(
        self,
        root: Path,
        io_threads: int = 4,
        clear_stale: bool = True,
        direct_writes: bool = False,
        write_cache_window: int = 0,
        map_cache: int = 0,
    ) -> None:
        """``clear_stale=False`` for admin commands beside a live gateway, whose in-flight
        uploads own the temp files. ``direct_writes``: write blobs with O_DIRECT.
        ``write_cache_window``: bytes of the most recently written blobs kept in the page
        cache; older ones are dropped from it (:mod:`gateway.backends.page_cache`; 0 = keep
        everything). ``map_cache``: bytes of blobs whose memory maps :meth:`map_range` keeps
        for later reads (:mod:`gateway.backends.blob_maps`; 0 = map for each read)."""
        self.root = root.resolve()
        self.maps = BlobMaps(map_cache)
        self._direct_writes = direct_writes and bool(_O_DIRECT)
        self.recent_writes = RecentWrites(write_cache_window)
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
        opening = asyncio.ensure_future(self.run(lambda: _create(tmp, self._direct_writes)))
        try:
            fd, direct = await asyncio.shield(opening)
        except asyncio.CancelledError:  # the file may be created anyway: remove it
            with contextlib.suppress(OSError):
                os.close((await opening)[0])
                tmp.unlink(missing_ok=True)
            raise
        return LocalBlobWriter(self, name, final, tmp, fd, direct)

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

        The map is of the whole blob, and is kept for the blob's next reads (up to
        ``map_cache`` bytes of blobs, :mod:`gateway.backends.blob_maps`). Mapping is a few
        system calls and reads nothing, so it runs right here, without a thread hop. The
        pages are faulted in by whoever reads the view (the CPU pool or a send thread, as it
        decrypts), straight from the page cache; for a range that is not cached, the kernel
        is asked to start reading it ahead at once (``MADV_WILLNEED``)."""
        if length <= INLINE_READ:
            return await self.read_range(name, offset, length)
        mapped = self.maps.get(name)
        if mapped is None:
            mapped = _map_whole(self._path(name))
            self.maps.keep(name, mapped)
        if offset < 0 or offset + length > len(mapped):  # never a view past the end (SIGBUS)
            raise OSError(f"short read from {name}: {length} bytes at {offset} of a {len(mapped)}-byte blob")
        start = offset - offset % mmap.PAGESIZE
        mapped.madvise(mmap.MADV_WILLNEED, start, offset + length - start)
        return memoryview(mapped)[offset : offset + length]

    async def size(self, name: str) -> int:
        path = self._path(name)
        return await self.run(lambda: path.stat().st_size)

    async def delete(self, name: str) -> None:
        path = self._path(name)
        self.maps.forget(name)  # readers' views keep the file's bytes until they are done
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
        self.maps.clear()
        self._pool.shutdown(wait=True)
