"""Streamed GETs that count the body instead of copying it: the benchmark's large-object reader.

This module owns one job: receive a large GET response for the load generator at the cost
of the kernel's copy alone. aiohttp's client hands every body slice to Python as a fresh
``bytes`` (uvloop's read, then the parser's slice): at 1.3 GB/s those user-space copies
took about a quarter of a core in each client process, CPU the server under test then
lacked on a 2-core machine. Here each keep-alive connection is an
:class:`asyncio.BufferedProtocol` whose reads all land in one small buffer per process,
which is counted and overwritten, never copied.

While a large body arrives, each connection also tells the kernel not to wake the loop until
a whole buffer's worth is waiting (``SO_RCVLOWAT``, never more than the bytes still due, and
back to 1 once the body is complete). Without it, a client that drains the socket faster
than the server fills it wakes for every few segments: measured against Strata's GET, the
client spent ~0.19-0.23 core-ms per MB against ~0.12-0.13 for the no-op server, CPU that
both servers then lacked on a 2-core machine (bench/README.md, run L).

The HTTP/1.1 it speaks is the subset an S3 GET needs: one request at a time per
connection, a response with ``Content-Length`` (S3 GetObject always has one), keep-alive
unless the server says ``Connection: close``. Anything else (no length, a malformed status
line or header block, a connection lost mid-body, more bytes than announced) fails that
request with :class:`LeanGetError` and closes the connection; it never hangs or mis-counts.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import cast

MAX_HEAD = 64 * 1024  # a response head larger than this is refused
MAX_ERROR_BODY = 64 * 1024  # the start of a non-2xx body is kept for the error message
RECV_BUFFER = 256 * 1024  # one per process: reads land here and are counted, not kept
LOW_WATER_BODY = 2 * RECV_BUFFER  # bodies at least this long are read a buffer at a time
_SO_RCVLOWAT: int | None = getattr(socket, "SO_RCVLOWAT", None)


class LeanGetError(ConnectionError):
    """The response could not be read as a well-formed HTTP/1.1 response with a length."""


def low_water(length: int, left: int, buffer: int) -> int:
    """The ``SO_RCVLOWAT`` for a body of ``length`` bytes with ``left`` still due: a buffer's
    worth while a large body arrives (never more than ``left``: the kernel would then never
    wake the reader for the rest), else 1 (wake for any byte)."""
    if length < LOW_WATER_BODY or left <= 0:
        return 1
    return min(buffer, left)


@dataclass(frozen=True)
class Response:
    status: int
    length: int  # body bytes received (== Content-Length)
    body: bytes  # the start of the body when the status is not 2xx, else b""
    keep_alive: bool


@dataclass(frozen=True)
class Head:
    status: int
    length: int
    keep_alive: bool


def _digits(text: str, least: int, most: int) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts ``²``), between least and most of them."""
    return least <= len(text) <= most and text.isascii() and text.isdigit()


