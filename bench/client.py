"""A lean S3 client for the load generator: aiohttp + :mod:`bench.signer`, nothing else.

This module owns the HTTP side of one benchmark process: signing and sending PUT, GET,
HEAD, DELETE, ListObjectsV2 and CreateBucket, path-style, with ``UNSIGNED-PAYLOAD``.
Each call returns the payload bytes moved (or raises :class:`S3RequestError`), so the
caller times it. Large PUT bodies stream from :class:`StreamedObject`, which refills a ring
of three 1 MiB windows from a :class:`~bench.data.PayloadSource` (never the whole object
in memory); a window is refilled only once the transport has handed every byte of it to
the kernel. Streamed (large) GETs over plain HTTP go through :mod:`bench.lean_get`, which
counts the body where it lands instead of copying it into Python objects; other responses
are drained with ``readany()``. Bodies are counted, not checked byte by byte.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import yarl
from aiohttp.abc import AbstractStreamWriter

from bench.data import PayloadSource
from bench.lean_get import LeanGetPool, request_head
from bench.signer import SigV4Signer, encode_path, encode_query
from bench.units import MiB

WINDOW = 1 * MiB
_RING = 3


class S3RequestError(RuntimeError):
    """A request answered with an unexpected status (the message holds the start of the body)."""


class StreamedObject(aiohttp.payload.Payload):
    """A request body that generates object ``object_id`` window by window."""

    def __init__(self, source: PayloadSource, object_id: int) -> None:
        super().__init__(None, content_type="application/octet-stream")
        self._source = source
        self._object_id = object_id
        self._size = source.size

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed benchmark object has no text form")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        size = self._source.size if content_length is None else min(content_length, self._source.size)
        ring = [bytearray(WINDOW) for _ in range(_RING)]
        transport: Any = getattr(writer, "transport", None)
        offset = 0
        i = 0
        while offset < size:
            buf = ring[i % _RING]
            if i >= _RING:
                # The window written _RING writes ago must have left the transport buffer
                # (in full) before we overwrite it; aiohttp normally drains well below this.
                while transport is not None and transport.get_write_buffer_size() > (_RING - 1) * WINDOW:
                    await writer.drain()
                    await asyncio.sleep(0.0005)
            n = self._source.fill(buf, self._object_id, offset)
            n = min(n, size - offset)
            await writer.write(memoryview(buf)[:n])
            offset += n
            i += 1


class S3Client:
    """Signed requests against one endpoint (path-style) over one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, endpoint: str, signer: SigV4Signer) -> None:
        url = yarl.URL(endpoint)
        if url.host is None:
            raise ValueError(f"endpoint needs a host: {endpoint!r}")
        self.session = session
        self.signer = signer
        self.base = f"{url.scheme}://{url.raw_authority}"
        self.host = url.raw_authority  # exactly what goes into the Host header
        self.lean = LeanGetPool(url.raw_host or "", url.port or 80) if url.scheme == "http" else None

    def close(self) -> None:
        if self.lean is not None:
            self.lean.close()

    def _url(self, path: str, query: list[tuple[str, str]]) -> yarl.URL:
        """The request URL, encoded exactly as the signer's canonical request has it."""
        qs = encode_query(query)
        return yarl.URL(self.base + encode_path(path) + (f"?{qs}" if qs else ""), encoded=True)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        ok: tuple[int, ...] = (200,),
        stream: bool = False,
    ) -> int:
        q = query or []
        url = self._url(path, q)
        headers = self.signer.sign(method, self.host, path, q)
        async with self.session.request(method, url, headers=headers, data=body) as resp:
            if resp.status not in ok:
                text = (await resp.read())[:300].decode("utf-8", "replace")
                raise S3RequestError(f"{method} {path}: HTTP {resp.status} {text}")
            if stream:
                n = 0
                content = resp.content
                while chunk := await content.readany():
                    n += len(chunk)
                return n
            return len(await resp.read())

    async def create_bucket(self, bucket: str) -> None:
        """CreateBucket; an existing bucket we own is fine."""
        try:
            await self._send("PUT", f"/{bucket}")
        except S3RequestError as e:
            if "BucketAlreadyOwnedByYou" not in str(e) and "BucketAlreadyExists" not in str(e):
                raise

    async def put(self, bucket: str, key: str, body: bytes | memoryview | StreamedObject) -> int:
        """PutObject; returns the body size."""
        size = body.size if isinstance(body, StreamedObject) else len(body)
        await self._send("PUT", f"/{bucket}/{key}", body=body)
        return int(size or 0)

    async def get(self, bucket: str, key: str, *, stream: bool = True) -> int:
        """GetObject; returns the bytes received. A streamed GET over plain HTTP is counted
        by the lean reader; anything else goes through aiohttp."""
        path = f"/{bucket}/{key}"
        if not (stream and self.lean is not None):
            return await self._send("GET", path, stream=stream)
        headers = self.signer.sign("GET", self.host, path, [])
        response = await self.lean.get(request_head("GET", encode_path(path), headers))
        if response.status != 200:
            text = response.body[:300].decode("utf-8", "replace")
            raise S3RequestError(f"GET {path}: HTTP {response.status} {text}")
        return response.length

    async def head(self, bucket: str, key: str) -> int:
        await self._send("HEAD", f"/{bucket}/{key}")
        return 0

    async def delete(self, bucket: str, key: str) -> int:
        await self._send("DELETE", f"/{bucket}/{key}", ok=(200, 204))
        return 0

    async def list_page(self, bucket: str, prefix: str, max_keys: int = 1000) -> int:
        """One ListObjectsV2 page; returns 0 (listing moves no object data)."""
        query = [("list-type", "2"), ("prefix", prefix), ("max-keys", str(max_keys))]
        await self._send("GET", f"/{bucket}", query=query)
        return 0


def new_session(concurrency: int, object_size: int) -> aiohttp.ClientSession:
    """An aiohttp session tuned for benchmarking: pooled keep-alive connections, no
    decompression, no default headers we do not need, big read buffers for big objects."""
    connector = aiohttp.TCPConnector(limit=max(1, concurrency), limit_per_host=0, ttl_dns_cache=None)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=600),
        read_bufsize=max(64 * 1024, min(object_size, 4 * MiB)),
    )
