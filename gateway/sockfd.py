"""A client connection's socket as a plain descriptor that threads may use.

This module owns what :mod:`gateway.socket_send` (GET bodies out) and
:mod:`gateway.socket_recv` (large PUT bodies in) share: duplicating the descriptor of a
plain TCP connection (never TLS, whose bytes only the transport may touch), waiting on it
from a thread for a bounded time, and closing the duplicate only after the thread's last
use of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import select
from typing import Any


def duplicate(transport: asyncio.BaseTransport | None) -> int | None:
    """A duplicate of the descriptor of ``transport``'s plain TCP socket, or None (no
    transport, closing, TLS, no socket, or no descriptor left)."""
    if transport is None or transport.is_closing():
        return None
    if transport.get_extra_info("sslcontext") is not None or transport.get_extra_info("ssl_object"):
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        return os.dup(sock.fileno())
    except OSError:
        return None


def wait_for(fd: int, event: int, patience: float) -> bool:
    """Whether the non-blocking ``fd`` became ready for ``event`` (``select.POLLIN`` or
    ``select.POLLOUT``) within ``patience`` seconds."""
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(patience * 1000))


def close_after(fd: int, future: concurrent.futures.Future[Any] | None) -> None:
    """Close ``fd`` now, or once ``future`` (a thread's task that uses it) is done."""
    if future is not None and not future.done():
        future.add_done_callback(lambda _: os.close(fd))
    else:
        os.close(fd)
