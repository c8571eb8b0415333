"""A fault-injecting HTTP/1.1 proxy for tests: put it between the gateway and its S3 backend.

:class:`FaultProxy` listens on 127.0.0.1 (its own event loop in a daemon thread) and
forwards each request to the upstream. It rewrites every request to ``Connection: close``,
so each TCP connection carries exactly one request and a fault switched on takes effect on
the very next request (the client cannot keep reusing an old connection). The request head
is otherwise untouched (SigV4 signatures stay valid).

Faults, switchable at run time from the test thread:

* :meth:`fail_next` — answer the next N requests with an S3 error (503 ``SlowDown`` XML by
  default) without contacting the upstream;
* :meth:`reset_next` — reset (TCP RST) the connection of the next N requests;
* :meth:`delay` — hold the upstream's response for D seconds (the next N requests, or all);
* :meth:`blackhole` — accept every request and never answer;
* :meth:`refuse` — reset every new connection at once (a stopped backend);
* :meth:`passthrough` — back to normal (clears every fault).

It records what it saw: :attr:`connections` and :attr:`requests` (counts), and
:meth:`heads` (the last request heads, for asserting on what the gateway sends).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass
from types import TracebackType

PIPE_BYTES = 64 * 1024
MAX_HEADS = 500


def slowdown_response(status: int = 503, code: str = "SlowDown") -> bytes:
    """A complete S3 error response that closes the connection."""
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>injected by the fault proxy</Message></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head + body


def close_request_head(head: bytes) -> bytes:
    """``head`` (request line + headers + blank line) with ``Connection: close``."""
    lines = head.split(b"\r\n")[:-2]  # drop the two empty strings after the final CRLFCRLF
    kept = [line for line in lines if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*kept, b"Connection: close", b"", b""])


def header_value(head: bytes, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case) in a request head."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


@dataclass
class _Fault:
    kind: str  # "fail" | "reset" | "delay"
    count: int | None  # requests left; None: until changed
    status: int = 503
    code: str = "SlowDown"
    seconds: float = 0.0


class FaultProxy:
    """One proxy in front of ``upstream_host:upstream_port`` (see the module docstring)."""

    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self.connections = 0
        self.requests = 0
        self.faults_injected = 0
        self._heads: collections.deque[bytes] = collections.deque(maxlen=MAX_HEADS)
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._mode = "pass"  # "pass" | "blackhole" | "refuse"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # -- control (from any thread) -----------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def passthrough(self) -> None:
        with self._lock:
            self._faults.clear()
            self._mode = "pass"

    def fail_next(self, n: int, status: int = 503, code: str = "SlowDown") -> None:
        if n <= 0:
            return
        with self._lock:
            self._faults.append(_Fault("fail", n, status=status, code=code))

    def reset_next(self, n: int) -> None:
        if n <= 0:
            return
        with self._lock:
            self._faults.append(_Fault("reset", n))

    def delay(self, seconds: float, n: int | None = None) -> None:
        with self._lock:
            self._faults.append(_Fault("delay", n, seconds=seconds))

    def blackhole(self) -> None:
        with self._lock:
            self._mode = "blackhole"

    def refuse(self) -> None:
        with self._lock:
            self._mode = "refuse"

    def heads(self) -> list[bytes]:
        with self._lock:
            return list(self._heads)

    def _take(self, head: bytes) -> tuple[str, _Fault | None]:
        """Record ``head`` and pick what to do with its request."""
        with self._lock:
            self.requests += 1
            self._heads.append(head)
            if self._mode != "pass":
                self.faults_injected += 1
                return self._mode, None
            if not self._faults:
                return "pass", None
            fault = self._faults[0]
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.pop(0)
            self.faults_injected += 1
            return fault.kind, fault

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_server(self._handle, self.host, 0))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- per connection ----------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            with self._lock:
                self.connections += 1
                refuse = self._mode == "refuse"
            if refuse:
                _reset(writer)
                return
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            action, fault = self._take(head)
            if action == "reset" or action == "refuse":
                _reset(writer)
            elif action == "blackhole":
                while await reader.read(PIPE_BYTES):
                    pass
            elif action == "fail":
                assert fault is not None
                if (header_value(head, b"expect") or b"").lower() == b"100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # then the body comes
                await _discard_body(reader, head)
                writer.write(slowdown_response(fault.status, fault.code))
                await writer.drain()
            else:
                delay = fault.seconds if fault is not None else 0.0
                await self._forward(reader, writer, head, delay)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _forward(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, delay: float
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers.add(up_writer)
        try:
            up_writer.write(close_request_head(head))
            upload = asyncio.ensure_future(_pipe(reader, up_writer))
            try:
                first = await up_reader.read(PIPE_BYTES)
                if delay:
                    await asyncio.sleep(delay)
                if first:
                    writer.write(first)
                    await writer.drain()
                    await _pipe(up_reader, writer)
            finally:
                upload.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await upload
        finally:
            self._writers.discard(up_writer)
            up_writer.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while data := await src.read(PIPE_BYTES):
        dst.write(data)
        await dst.drain()


async def _discard_body(reader: asyncio.StreamReader, head: bytes) -> None:
    """Read and drop the request body (Content-Length or chunked framing)."""
    length = header_value(head, b"content-length")
    if length is not None:
        left = int(length)
        while left > 0:
            left -= len(await reader.readexactly(min(left, PIPE_BYTES)))
        return
    if (header_value(head, b"transfer-encoding") or b"").lower() == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return
            await reader.readexactly(size + 2)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
