"""gateway/socket_recv.py: large raw request bodies read from the socket by threads.

Covers ``recv_some`` on a real socket pair (every byte in order for any split of what the
peer sends, stopping early only at the peer's end, which it reports, or when nothing more
comes) and :class:`ThreadedBodyReader` behind a real aiohttp server, driven by a raw
socket: exact bytes whatever aiohttp had already read, ``Connection: close`` on the
response, a slow client waited for on the event loop (asyncio and uvloop), a stalled one
timed out, one that hangs up an ``IncompleteBody``, an error response that still reaches a
client that is sending, no descriptor left open, and the ordinary path for small, chunked
or aws-chunked bodies.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import uvloop
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aioapp import serving

from gateway.s3.errors import S3Error
from gateway.socket_recv import THREAD_PATIENCE, ThreadedBodyReader, closes_connection, recv_some

KiB, MiB = 1024, 1024 * 1024


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return a, b


def _send_in_pieces(sock: socket.socket, data: bytes, sizes: list[int], pause: float = 0.0) -> None:
    pos = 0
    for size in sizes:
        sock.sendall(data[pos : pos + size])
        pos += size
        if pause:
            time.sleep(pause)
    sock.sendall(data[pos:])


@settings(max_examples=40, deadline=None)
@given(
    st.binary(min_size=1, max_size=300_000),
    st.lists(st.integers(1, 70_000), max_size=8),
    st.integers(1, 400_000),
    st.booleans(),
)
def test_recv_some_reads_every_byte_in_order(data: bytes, sizes: list[int], room: int, hang_up: bool) -> None:
    """Whatever pieces the peer sends, the view is filled with the stream's next bytes; it
    stops early only at the peer's end (and says so) or when nothing more comes."""
    a, b = _pair()
    try:
        sender = threading.Thread(target=_send_in_pieces, args=(b, data, sizes))
        sender.start()
        sender.join()
        if hang_up:
            b.shutdown(socket.SHUT_WR)
        view = memoryview(bytearray(room))
        n, closed = recv_some(a.fileno(), view, 0.05)
        assert n == min(room, len(data))
        assert closed == (hang_up and room > len(data))
        assert bytes(view[:n]) == data[:n]
    finally:
        a.close()
        b.close()


def test_recv_some_waits_for_a_slow_peer_and_not_for_a_silent_one() -> None:
    a, b = _pair()
    try:
        data = os.urandom(3 * MiB + 17)
        sender = threading.Thread(target=_send_in_pieces, args=(b, data, [1, 4096, 100_000, MiB], 0.02))
        sender.start()
        view = memoryview(bytearray(len(data)))
        assert recv_some(a.fileno(), view, 5.0) == (len(data), False)
        sender.join()
        assert bytes(view) == data
        started = time.monotonic()
        assert recv_some(a.fileno(), memoryview(bytearray(10)), 0.1) == (0, False)
        assert time.monotonic() - started < 2
    finally:
        a.close()
        b.close()


class _App:
    """A handler that reads its body through a ThreadedBodyReader where one attaches."""

    def __init__(self, pool: ThreadPoolExecutor, min_length: int, patience: float = 10.0) -> None:
        self.pool = pool
        self.min_length = min_length
        self.patience = patience
        self.outcomes: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        length = request.content_length
        if request.headers.get("x-framed"):  # stands for an aws-chunked body: no raw length
            length = None
        reader = ThreadedBodyReader.attach(request, length, self.pool, self.min_length, self.patience)
        digest = hashlib.md5()
        total = 0
        try:
            if reader is None:
                async for piece in request.content.iter_any():
                    digest.update(piece)
                    total += len(piece)
                how = "ordinary"
            else:
                buf = memoryview(bytearray(256 * KiB + 3))
                while n := await reader.readinto(buf):
                    digest.update(buf[:n])
                    total += n
                how = "threaded"
        except S3Error as err:
            self.outcomes.append(err.code)
            return web.Response(status=400, text=err.code)
        finally:
            if reader is not None:
                reader.close()
        self.outcomes.append(how)
        return web.Response(text=f"{how} {total} {digest.hexdigest()}")


