"""The no-op S3 endpoint: the floor under every small-object ratio.

This module owns a server that does everything an S3 gateway must do on the wire and
nothing else, on the same stack as Strata (aiohttp on uvloop, one event loop): a PUT
reads its body with ``readany()`` and answers 200 with an ETag; a GET answers the object's
size in bytes (the size its last PUT had, else ``--size``) from preallocated memory;
HEAD answers the headers alone; DELETE answers 204; a bucket-level GET answers an empty
ListObjectsV2 page; anything else answers 200. It checks no signature and keeps no data.

A large GET streams 1 MiB slices of a 128 MiB source, starting at an offset taken from
the key, as any object server streams bytes that are not in the CPU cache. Sending one
1 MiB block again and again (as it did until session 8) copies from the CPU cache: on this
VM that floor measured 4.0-5.4 GB/s against 3.0-4.0 from memory, a yardstick no real
server can meet (a 256 MiB memcpy runs at 7.3 GB/s here, a 1 MiB one at 30).

``python -m bench noop --port P [--size 4KiB]`` runs it in the foreground.
"""

from __future__ import annotations

import asyncio
import itertools
import zlib

import uvloop
from aiohttp import web

from bench.tuning import keep_freed_memory
from bench.units import MiB

_BLOCK = b"\x5a" * MiB
# Large GETs stream from here (see above). A 251-byte period: slices starting at different
# MiB differ, so a test can tell where a body started.
_SOURCE = (bytes(range(251)) * (128 * MiB // 251 + 1))[: 128 * MiB]
_LIST = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>"
)


async def stream_from_memory(resp: web.StreamResponse, size: int, seed: int) -> None:
    """Write ``size`` bytes: 1 MiB slices of :data:`_SOURCE` from a ``seed``-chosen MiB on,
    wrapping around at its end."""
    source = memoryview(_SOURCE)
    pos = seed % (len(_SOURCE) // MiB) * MiB
    left = size
    while left:
        if pos >= len(_SOURCE):
            pos = 0
        n = min(left, MiB, len(_SOURCE) - pos)
        await resp.write(source[pos : pos + n])
        pos += n
        left -= n


class NoopStore:
    """Object sizes by path, and the handler that answers every request."""

    def __init__(self, default_size: int) -> None:
        self.default_size = default_size
        self.sizes: dict[str, int] = {}
        self._etags = itertools.count(1)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        is_object = path.strip("/").count("/") >= 1
        method = request.method
        if method == "PUT":
            n = 0
            content = request.content
            while chunk := await content.readany():
                n += len(chunk)
            if is_object:
                self.sizes[path] = n
            return web.Response(status=200, headers={"ETag": f'"{next(self._etags):032x}"'})
        if method in ("GET", "HEAD"):
            if not is_object:
                return web.Response(body=_LIST, content_type="application/xml")
            size = self.sizes.get(path, self.default_size)
            headers = {
                "ETag": '"00000000000000000000000000000000"',
                "Content-Type": "application/octet-stream",
            }
            if method == "HEAD":
                headers["Content-Length"] = str(size)
                return web.Response(status=200, headers=headers)
            if size <= len(_BLOCK):
                return web.Response(body=_BLOCK[:size], headers=headers)
            resp = web.StreamResponse(status=200, headers=headers)
            resp.content_length = size
            await resp.prepare(request)
            await stream_from_memory(resp, size, zlib.crc32(path.encode()))
            await resp.write_eof()
            return resp
        if method == "DELETE":
            self.sizes.pop(path, None)
            return web.Response(status=204)
        return web.Response(status=200)


def build_app(default_size: int = 4096) -> web.Application:
    app = web.Application(client_max_size=1 << 40)
    app.router.add_route("*", "/{tail:.*}", NoopStore(default_size).handle)
    return app


def serve(host: str, port: int, default_size: int = 4096) -> None:
    """Run the no-op server until interrupted (with :func:`bench.tuning.keep_freed_memory`)."""
    keep_freed_memory()

    async def main() -> None:
        runner = web.AppRunner(build_app(default_size), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        r.run(main())
