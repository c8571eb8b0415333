"""gateway/socket_send.py: response bodies written by send threads.

Covers the pure helper (``rest_of``, table and property), ``send_some`` on a real socket
pair (all bytes in order, a partial write when the reader stalls, an error when the peer is
gone), and :class:`ThreadedBodyWriter` behind a real aiohttp server: exact bytes for fast
and slow readers, the ordinary path for small runs, and no descriptor left open after a
finished or an aborted response. Deferred runs (:class:`gateway.buffers.Deferred`): opened
by a pool thread, never the event loop, big or small, with exact bytes, piece by piece; a
piece whose opening fails is not written, nor anything after it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aioapp import serving

from gateway.buffers import Deferred
from gateway.socket_send import IOV_MAX, ThreadedBodyWriter, rest_of, send_some

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("sizes", "sent", "expected"),
    [
        ([3, 4], 0, [3, 4]),
        ([3, 4], 2, [1, 4]),
        ([3, 4], 3, [4]),
        ([3, 4], 5, [2]),
        ([3, 4], 7, []),
        ([0, 3], 0, [3]),  # empty pieces are dropped
        ([], 0, []),
    ],
)
def test_rest_of_table(sizes: list[int], sent: int, expected: list[int]) -> None:
    pieces = [memoryview(bytes(n)) for n in sizes]
    assert [p.nbytes for p in rest_of(pieces, sent)] == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6), st.data())
def test_rest_of_is_the_suffix(parts: list[bytes], data: st.DataObject) -> None:
    joined = b"".join(parts)
    sent = data.draw(st.integers(0, len(joined)))
    left = rest_of([memoryview(p) for p in parts], sent)
    assert b"".join(bytes(v) for v in left) == joined[sent:]


def _pair(sndbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    if sndbuf is not None:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    a.setblocking(False)
    return a, b


def _drain(sock: socket.socket, n: int, out: bytearray, delay: float = 0.0) -> None:
    while len(out) < n:
        got = sock.recv(min(65536, n - len(out)))
        if not got:
            return
        out += got
        if delay:
            time.sleep(delay)


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param([1, 700_000, 0, 3 * MiB, 12345], id="big-and-empty-pieces"),
        pytest.param([n % 97 + 1 for n in range(3 * IOV_MAX + 5)], id="more-than-one-writev-takes"),
    ],
)
def test_send_some_writes_every_byte_in_order(sizes: list[int]) -> None:
    a, b = _pair()
    pieces = [memoryview(os.urandom(n)) for n in sizes]
    expected = b"".join(bytes(p) for p in pieces)
    got = bytearray()
    reader = threading.Thread(target=_drain, args=(b, len(expected), got))
    reader.start()
    try:
        assert send_some(a.fileno(), pieces, patience=5.0) == len(expected)
    finally:
        reader.join(10)
        a.close()
        b.close()
    assert bytes(got) == expected


def test_send_some_gives_back_what_a_stalled_reader_does_not_take() -> None:
    a, b = _pair(sndbuf=64 * 1024)
    data = os.urandom(8 * MiB)
    try:
        started = time.monotonic()
        sent = send_some(a.fileno(), [memoryview(data)], patience=0.05)
        assert 0 < sent < len(data)
        assert time.monotonic() - started < 5
        got = bytearray()
        _drain(b, sent, got)
        assert bytes(got) == data[:sent]
    finally:
        a.close()
        b.close()


def test_send_some_raises_when_the_peer_is_gone() -> None:
    a, b = _pair()
    b.close()
    try:
        with pytest.raises(OSError):
            send_some(a.fileno(), [memoryview(os.urandom(4 * MiB))], patience=1.0)
    finally:
        a.close()


# -- ThreadedBodyWriter behind a real aiohttp server --------------------------------------


def _runs() -> list[list[memoryview]]:
    """A body as runs of pieces: a small first run, big runs, a tiny run, an empty piece."""
    sizes = [[1000], [MiB, 300_000, 0], [5], [2 * MiB + 7, MiB]]
    return [[memoryview(os.urandom(n)) for n in run] for run in sizes]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class _App:
    def __init__(
        self,
        runs: list[list[memoryview]],
        pool: ThreadPoolExecutor | None,
        sndbuf: int = 0,
        deferred: bool = False,
        fail_at: tuple[int, int] | None = None,
    ) -> None:
        self.runs = runs
        self.pool = pool
        self.sndbuf = sndbuf  # a small send buffer makes a slow reader fill the socket sooner
        self.deferred = deferred  # hand each run over unwritten, as a Deferred that fills it
        self.fail_at = fail_at  # (run, piece): the deferred piece whose filling fails
        self.filled_in: list[tuple[int, str]] = []  # (run, thread) of every fill of a piece
        self.attached: list[bool] = []
        self.errors: list[BaseException] = []
        self.done = asyncio.Event()

    def _deferred(self, index: int, run: list[memoryview]) -> Deferred:
        """``run`` as views of blank buffers that only the Deferred's fills write, one fill
        per piece (as the read path makes one per record)."""
        blanks = [memoryview(bytearray(p.nbytes)) for p in run]

        def fill(at: int) -> None:
            self.filled_in.append((index, threading.current_thread().name))
            if (index, at) == self.fail_at:
                raise ValueError("this piece cannot be opened")
            blanks[at][:] = run[at]

        return Deferred(blanks, [functools.partial(fill, at) for at in range(len(run))])

    @property
    def body(self) -> bytes:
        return b"".join(bytes(p) for run in self.runs for p in run)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = len(self.body)
        await resp.prepare(request)
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if self.sndbuf and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        sender = ThreadedBodyWriter.attach(request, resp, self.pool, min_piece=64 * 1024)
        self.attached.append(sender is not None)
        try:
            for index, run in enumerate(self.runs):
                if sender is None:
                    for piece in run:
                        await resp.write(piece)
                else:
                    await sender.write(self._deferred(index, run) if self.deferred else run)
        except BaseException as e:
            self.errors.append(e)
            raise
        finally:
            if sender is not None:
                sender.close()
            self.done.set()
        await resp.write_eof()
        return resp


async def _serve(app_state: _App) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/obj", app_state.handle)
    async with serving(app) as port:
        yield f"127.0.0.1:{port}"


@pytest.fixture
def send_pool() -> ThreadPoolExecutor:
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-send")
    yield pool  # type: ignore[misc]
    pool.shutdown(wait=True)


@pytest.mark.parametrize("threaded", [True, False])
async def test_fast_reader_gets_exact_bytes_twice_on_one_connection(
    send_pool: ThreadPoolExecutor, threaded: bool
) -> None:
    state = _App(_runs(), send_pool if threaded else None)
    fds = _open_fds()
    async for host in _serve(state):
        async with aiohttp.ClientSession() as session:
            for _ in range(2):  # keep-alive: the second response follows the first exactly
                async with session.get(f"http://{host}/obj") as r:
                    assert r.status == 200
                    assert await r.read() == state.body
    assert state.attached == [threaded, threaded]
    assert not state.errors
    assert _open_fds() <= fds


async def test_deferred_runs_are_opened_by_pool_threads_big_or_small(send_pool: ThreadPoolExecutor) -> None:
    state = _App(_runs(), send_pool, deferred=True)
    async for host in _serve(state):
        async with aiohttp.ClientSession() as session, session.get(f"http://{host}/obj") as r:
            assert r.status == 200
            assert await r.read() == state.body
    assert not state.errors
    # every piece of every run, including the 1000- and 5-byte runs that take the ordinary path
    assert [run for run, _ in state.filled_in] == [i for i, run in enumerate(state.runs) for _ in run]
    assert all(name.startswith("test-send") for _, name in state.filled_in)


@pytest.mark.parametrize(
    ("fail_at", "sent"),
    [
        ((1, 0), 0),  # a big run's first piece: nothing of that run
        ((1, 1), 1),  # its second piece: the first goes out (opened and sent at once), no more
        ((2, 0), 0),  # a small run (the ordinary path): nothing of it
    ],
)
async def test_a_deferred_piece_that_cannot_be_opened_is_not_written(
    send_pool: ThreadPoolExecutor, fail_at: tuple[int, int], sent: int
) -> None:
    state = _App(_runs(), send_pool, deferred=True, fail_at=fail_at)
    run, _ = fail_at
    before = sum(p.nbytes for r in state.runs[:run] for p in r)
    before += sum(p.nbytes for p in state.runs[run][:sent])
    async for host in _serve(state):
        head, body = await asyncio.to_thread(_raw_get, host, 0.0)
        assert head.startswith(b"HTTP/1.1 200")
        assert body == state.body[:before]  # what came before the piece, and nothing of it
        await asyncio.wait_for(state.done.wait(), 10)
    assert [type(e) for e in state.errors] == [ValueError]
    assert {r for r, _ in state.filled_in} == set(range(run + 1))


def _raw_get(
    host: str, delay: float, stop_after: int | None = None, pause: float = 0.0
) -> tuple[bytes, bytes]:
    """GET /obj over a socket with a small receive buffer, sleeping ``delay`` between reads
    and ``pause`` once after the first read (longer than a send thread's patience)."""
    addr, port = host.split(":")
    with socket.create_connection((addr, int(port))) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        s.sendall(f"GET /obj HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        raw = bytearray()
        while True:
            got = s.recv(32 * 1024)
            if not got:
                break
            if not raw:
                time.sleep(pause)
            raw += got
            if stop_after is not None and len(raw) >= stop_after:
                break
            time.sleep(delay)
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize("deferred", [False, True])
@pytest.mark.parametrize("pause", [0.0, 0.3])
async def test_slow_reader_gets_exact_bytes(
    send_pool: ThreadPoolExecutor, pause: float, deferred: bool
) -> None:
    # pause=0.3: the send thread gives up on a full socket and the transport takes the rest
    # (of a deferred run: opened first, the pieces after the one the socket stopped in too)
    runs = _runs() + [[memoryview(os.urandom(MiB + i)), memoryview(os.urandom(MiB))] for i in range(6)]
    state = _App(runs, send_pool, sndbuf=64 * 1024, deferred=deferred)
    fds = _open_fds()
    async for host in _serve(state):
        head, body = await asyncio.to_thread(_raw_get, host, 0.0005, None, pause)
        assert head.startswith(b"HTTP/1.1 200")
        assert f"Content-Length: {len(state.body)}".encode() in head
        assert body == state.body
    assert state.attached == [True]
    assert all(name.startswith("test-send") for _, name in state.filled_in)  # never the loop
    assert _open_fds() <= fds


async def test_reader_that_hangs_up_mid_body_leaves_no_descriptor(send_pool: ThreadPoolExecutor) -> None:
    # far more body than the socket buffers hold, so the server must see the hang-up
    state = _App(_runs() + [[memoryview(os.urandom(MiB))] for _ in range(24)], send_pool, sndbuf=256 * 1024)
    fds = _open_fds()
    async for host in _serve(state):
        head, body = await asyncio.to_thread(_raw_get, host, 0.0, MiB)
        assert head.startswith(b"HTTP/1.1 200")
        assert 0 < len(body) < len(state.body)
        await asyncio.wait_for(state.done.wait(), 10)
        assert state.errors and isinstance(state.errors[0], ConnectionError)
    assert _open_fds() <= fds


async def test_no_pool_means_no_threaded_writer() -> None:
    class _Req:
        transport = None

    assert ThreadedBodyWriter.attach(_Req(), web.StreamResponse(), None) is None  # type: ignore[arg-type]


async def test_a_thread_writes_only_once_the_transport_buffer_is_empty() -> None:
    """Bytes the transport still holds (headers, a slow reader's leftovers) go first."""
    events: list[tuple[str, int]] = []

    class Transport:
        sizes = [100, 50, 0]

        def get_write_buffer_size(self) -> int:
            size = self.sizes.pop(0) if self.sizes else 0
            events.append(("buffered", size))
            return size

        def is_closing(self) -> bool:
            return False

    class Resp:
        async def write(self, data: bytes | memoryview) -> None:
            events.append(("transport", len(data)))

    class Pool:
        def submit(self, fn: object, fd: int, pieces: list[memoryview], patience: float) -> Future[int]:
            events.append(("thread", sum(p.nbytes for p in pieces)))
            done: Future[int] = Future()
            done.set_result(4)  # the socket took 4 of the 10 bytes
            return done

    writer = ThreadedBodyWriter(Resp(), Transport(), -1, Pool(), min_piece=1)  # type: ignore[arg-type]
    await writer.write([memoryview(b"0123456789")])
    assert events == [
        ("transport", 0),  # aiohttp is asked to send the status line and headers
        ("buffered", 100),
        ("buffered", 50),
        ("buffered", 0),
        ("thread", 10),
        ("transport", 6),  # what the socket did not take
    ]
