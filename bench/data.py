"""Object payloads for the load generator and the codec ceiling: random or text, made unique.

This module owns what the benchmark uploads. Each process builds one *base block* once
(``random``: ``os.urandom``; ``text``: the Python standard library's ``.py`` sources,
concatenated in sorted path order) of ``min(size, BASE_MAX)`` bytes. Object ``o`` is the base
block repeated to the object size, then **stamped**: every ``STAMP_PERIOD`` (64 KiB) bytes,
and over the last 16 bytes, 16 bytes are overwritten with ``(object id, offset)`` as two
little-endian u64. Because the stamp period is far below the chunker's minimum chunk (256 KiB),
every chunk of every object carries stamps no other chunk has: distinct objects never
dedup against each other or within themselves, while text keeps its compressibility
(16 bytes in 64 KiB). Objects of at most 64 KiB carry the two stamps at 0 and ``size - 16``.

Bodies are produced window by window (:meth:`PayloadSource.fill`, slice copies from the
base block, no per-byte Python), so a 1 GiB object never needs more than a few 1 MiB windows
in memory. :func:`stdlib_text` is shared with the versioned corpus (:mod:`bench.corpus`).
"""

from __future__ import annotations

import os
import struct
import sysconfig
from functools import lru_cache

from bench.units import MiB

STAMP_PERIOD = 64 * 1024
STAMP_LEN = 16
BASE_MAX = 16 * MiB
KINDS = ("random", "text")

_STAMP = struct.Struct("<QQ")


@lru_cache(maxsize=4)
def stdlib_text(n: int) -> bytes:
    """The first ``n`` bytes of the stdlib's ``.py`` files concatenated in sorted path order
    (repeated if the stdlib is smaller). Deterministic for one Python installation."""
    root = sysconfig.get_paths()["stdlib"]
    parts: list[bytes] = []
    have = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, name), "rb") as f:
                    data = f.read()
            except OSError:
                continue
            parts.append(data)
            have += len(data)
            if have >= n:
                return b"".join(parts)[:n]
    if not have:
        raise RuntimeError(f"no .py sources under {root}")
    blob = b"".join(parts)
    return (blob * (n // len(blob) + 1))[:n]


def base_block(kind: str, length: int) -> bytes:
    """A base block of ``length`` bytes of the given kind (``random`` or ``text``)."""
    if kind == "random":
        return os.urandom(length)
    if kind == "text":
        return stdlib_text(length)
    raise ValueError(f"unknown data kind {kind!r} (one of {', '.join(KINDS)})")


def stamp_positions(size: int, start: int, end: int) -> list[int]:
    """Offsets of the stamps of a ``size``-byte object that overlap ``[start, end)``."""
    if size < STAMP_LEN:
        return []
    first = max(0, (start - STAMP_LEN) // STAMP_PERIOD + 1) * STAMP_PERIOD if start > 0 else 0
    out = list(range(first, min(end, size - STAMP_LEN + 1), STAMP_PERIOD))
    last = size - STAMP_LEN
    if last < end and last + STAMP_LEN > start and (not out or out[-1] != last):
        out.append(last)
    return out


class PayloadSource:
    """Makes unique objects of one size from one base block (see the module docstring)."""

    def __init__(self, kind: str, size: int, *, base: bytes | None = None) -> None:
        if size <= 0:
            raise ValueError("object size must be positive")
        self.kind = kind
        self.size = size
        self.base = base if base is not None else base_block(kind, min(size, BASE_MAX))
        self._base_view = memoryview(self.base)

    def fill(self, buf: bytearray | memoryview, object_id: int, offset: int) -> int:
        """Write object ``object_id``'s bytes ``[offset, offset + len(buf))`` (clipped to the
        object) into ``buf``; return how many bytes were written."""
        n = min(len(buf), self.size - offset)
        if n <= 0:
            return 0
        out = memoryview(buf)
        base, blen = self._base_view, len(self._base_view)
        pos = 0
        while pos < n:  # a few slice copies per window: the base repeats every len(base) bytes
            src = (offset + pos) % blen
            take = min(n - pos, blen - src)
            out[pos : pos + take] = base[src : src + take]
            pos += take
        end = offset + n
        oid = object_id & 0xFFFFFFFFFFFFFFFF
        for p in stamp_positions(self.size, offset, end):
            stamp = _STAMP.pack(oid, p)
            lo, hi = max(p, offset), min(p + STAMP_LEN, end)
            out[lo - offset : hi - offset] = stamp[lo - p : hi - p]
        return n

    def object_bytes(self, object_id: int) -> bytes:
        """The whole object as ``bytes`` (small objects and the in-process ceiling)."""
        buf = bytearray(self.size)
        self.fill(buf, object_id, 0)
        return bytes(buf)
