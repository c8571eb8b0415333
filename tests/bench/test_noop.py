"""The no-op server's large GETs stream from memory, not from one CPU-cached block."""

from __future__ import annotations

import zlib
from typing import Any

from bench.noop import _SOURCE, build_app
from bench.units import MiB

SOURCE_MIB = len(_SOURCE) // MiB


def _first_mib(key: str) -> int:
    return zlib.crc32(key.encode()) % SOURCE_MIB


async def test_a_large_get_streams_the_source_from_a_per_key_offset(
    aiohttp_client: Any,
) -> None:
    size = len(_SOURCE) + 5 * MiB + 3  # past the end of the source: it wraps around
    client = await aiohttp_client(build_app(default_size=size))
    resp = await client.get("/bkt/some-key")
    assert resp.status == 200 and resp.content_length == size
    source = memoryview(_SOURCE)
    got = 0
    async for piece in resp.content.iter_chunked(4 * MiB):
        pos = (_first_mib("/bkt/some-key") * MiB + got) % len(_SOURCE)
        head = min(len(piece), len(_SOURCE) - pos)
        assert piece[:head] == source[pos : pos + head]
        assert piece[head:] == source[: len(piece) - head]
        got += len(piece)
    assert got == size
    # another key starts elsewhere in the source
    assert _first_mib("/bkt/another-key") != _first_mib("/bkt/some-key")
    other = await client.get("/bkt/another-key")
    start = _first_mib("/bkt/another-key") * MiB
    assert await other.content.readexactly(MiB) == source[start : start + MiB]