def parse_head(raw: bytes) -> Head:
    """Parse a response head (status line and headers, without the blank line)."""
    lines = raw.decode("latin-1").split("\r\n")  # latin-1 decodes every byte
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not _digits(parts[1], 3, 3):
        raise LeanGetError(f"malformed status line: {lines[0][:80]!r}")
    status = int(parts[1])
    length: int | None = None
    keep_alive = parts[0] != "HTTP/1.0"
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or any(c in " \t" for c in name):
            raise LeanGetError(f"malformed header line: {line[:80]!r}")
        key, value = name.lower(), value.strip()
        if key == "content-length":
            if not _digits(value, 1, 19) or (length is not None and int(value) != length):
                raise LeanGetError(f"bad Content-Length: {value[:40]!r}")
            length = int(value)
        elif key == "transfer-encoding":
            raise LeanGetError(f"Transfer-Encoding {value!r} is not supported: a GET needs Content-Length")
        elif key == "connection":
            tokens = {t.strip().lower() for t in value.split(",")}
            if "close" in tokens:
                keep_alive = False
            elif "keep-alive" in tokens:
                keep_alive = True
    if length is None:
        raise LeanGetError(f"HTTP {status} without Content-Length")
    return Head(status, length, keep_alive)


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection; ``request()`` sends a head and returns the counted response."""

    def __init__(self, buffer: memoryview) -> None:
        self._buffer = buffer
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._waiter: asyncio.Future[Response] | None = None
        self._head = bytearray()
        self._parsed: Head | None = None
        self._left = 0
        self._error_body = bytearray()
        self._sock: socket.socket | None = None
        self._low_water = 1

    # -- protocol callbacks ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._waiter is None or self._waiter.done():
            self._fail(LeanGetError(f"{nbytes} bytes arrived with no request outstanding"))
            return
        if self._parsed is None:
            self._head += self._buffer[:nbytes]
            end = self._head.find(b"\r\n\r\n")
            if end < 0 and len(self._head) <= MAX_HEAD:
                return
            if end < 0 or end > MAX_HEAD:
                self._fail(LeanGetError(f"response head longer than {MAX_HEAD} bytes"))
                return
            try:
                self._parsed = parse_head(bytes(self._head[:end]))
            except LeanGetError as e:
                self._fail(e)
                return
            self._left = self._parsed.length
            body = memoryview(self._head)[end + 4 :]
            self._take(body)
            body.release()
            self._head.clear()
        else:
            self._take(self._buffer[:nbytes])
        head = self._parsed
        self._wake_at(low_water(head.length, self._left, len(self._buffer)) if head is not None else 1)

    def _wake_at(self, nbytes: int) -> None:
        """Set the socket's ``SO_RCVLOWAT`` to ``nbytes`` unless it already is (a platform or
        socket that refuses it is simply read as before)."""
        if nbytes == self._low_water or self._sock is None or _SO_RCVLOWAT is None or self.closed:
            return
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVLOWAT, nbytes)
        except OSError:
            self._sock = None
            return
        self._low_water = nbytes

    def _take(self, body: memoryview) -> None:
        """Count body bytes; keep the start of an error body; finish at the announced length."""
        head = self._parsed
        assert head is not None
        n = len(body)
        if n > self._left:
            self._fail(LeanGetError(f"{n - self._left} bytes past the announced Content-Length"))
            return
        self._left -= n
        if not 200 <= head.status < 300 and len(self._error_body) < MAX_ERROR_BODY:
            self._error_body += body[: MAX_ERROR_BODY - len(self._error_body)]
        if self._left == 0:
            waiter, self._waiter = self._waiter, None
            response = Response(head.status, head.length, bytes(self._error_body), head.keep_alive)
            self._parsed = None
            self._error_body.clear()
            assert waiter is not None
            waiter.set_result(response)

    def eof_received(self) -> bool:
        self._fail(LeanGetError("the server closed the connection mid-response"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            err = LeanGetError(f"connection lost mid-response: {exc or 'closed by the server'}")
            self._waiter.set_exception(err)

    def _fail(self, exc: LeanGetError) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    # -- the caller's side -------------------------------------------------------------
    async def request(self, head: bytes) -> Response:
        if self.closed or self.transport is None or self._waiter is not None:
            raise LeanGetError("connection is not idle")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head)
        return await self._waiter


class LeanGetPool:
    """Keep-alive connections to one ``host:port``, each used by one request at a time."""

    def __init__(self, host: str, port: int, timeout: float = 600.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._idle: list[_Connection] = []
        self._buffer = memoryview(bytearray(RECV_BUFFER))

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Connection(self._buffer), self.host, self.port)
        return conn

    async def get(self, head: bytes) -> Response:
        """Send one request head; returns the response once its whole body has been counted."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                break
        else:
            conn = await self._connect()
        try:
            response = await asyncio.wait_for(conn.request(head), self.timeout)
        except BaseException:
            conn.closed = True
            if conn.transport is not None:
                conn.transport.close()
            raise
        if response.keep_alive and not conn.closed:
            self._idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()
        return response

    def close(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()


def request_head(method: str, target: str, headers: dict[str, str]) -> bytes:
    """An HTTP/1.1 request head: ``target`` is the encoded path and query, as signed."""
    lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1")
