"""Large GET bodies leave through send threads (gateway/socket_send.py) byte-exact.

A real server streams multi-run objects to readers that are fast, slow, stalled for longer
than a send thread waits, or gone mid-body; whole and ranged; with send threads and
without (``STRATA_STORAGE_SEND_THREADS=0``), and from packs written with O_DIRECT
(``STRATA_STORAGE_DIRECT_WRITES=true``). Every complete read is byte-exact, a reader
that hangs up costs the server nothing it keeps (its open descriptors return to where
they were), and the server goes on serving.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
from support.s3 import MiB, make_client
from support.server import StrataServer

SIZE = 24 * MiB + 12345


def _get(url: str, headers: dict[str, str], pause: float = 0.0, stop_after: int | None = None) -> bytes:
    """A raw HTTP/1.1 GET with a small receive buffer; ``pause`` once after the first read."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = bytearray()
        while got := s.recv(256 * 1024):
            if not raw and pause:
                time.sleep(pause)
            raw += got
            if stop_after is not None and len(raw) >= stop_after:
                break
    return bytes(raw)


def _body(raw: bytes, status: int) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == str(status).encode(), head[:200]
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    assert len(body) == length
    return body


@pytest.fixture(params=["threads", "no-threads", "direct-writes"])
def served(
    request: pytest.FixtureRequest, strata_factory: Callable[..., StrataServer]
) -> tuple[StrataServer, str, bytes]:
    env = {"STRATA_STORAGE_READ_RUN": str(2 * MiB)}  # many runs per object
    if request.param == "no-threads":
        env["STRATA_STORAGE_SEND_THREADS"] = "0"
    if request.param == "direct-writes":  # packs written past the page cache (O_DIRECT)
        env["STRATA_STORAGE_DIRECT_WRITES"] = "true"
    server = strata_factory(extra_env=env)
    s3: Any = make_client(server)
    s3.create_bucket(Bucket="stream")
    data = os.urandom(SIZE // 2) + b"text " * (SIZE // 10) + os.urandom(SIZE - SIZE // 2 - 5 * (SIZE // 10))
    assert len(data) == SIZE
    s3.put_object(Bucket="stream", Key="big", Body=data)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "stream", "Key": "big"})
    return server, url, data


@pytest.mark.parametrize("pause", [0.0, 0.4])
def test_whole_object_is_exact_for_fast_and_stalled_readers(
    served: tuple[StrataServer, str, bytes], pause: float
) -> None:
    _, url, data = served
    assert _body(_get(url, {}, pause), 200) == data


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, 1), (1, 3 * MiB), (SIZE // 2 - 7, SIZE // 2 + 5 * MiB), (SIZE - 1, SIZE), (5 * MiB, SIZE)],
)
def test_ranges_are_exact(served: tuple[StrataServer, str, bytes], start: int, end: int) -> None:
    _, url, data = served
    assert _body(_get(url, {"Range": f"bytes={start}-{end - 1}"}, 0.1), 206) == data[start:end]


def test_readers_that_hang_up_leave_nothing_open(served: tuple[StrataServer, str, bytes]) -> None:
    server, url, data = served
    proc = psutil.Process(server.pid)
    assert _body(_get(url, {}), 200) == data  # warm: pools and caches exist from here on
    fds = proc.num_fds()
    for stop_after in (1, 2 * MiB, 9 * MiB):
        partial = _get(url, {}, stop_after=stop_after)
        assert len(partial) < SIZE
    assert _body(_get(url, {}), 200) == data  # still serving
    deadline = time.monotonic() + 10
    while proc.num_fds() > fds and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.num_fds() <= fds
    assert server.is_running()
