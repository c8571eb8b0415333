"""Large raw request bodies read from the client's socket by threads, straight into the
upload's batch buffers.

This module owns one job: receiving the body of a large upload (PutObject, UploadPart)
without the event loop touching its bytes. Through aiohttp, every body byte is copied three
times on the event loop while it holds the GIL: from the kernel into uvloop's read buffer,
into a ``bytes`` piece by the HTTP parser, and into the upload's batch buffer
(:mod:`gateway.ingest`). For 64 MiB PUTs that was ~0.9 core-ms per MB of loop time.
:class:`ThreadedBodyReader` instead pauses the transport's reading and has a thread
``readv`` the rest of the body from a duplicate of the connection's descriptor into the
batch buffer itself: one copy, by the kernel, without the GIL (bench/README.md, run M).

Rules that keep it exact:
- Only a body that is the payload itself (``Content-Length``, no ``aws-chunked`` framing,
  no HTTP chunking) of at least ``min_length`` bytes, on a plain TCP socket, is read so.
  Everything else takes the ordinary path.
- What aiohttp had already read of the body is handed out first, then exactly the bytes the
  ``Content-Length`` still owes are read from the socket: never a byte of a following
  request.
- aiohttp's parser never sees those bytes, so it cannot take another request from this
  connection: the response says ``Connection: close`` (:func:`closes_connection`), and the
  connection closes once it is sent. A large upload costs one new connection, nothing more.
- A thread waits at most ``THREAD_PATIENCE`` for more bytes, then hands back what it has;
  the event loop waits for a slow client's next bytes, so a slow uploader never ties up a
  thread (the threads also send GET bodies).
- A client that hangs up early gives ``IncompleteBody``; one that sends nothing for
  ``patience`` seconds gives ``RequestTimeout``. Either way nothing is stored.
- A request that fails before its body is all read (a backend error, say) hands the socket
  back to aiohttp, which discards the rest of the body after the error response, as it
  does for any request (its lingering close, up to 10 s), so the client still reads that
  response instead of a reset connection.
- The duplicate descriptor is closed only when no thread uses it any more.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import select
from concurrent.futures import Executor

from aiohttp import web

from gateway.s3.errors import S3Error
from gateway.sockfd import close_after, duplicate, wait_for

MIN_LENGTH = 8 * 1024 * 1024  # smaller bodies take the ordinary path
PATIENCE = 60.0  # seconds a body may go without a byte before the upload fails
THREAD_PATIENCE = 0.05  # seconds a thread waits for more bytes before handing back what it has
DIRECT_BODY = web.RequestKey("strata_direct_body", bool)  # the body was read by a ThreadedBodyReader


def recv_some(fd: int, view: memoryview, patience: float) -> tuple[int, bool]:
    """Read from the non-blocking descriptor ``fd`` into ``view`` until it is full, the peer
    closes its side, or no byte comes for ``patience`` seconds; returns the bytes read and
    whether the peer closed."""
    got = 0
    while got < len(view):
        try:
            n = os.readv(fd, [view[got:]])
        except BlockingIOError:
            if not wait_for(fd, select.POLLIN, patience):
                return got, False
            continue
        if n == 0:
            return got, True
        got += n
    return got, False


async def closes_connection(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: a response to a request whose body a
    :class:`ThreadedBodyReader` read closes its connection (the HTTP parser is not where the
    next request would start)."""
    if request.get(DIRECT_BODY):
        response.force_close()
        response.headers["Connection"] = "close"  # (aiohttp chose its headers before this hook)


class ThreadedBodyReader:
    """One request body, read into the caller's buffers: :meth:`attach`, then
    :meth:`readinto` until it returns 0, then :meth:`close`."""

    def __init__(
        self, request: web.BaseRequest, fd: int, pool: Executor, length: int, patience: float = PATIENCE
    ) -> None:
        transport = request.transport
        assert transport is not None
        self._stream = request.content
        self._transport = transport
        transport.pause_reading()
        taken: list[bytes] = []
        while data := self._stream.read_nowait(-1):  # what aiohttp already read of the body
            taken.append(data)
        transport.pause_reading()  # (draining aiohttp's buffer may have resumed it)
        self._head = memoryview(b"".join(taken))
        self._left = length - len(self._head)  # bytes still on the socket
        self._fd = fd
        self._pool = pool
        self._patience = patience
        self._inflight: concurrent.futures.Future[tuple[int, bool]] | None = None
        self._closed = False
        request[DIRECT_BODY] = True
        if self._left < 0:  # more than Content-Length (aiohttp never hands that out)
            self.close()
            raise S3Error("IncompleteBody")

    @classmethod
    def attach(
        cls,
        request: web.BaseRequest,
        length: int | None,
        pool: Executor | None,
        min_length: int = MIN_LENGTH,
        patience: float = PATIENCE,
    ) -> ThreadedBodyReader | None:
        """A reader of ``request``'s body of ``length`` payload bytes, or None where only the
        ordinary path applies (no pool, a short or framed body, TLS, no socket)."""
        if pool is None or length is None or length < min_length:
            return None
        if request.headers.get("Content-Length") != str(length) or request.content.exception() is not None:
            return None
        fd = duplicate(request.transport)
        if fd is None:
            return None
        return cls(request, fd, pool, length, patience)

    async def readinto(self, view: memoryview) -> int:
        """Read the next body bytes into ``view`` (at least one, as many as have arrived, up
        to its size); 0 at the body's end. Raises ``IncompleteBody`` if the client stops
        short, ``RequestTimeout`` if it sends nothing for ``patience`` seconds."""
        if self._head.nbytes:
            n = min(view.nbytes, self._head.nbytes)
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        want = min(view.nbytes, self._left)
        if not want:
            return 0
        if self._closed:
            raise S3Error("IncompleteBody")
        while True:
            future = self._pool.submit(recv_some, self._fd, view[:want], THREAD_PATIENCE)
            self._inflight = future
            try:
                n, peer_closed = await asyncio.wrap_future(future)
            except OSError as exc:
                raise S3Error("IncompleteBody") from exc
            self._inflight = None
            self._left -= n
            if n:
                return n
            if peer_closed:
                raise S3Error("IncompleteBody")
            await self._readable()

    async def _readable(self) -> None:
        """Wait on the event loop (no thread held) until the socket has bytes to read."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self._fd, lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, self._patience)
        except TimeoutError:
            raise S3Error("RequestTimeout") from None
        finally:
            loop.remove_reader(self._fd)

    def close(self) -> None:
        """Release the duplicate descriptor (after the thread's read, if one still runs). A
        body read to its end is marked so for aiohttp, which then closes the connection
        after the response; otherwise aiohttp reads again and discards the rest."""
        if self._closed:
            return
        self._closed = True
        if self._left == 0 and not self._head.nbytes:
            self._stream.feed_eof()
        else:
            self._transport.resume_reading()
        close_after(self._fd, self._inflight)
