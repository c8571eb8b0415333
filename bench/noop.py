"""The no-op S3 endpoint: the floor under every small-object ratio.

This module owns a server that does everything an S3 gateway must do on the wire and
nothing else, on the same stack as Strata (aiohttp on uvloop, one event loop): a PUT
reads its body with ``readany()`` and answers 200 with an ETag; a GET answers the object's
size in bytes (the size its last PUT had, else ``--size``) from one preallocated buffer;
HEAD answers the headers alone; DELETE answers 204; a bucket-level GET answers an empty
ListObjectsV2 page; anything else answers 200. It checks no signature and keeps no data.

``python -m bench noop --port P [--size 4KiB]`` runs it in the foreground.
"""

from __future__ import annotations

import asyncio
import itertools

import uvloop
from aiohttp import web

from bench.tuning import keep_freed_memory
from bench.units import MiB

_BLOCK = b"\x5a" * MiB
_LIST = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>"
)


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
            view = memoryview(_BLOCK)
            left = size
            while left:
                n = min(left, len(view))
                await resp.write(view[:n])
                left -= n
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
