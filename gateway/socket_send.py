"""Large response bodies copied into the client's socket by threads, not by the event loop.

This module owns one job: writing the big pieces of a streamed response (GetObject bodies)
without holding the GIL. The event loop's own transport copies every byte into the kernel
inside ``send()`` while it holds the GIL (uvloop does not release it there). For a 1.3 GB/s
GET that copy took ~40% of the loop's wall time, and the CPU pool's decrypt and
decompress threads sat waiting for the GIL in between their (GIL-free) C calls, so a
2-core machine ran with a third of a core idle. :class:`ThreadedBodyWriter` instead hands
each large run of pieces to a small pool of send threads that ``os.writev`` it to a
duplicate of the connection's descriptor, which releases the GIL for the copy.

Rules that keep it exact:
- The status line and headers go out through aiohttp (``resp.write``), and a thread
  writes only once the transport's own buffer is empty, so bytes never reorder.
- A thread waits at most ``patience`` seconds for a full socket (a slow client). Whatever
  it could not write goes back through the transport, which buffers it; the next run
  waits for that buffer to drain. A slow reader therefore never ties up a send thread for
  long, and memory stays bounded by the transport's flow control, as before.
- Runs smaller than ``min_piece`` (and everything over TLS, or where the transport has no
  socket) take the ordinary path.
- A run may come unopened (a :class:`~gateway.buffers.Deferred`, see
  :mod:`gateway.readpath`): the send thread opens (decrypts) it and writes it in one task,
  record by record, each right after it is decrypted. A small one is opened by a thread of
  the pool too, never on the event loop, before it takes the ordinary path. If opening a
  record fails, nothing of that record (or after it) is written.
- The duplicate descriptor is closed only when no thread uses it any more, even when the
  request is cancelled mid-write; a socket error surfaces as ``ConnectionResetError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import select
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

from aiohttp import web

from gateway.buffers import Deferred
from gateway.sockfd import close_after, duplicate, wait_for

MIN_PIECE = 256 * 1024
PATIENCE = 0.05  # seconds a send thread waits for a full socket before giving the rest back
_FLUSH_POLL = (0.0005, 0.016)  # first and longest wait between checks of the transport buffer
IOV_MAX = 1024  # buffers per writev (Linux's limit; a run has far fewer pieces)


def rest_of(pieces: Sequence[memoryview], sent: int) -> list[memoryview]:
    """What is left of ``pieces`` after their first ``sent`` bytes went out (without empty
    pieces)."""
    left: list[memoryview] = []
    for piece in pieces:
        if sent >= piece.nbytes:
            sent -= piece.nbytes
            continue
        left.append(piece[sent:] if sent else piece)
        sent = 0
    return left


def send_some(fd: int, pieces: Sequence[memoryview], patience: float) -> int:
    """Write as much of ``pieces`` to the non-blocking descriptor ``fd`` as it takes (one
    ``writev`` of at most ``IOV_MAX`` pieces per attempt), waiting up to ``patience``
    seconds each time the socket is full; returns the bytes written."""
    sent = 0
    left = rest_of(pieces, 0)
    while left:
        try:
            n = os.writev(fd, left[:IOV_MAX])
        except BlockingIOError:
            if not wait_for(fd, select.POLLOUT, patience):
                break
            continue
        sent += n
        left = rest_of(left, n)
    return sent


def open_and_send(fd: int, run: Sequence[memoryview] | Deferred, patience: float) -> int:
    """One send thread's task: :func:`send_some` ``run``; a deferred run record by record,
    each as soon as it is opened. Once the socket takes less than it was given (a slow
    client), the rest of the run is opened without being sent: the caller hands it to the
    transport. Returns the bytes written."""
    if not isinstance(run, Deferred):
        return send_some(fd, run, patience)
    sent = 0
    for pieces in run.open_each():
        n = send_some(fd, pieces, patience)
        sent += n
        if n < sum(p.nbytes for p in pieces):
            run.open()  # the rest is opened, not sent
            break
    return sent


async def write_each(resp: web.StreamResponse, pieces: Sequence[memoryview]) -> None:
    """The ordinary path: each piece through aiohttp's transport, on the event loop."""
    for piece in pieces:
        await resp.write(piece)


class ThreadedBodyWriter:
    """Writes one response's body pieces; use :meth:`attach`, then :meth:`write`, then :meth:`close`."""

    def __init__(
        self,
        resp: web.StreamResponse,
        transport: asyncio.Transport,
        fd: int,
        pool: Executor,
        min_piece: int = MIN_PIECE,
        patience: float = PATIENCE,
    ) -> None:
        self._resp = resp
        self._transport = transport
        self._fd = fd
        self._pool = pool
        self._min_piece = min_piece
        self._patience = patience
        self._started = False  # aiohttp was asked to send the headers
        self._inflight: concurrent.futures.Future[int] | None = None
        self._closed = False

    @classmethod
    def attach(
        cls, request: web.BaseRequest, resp: web.StreamResponse, pool: Executor | None, **options: Any
    ) -> ThreadedBodyWriter | None:
        """A writer for ``resp`` on ``request``'s connection, or None where only the ordinary
        path applies (no pool, TLS, no socket)."""
        transport = request.transport
        fd = duplicate(transport) if pool is not None else None
        if fd is None:
            return None
        return cls(resp, transport, fd, pool, **options)  # type: ignore[arg-type]

    async def write(self, run: Sequence[memoryview] | Deferred) -> None:
        """Send a run of pieces in order (a thread writes them when they are large enough;
        a deferred run is opened by a thread first)."""
        size = run.nbytes if isinstance(run, Deferred) else sum(p.nbytes for p in run)
        if self._closed or size < self._min_piece:
            if isinstance(run, Deferred):
                run = await asyncio.wrap_future(self._pool.submit(run.open))
            await write_each(self._resp, run)
            return
        if not self._started:  # aiohttp sends the status line and headers (it may hold them)
            self._started = True
            await self._resp.write(b"")
        if self._transport.is_closing():
            raise ConnectionResetError("the client connection is closing")
        await self._flushed()
        future = self._pool.submit(open_and_send, self._fd, run, self._patience)
        self._inflight = future
        try:
            sent = await asyncio.wrap_future(future)
        except OSError as e:
            self._transport.abort()
            raise ConnectionResetError(f"sending the response body failed: {e}") from e
        self._inflight = None
        pieces = run.open() if isinstance(run, Deferred) else run  # opened by now: no work
        await write_each(self._resp, rest_of(pieces, sent))  # a slow client: the transport buffers it

    async def _flushed(self) -> None:
        """Wait until the transport has handed everything it buffered to the kernel."""
        delay, longest = _FLUSH_POLL
        while self._transport.get_write_buffer_size():
            if self._transport.is_closing():
                raise ConnectionResetError("the client connection closed")
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)

    def close(self) -> None:
        """Release the duplicate descriptor (after the last thread write, if one still runs)."""
        if self._closed:
            return
        self._closed = True
        close_after(self._fd, self._inflight)