async def _serve(handle: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_put("/obj", handle)
    app.on_response_prepare.append(closes_connection)
    async with serving(app) as port:
        yield port


@pytest.fixture
def pool() -> ThreadPoolExecutor:
    p = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-recv")
    yield p  # type: ignore[misc]
    p.shutdown(wait=True)


def _request(body: bytes, extra: str = "", length: int | None = None) -> bytes:
    length = len(body) if length is None else length
    return f"PUT /obj HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


def _exchange(port: int, chunks: list[bytes], pause: float = 0.0, read: bool = True) -> bytes:
    """Send ``chunks`` (pausing between them) on one connection; everything the server
    sends back until it closes."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        for chunk in chunks:
            s.sendall(chunk)
            if pause:
                time.sleep(pause)
        if not read:
            return b""
        s.settimeout(10)
        out = b""
        while data := s.recv(65536):
            out += data
        return out


def _answer_until(port: int, chunks: list[bytes], marker: bytes, pause: float = 0.0) -> bytes:
    """Send ``chunks`` (pausing between them) and keep the connection open; what the server
    sends until ``marker`` (a server still discarding an unfinished body does not close at
    once)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        for chunk in chunks:
            s.sendall(chunk)
            time.sleep(pause)
        s.settimeout(10)
        out = b""
        while marker not in out and (data := s.recv(65536)):
            out += data
        return out


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("head", [0, 100, 300 * KiB], ids=["headers-alone", "some-body", "much-body"])
async def test_a_large_body_arrives_exact_and_the_connection_closes(
    pool: ThreadPoolExecutor, head: int
) -> None:
    """However much of the body came with the headers (aiohttp reads it first), the handler
    gets exactly the body; the response says Connection: close and the server closes."""
    state = _App(pool, min_length=MiB)
    body = os.urandom(3 * MiB + 12_345)
    fds = _open_fds()
    async for port in _serve(state.handle):
        chunks = [_request(body) + body[:head], body[head : head + 700_000], body[head + 700_000 :]]
        reply = await asyncio.to_thread(_exchange, port, chunks, 0.05)  # reads until the server closes
        status, _, rest = reply.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 200")
        assert b"Connection: close" in status
        assert rest == f"threaded {len(body)} {hashlib.md5(body).hexdigest()}".encode()
    assert state.outcomes == ["threaded"]
    assert _open_fds() == fds


async def test_a_failure_before_the_end_still_reaches_the_client(pool: ThreadPoolExecutor) -> None:
    """A handler that fails after reading part of a large body: the client, still sending,
    gets the error response, and the rest of the body is discarded (not a reset)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        reader = ThreadedBodyReader.attach(request, request.content_length, pool, MiB)
        assert reader is not None
        try:
            await reader.readinto(memoryview(bytearray(MiB)))
        finally:
            reader.close()
        return web.Response(status=503, text="SlowDown")

    body = os.urandom(6 * MiB)
    async for port in _serve(handle):
        chunks = [_request(body), body[: 3 * MiB], body[3 * MiB :]]  # every byte is taken
        reply = await asyncio.to_thread(_answer_until, port, chunks, b"SlowDown", 0.1)
        assert reply.startswith(b"HTTP/1.1 503") and b"Connection: close" in reply


async def test_a_slow_client_is_waited_for_on_the_loop(pool: ThreadPoolExecutor) -> None:
    """Pauses longer than a thread waits: the thread hands back what it has, the loop waits
    for the next bytes, and the body still arrives exact; one that stalls past the
    patience is a RequestTimeout."""
    await _slow_then_stalled(pool)


def test_a_slow_client_under_uvloop(pool: ThreadPoolExecutor) -> None:
    """The gateway serves on uvloop, whose ``add_reader`` and transports are its own."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_slow_then_stalled(pool))


async def _slow_then_stalled(pool: ThreadPoolExecutor) -> None:
    state = _App(pool, min_length=MiB, patience=1.0)
    body = os.urandom(2 * MiB + 1)
    pause = THREAD_PATIENCE * 4
    async for port in _serve(state.handle):
        pieces = [_request(body)] + [body[i : i + 300 * KiB] for i in range(0, len(body), 300 * KiB)]
        reply = await asyncio.to_thread(_exchange, port, pieces, pause)
        assert reply.endswith(f"threaded {len(body)} {hashlib.md5(body).hexdigest()}".encode())
        stalled = await asyncio.to_thread(_answer_until, port, [_request(body) + body[: MiB + 1]], b"Timeout")
        assert stalled.startswith(b"HTTP/1.1 400") and stalled.endswith(b"RequestTimeout")
    assert state.outcomes == ["threaded", "RequestTimeout"]


async def test_a_body_cut_short_is_an_incomplete_body(pool: ThreadPoolExecutor) -> None:
    state = _App(pool, min_length=MiB)
    body = os.urandom(2 * MiB)
    fds = _open_fds()
    async for port in _serve(state.handle):
        await asyncio.to_thread(_exchange, port, [_request(body) + body[: MiB + 5]], 0.0, False)
        for _ in range(200):
            if state.outcomes:
                break
            await asyncio.sleep(0.02)
    assert state.outcomes == ["IncompleteBody"]
    assert _open_fds() == fds


@pytest.mark.parametrize(
    ("extra", "size"),
    [
        pytest.param("", 100 * KiB, id="small"),
        pytest.param("x-framed: 1\r\n", 2 * MiB, id="aws-chunked"),
    ],
)
async def test_other_bodies_take_the_ordinary_path(pool: ThreadPoolExecutor, extra: str, size: int) -> None:
    state = _App(pool, min_length=MiB)
    body = os.urandom(size)
    async for port in _serve(state.handle):
        reply = await asyncio.to_thread(
            _exchange, port, [_request(body, extra + "Connection: close\r\n") + body]
        )
        assert reply.endswith(f"ordinary {size} {hashlib.md5(body).hexdigest()}".encode())
        assert b"HTTP/1.1 200" in reply
    assert state.outcomes == ["ordinary"]


async def test_a_chunked_body_takes_the_ordinary_path(pool: ThreadPoolExecutor) -> None:
    state = _App(pool, min_length=10)
    body = os.urandom(300 * KiB)
    head = b"PUT /obj HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    framed = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    async for port in _serve(state.handle):
        reply = await asyncio.to_thread(_exchange, port, [head + framed])
        assert reply.endswith(f"ordinary {len(body)} {hashlib.md5(body).hexdigest()}".encode())
    assert state.outcomes == ["ordinary"]


async def test_no_pool_means_no_threaded_reader() -> None:
    class _Req:
        transport = object()

    assert ThreadedBodyReader.attach(_Req(), 64 * MiB, None) is None  # type: ignore[arg-type]
