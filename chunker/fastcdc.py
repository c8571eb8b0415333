"""Streaming FastCDC: bytes in, content-defined chunks out.

This module owns chunk *boundaries* and nothing else (no hashing, no I/O). It wraps the
Cython ``pyfastcdc`` cutter, which releases the GIL, in a push-style streaming interface:
the caller ``feed()``\\ s arbitrary pieces of a stream and gets back the chunks that are
final, then calls ``finish()`` for the rest.

Boundary rule
-------------
Chunk boundaries depend only on the bytes of the stream, never on how it was split into
pieces. This holds because of how ``pyfastcdc`` cuts a buffer starting at a chunk boundary:

* a cut found before the end of the buffer is decided by the bytes up to it, under the
  same rules as if more data followed (no chunk exceeds ``max_size``), so every chunk
  except the buffer's last is final;
* the last chunk runs to the end of the buffer and may grow when more data arrives, so it
  is kept as the *carry* and cut again together with the next data, except when it is
  exactly ``max_size`` long: that boundary is forced and cannot move.

Cutting is batched: small pieces are appended to a buffer and only cut once it holds at
least ``batch_size`` bytes (default and minimum: ``max_size``), so a stream fed in 64 KiB
network reads is not re-scanned once per piece. Each cut re-scans only the carry. A
larger ``batch_size`` (e.g. ``2 * max_size``) re-scans less, about 10-15% more chunking
throughput, at the cost of that much more memory per stream. Pieces of at least
``batch_size`` bytes that cannot change (``bytes``, or any buffer fed with
``owned=True``) are cut in place: only a bridge across the previous carry, up to the
first boundary inside the piece, is copied. The chunks point into the caller's buffer.
Such a piece fed while nothing is buffered is cut in place whatever its size.

A caller that fills its own buffers can avoid even the bridge: :meth:`StreamChunker.take_carry`
hands the carry back, the caller copies it to the front of its next buffer, fills the rest
from the stream and feeds that buffer (owned), which is then cut in place from its first byte.
The carry is the only data copied, and each buffer is released as soon as the caller drops
the chunks cut from it (the chunker keeps no view into it).

Memory safety
-------------
Returned chunks are read-only ``memoryview``\\ s that stay valid forever: they point either
into the caller's immutable (or ``owned``) buffer or into a buffer this chunker filled and
then abandoned (it is never written to or resized again). Other mutable inputs
(``bytearray``, views of them) are copied, so the caller may reuse its read buffer right
after ``feed()``.

A ``StreamChunker`` holds one ``pyfastcdc.FastCDC`` and is not thread-safe: use one per
stream and never call it concurrently (successive calls from different pool threads are
fine). The cutter releases the GIL while it scans.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyfastcdc

# Limits enforced by pyfastcdc 0.3 (see pyfastcdc/cy/fastcdc.pyx).
_MIN_SIZE_RANGE = (64, 1 << 20)
_AVG_SIZE_RANGE = (256, 4 << 20)
_MAX_SIZE_RANGE = (1024, 16 << 20)

Buffer = bytes | bytearray | memoryview
_EMPTY = memoryview(b"")


@dataclass(frozen=True)
class ChunkerParams:
    """FastCDC size limits in bytes.

    ``pyfastcdc``'s actual mean chunk size is about ``avg_size + min_size`` (cut-point
    skipping), i.e. ~1.25-1.4 MiB with the defaults. Changing any value changes every
    boundary, and therefore dedup against data written with the old values.
    """

    min_size: int = 256 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        for name, value, (lo, hi) in (
            ("min_size", self.min_size, _MIN_SIZE_RANGE),
            ("avg_size", self.avg_size, _AVG_SIZE_RANGE),
            ("max_size", self.max_size, _MAX_SIZE_RANGE),
        ):
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name}={value!r} is outside [{lo}, {hi}]")
        if not self.min_size <= self.avg_size <= self.max_size:
            raise ValueError(
                f"need min_size <= avg_size <= max_size, got {self.min_size}/{self.avg_size}/{self.max_size}"
            )


DEFAULT_PARAMS = ChunkerParams()


def _byte_view(data: Buffer) -> memoryview:
    """A flat unsigned-byte view of ``data`` without copying."""
    mv = data if isinstance(data, memoryview) else memoryview(data)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def _is_immutable(data: Buffer) -> bool:
    """True if the bytes behind ``data`` can never change (so views may point into them)."""
    if isinstance(data, bytes):
        return True
    return isinstance(data, memoryview) and isinstance(data.obj, bytes)


class StreamChunker:
    """Cut one stream into content-defined chunks; see the module docstring for the rules."""

    def __init__(self, params: ChunkerParams = DEFAULT_PARAMS, *, batch_size: int | None = None) -> None:
        self._params = params
        self._cdc = pyfastcdc.FastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size)
        self._max = params.max_size
        self._batch = max(batch_size if batch_size is not None else params.max_size, params.max_size)
        # Bytes not yet returned, starting at a chunk boundary. Either a read-only view of a
        # buffer nobody mutates (the carry left by the last cut: no copy), or a bytearray we
        # own and append small pieces to (never exported until it is cut and abandoned).
        self._buf: memoryview | bytearray = _EMPTY
        self._done = False
        self._bytes_in = 0

    @property
    def params(self) -> ChunkerParams:
        return self._params

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned as chunks (below ``batch_size`` between calls,
        except after an in-place piece, which leaves less than ``max_size``)."""
        return len(self._buf)

    @property
    def bytes_in(self) -> int:
        """Total bytes fed so far (bytes handed back by :meth:`take_carry` count once)."""
        return self._bytes_in

    def feed(self, data: Buffer, *, owned: bool = False) -> list[memoryview]:
        """Add the next piece of the stream; return the chunks that became final (maybe none).

        ``owned=True`` hands ``data`` over: the caller promises never to modify it again,
        so chunks may point into it even if it is a ``bytearray`` (``bytes`` always are).
        Such pieces of at least ``batch_size`` bytes, or of any size while nothing is
        buffered, are cut in place, mostly without copying.
        """
        if self._done:
            raise RuntimeError("StreamChunker.feed() after finish()")
        mv = _byte_view(data)
        n = mv.nbytes
        if n == 0:
            return []
        self._bytes_in += n
        if (n >= self._batch or not len(self._buf)) and (owned or _is_immutable(data)):
            return self._cut_in_place(mv)
        buf = self._buf if isinstance(self._buf, bytearray) else bytearray(self._buf)
        buf += mv
        if len(buf) < self._batch:
            self._buf = buf
            return []
        self._buf = _EMPTY
        return self._cut(memoryview(buf).toreadonly(), final=False)

    def take_carry(self) -> memoryview:
        """Hand back the bytes fed but not yet returned as chunks (read-only; they start at a
        chunk boundary), and forget them: the caller must feed them again, at the front of
        the rest of the stream. Typically the caller copies them to the start of its next
        buffer and feeds that whole buffer with ``owned=True``: it is then cut in place.

        The view may point into a buffer the caller fed (kept alive by the view only).
        """
        if self._done:
            raise RuntimeError("StreamChunker.take_carry() after finish()")
        buf, self._buf = self._buf, _EMPTY
        self._bytes_in -= len(buf)
        return buf if isinstance(buf, memoryview) else memoryview(buf).toreadonly()

    def finish(self) -> list[memoryview]:
        """End of stream: return every remaining chunk (possibly several, or none).

        The chunker is done afterwards; ``feed()`` raises and ``finish()`` returns ``[]``.
        """
        if self._done:
            return []
        self._done = True
        buf, self._buf = self._buf, _EMPTY
        if not len(buf):
            return []
        return self._cut(memoryview(buf).toreadonly(), final=True)

    # -- internals -------------------------------------------------------------------------

    def _cut(self, view: memoryview, *, final: bool) -> list[memoryview]:
        """Cut ``view`` (read-only, starts at a chunk boundary, never mutated again).

        Returns the final chunks; unless ``final``, the trailing partial chunk becomes the
        carry (a view, not a copy).
        """
        chunks = [c.data for c in self._cdc.cut_buf(view)]
        if final:
            return chunks
        if len(chunks[-1]) == self._max:  # forced boundary: cannot move whatever follows
            self._buf = _EMPTY
        else:
            self._buf = chunks.pop()
        return chunks

    def _cut_in_place(self, data: memoryview) -> list[memoryview]:
        """Cut a large piece that will never change, mostly without copying it.

        Only the buffered bytes plus a prefix of ``data`` are copied, into a bridge buffer
        that is cut until it shows a final boundary at or past the junction. The prefix
        starts at ``avg_size`` and doubles; with ``max_size`` bytes of ``data`` such a
        boundary always exists, because no chunk is longer than ``max_size``. From that
        boundary on, ``data`` is cut directly and its chunks are views of the caller's
        buffer.
        """
        carry, self._buf = self._buf, _EMPTY
        carry_len = len(carry)
        n = data.nbytes
        out: list[memoryview] = []
        start = 0
        if carry_len:
            take = min(n, self._params.avg_size)
            while True:
                bridge = memoryview(b"".join((carry, data[:take])))
                if take == n:  # the whole piece is in the bridge: the usual rule applies
                    return self._cut(bridge, final=False)
                chunks = [c.data for c in self._cdc.cut_buf(bridge)]
                end = 0
                for i, chunk in enumerate(chunks[:-1]):  # all but the last are final
                    end += len(chunk)
                    if end >= carry_len:
                        out = chunks[: i + 1]
                        start = end - carry_len
                        break
                if out:
                    break
                take = min(n, 2 * take)
        out += self._cut(data.toreadonly()[start:], final=False)
        return out


def chunk_buffer(data: Buffer, params: ChunkerParams = DEFAULT_PARAMS) -> list[memoryview]:
    """Chunk a whole in-memory buffer at once (same boundaries as streaming it)."""
    chunker = StreamChunker(params)
    out = chunker.feed(data)
    out += chunker.finish()
    return out
