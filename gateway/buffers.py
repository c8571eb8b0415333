"""Reusable plaintext buffers for the download path.

AES-GCM's one-shot ``decrypt`` returns a new, zero-filled buffer for every chunk: on a 64 MiB
GET that zero-fill alone was a tenth of the server's CPU. :class:`BufferRecycler` hands out
buffers that records are decrypted into instead (``decrypt_into``), and takes them back once
the response has moved past their chunk.

A buffer given back may still be in use: the transport keeps a view of the bytes it has not
sent yet after ``write()`` returns, and a CopyObject reader may hold a view too. So a buffer is
reused only when no view of it is alive any more. A ``bytearray`` refuses to be resized while
any view of it exists: that refusal is the test, exact and cheap. Nothing is ever read from a
buffer before a record has been decrypted over the part of it that is handed out.

A run of pieces can also be handed out *before* it is decrypted, as a :class:`Deferred`: its
views are reachable only through :meth:`Deferred.open_each` (or :meth:`Deferred.open`),
which decrypts each one first. So a buffer that still holds an earlier response's plaintext
can never be read by mistake.

:func:`byte_view` is the gateway's one way to see any buffer as flat bytes.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator

MiB = 1024 * 1024
GRAIN = 256 * 1024  # buffers are allocated in multiples of this, so they fit more chunks


def byte_view(piece: bytes | bytearray | memoryview) -> memoryview:
    """``piece`` as a flat view of bytes (no copy), whatever its format or shape, so that
    ``len()`` and slices count bytes."""
    view = piece if isinstance(piece, memoryview) else memoryview(piece)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def unviewed(buf: bytearray) -> bool:
    """True when no memoryview of ``buf`` is alive (resizing is refused while one is)."""
    try:
        buf.pop()  # a minor shrink and regrow: never a reallocation
    except BufferError:
        return False
    buf.append(0)
    return True


class BufferRecycler:
    """Buffers for decrypted chunks, kept for reuse up to ``max_bytes`` in all.

    Not thread-safe: call it from the event loop only.
    """

    def __init__(self, max_bytes: int = 64 * MiB) -> None:
        self._max = max_bytes
        self._held: collections.deque[bytearray] = collections.deque()
        self._bytes = 0

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def take(self, size: int) -> memoryview:
        """A writable view of exactly ``size`` bytes (contents undefined: overwrite it all)."""
        for _ in range(len(self._held)):
            buf = self._held.popleft()
            if len(buf) >= size and unviewed(buf):
                self._bytes -= len(buf)
                return memoryview(buf)[:size]
            self._held.append(buf)
        return memoryview(bytearray(-(-max(size, 1) // GRAIN) * GRAIN))[:size]

    def clear(self) -> None:
        """Drop every buffer kept for reuse (the next :meth:`take` allocates afresh)."""
        self._held.clear()
        self._bytes = 0

    def give_back(self, pieces: Iterable[object]) -> None:
        """Take back the buffers behind the views in ``pieces`` that :meth:`take` made (other
        objects are ignored); each is reused once no view of it is left."""
        for piece in pieces:
            if isinstance(piece, memoryview) and isinstance(piece.obj, bytearray):
                buf = piece.obj
                if self._bytes + len(buf) <= self._max:
                    self._held.append(buf)
                    self._bytes += len(buf)


class Deferred:
    """Pieces of a response whose bytes are not all written yet: ``fills[i]`` writes the
    bytes of ``pieces[i]`` (it decrypts, so call it off the event loop; None: written
    already). :meth:`open_each` hands the pieces out in order, each group as soon as its
    bytes are written, and :meth:`open` all at once. ``nbytes`` is known before."""

    __slots__ = ("_fills", "_pieces", "nbytes")

    def __init__(self, pieces: list[memoryview], fills: list[Callable[[], object] | None]) -> None:
        if len(fills) != len(pieces):
            raise ValueError(f"{len(fills)} fills for {len(pieces)} pieces")
        self._fills: list[Callable[[], object] | None] | None = fills
        self._pieces: list[memoryview] | None = pieces
        self.nbytes = sum(p.nbytes for p in pieces)

    def open_each(self) -> Iterator[list[memoryview]]:
        """Write the pieces' bytes (once) and yield them in order, in groups that each end
        with a piece that had to be written (pieces written already join the next group), so
        a consumer can send each group while its bytes are still in the CPU's cache. Not for
        two threads at once; a fill that fails raises, stays set (no later call hands out
        its unwritten view) and ends the iteration."""
        if self._pieces is None or self._fills is None:
            raise RuntimeError("this run was discarded: the stream it came from moved on")
        pieces, fills = self._pieces, self._fills
        start = 0
        for i, fill in enumerate(fills):
            if fill is None:
                continue
            fill()
            fills[i] = None
            yield pieces[start : i + 1]
            start = i + 1
        if start < len(pieces):
            yield pieces[start:]

    def open(self) -> list[memoryview]:
        """Write every piece's bytes (once) and return the pieces; after a failed call the
        next one runs the failed fill again."""
        for _ in self.open_each():
            pass
        assert self._pieces is not None
        return self._pieces

    def discard(self) -> None:
        """Drop the fills and the pieces, opened or not (what the fills hold, such as a
        memory map of a pack, is released now, whoever still holds this object)."""
        self._fills = self._pieces = None
