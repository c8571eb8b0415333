"""Tiny objects kept inline in their manifest (no pack, no chunk index row, no blob I/O).

:class:`InlineKeys` owns the data key that seals them. One DEK serves many objects, so an
inline PUT costs no KEK or KMS call: the DEK is wrapped once, and every manifest sealed
under it carries the same wrapped copy (:class:`dedup.manifest.InlineRecord`). A fresh DEK
replaces it after ``max_uses`` seals (random 96-bit nonces stay far below the 2**32 limit
per key), after ``max_age`` seconds, and as soon as the KEK's current version changes, so
``strata keys rotate`` is followed by new writes at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from crypto import KEKProvider, Sealer, WrappedKey, new_dek
from dedup import chunk_id, seal_chunk
from dedup.manifest import InlineRecord, Manifest

MAX_USES = 1 << 24
MAX_AGE = 3600.0


class InlineKeys:
    """The current inline DEK of this process (see the module docstring)."""

    def __init__(
        self,
        kek: KEKProvider,
        max_uses: int = MAX_USES,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kek = kek
        self._max_uses = max_uses
        self._max_age = max_age
        self._clock = clock
        self._current: tuple[Sealer, WrappedKey, float] | None = None
        self._uses = 0
        self._fresh: asyncio.Future[tuple[Sealer, WrappedKey, float]] | None = None

    def _usable(self) -> tuple[Sealer, WrappedKey] | None:
        cur = self._current
        if cur is None or self._uses >= self._max_uses:
            return None
        sealer, wrapped, born = cur
        if wrapped.kek_version != self._kek.current_version or self._clock() - born > self._max_age:
            return None
        return sealer, wrapped

    async def current(self) -> tuple[Sealer, WrappedKey]:
        """The sealer and wrapped DEK to seal one more object with."""
        while (usable := self._usable()) is None:
            if self._fresh is None:  # one wrap for all the requests that found no usable key
                self._fresh = asyncio.ensure_future(self._new_key())
            fresh = self._fresh
            try:
                made = await asyncio.shield(fresh)
                if self._current is not made:  # the first waiter to wake installs it
                    self._current, self._uses = made, 0
            finally:
                if self._fresh is fresh and fresh.done():
                    self._fresh = None
        self._uses += 1
        return usable

    async def _new_key(self) -> tuple[Sealer, WrappedKey, float]:
        dek = new_dek()
        return Sealer(dek), await self._kek.wrap(dek), self._clock()

    async def seal(self, dedup_key: bytes, data: bytes | bytearray | memoryview, level: int) -> Manifest:
        """The inline manifest of ``data`` (the whole object). Runs on the caller's thread:
        meant for a few KiB, where sealing costs less than a thread hop."""
        sealer, wrapped = await self.current()
        cid = chunk_id(dedup_key, data)
        sealed = seal_chunk(sealer, cid, data, level)
        return Manifest((cid,), (sealed.plain_len,), InlineRecord(wrapped, bytes(sealed.record)))
