"""The versioned corpus: V deterministic versions of one file, each an edit of the last.

This module owns the dedup workload. Version 0 is ``size`` bytes of text (the stdlib
sources, :func:`bench.data.stdlib_text`) or of seeded pseudo-random bytes. Each later
version applies ``edits`` inserts, ``edits`` deletes and ``edits`` overwrites to the
previous one, at positions drawn from ``random.Random(seed)``, each of 1 byte to
``max_edit`` bytes (inserted/overwriting text is copied from elsewhere in the text; random
data gets seeded random bytes). Same spec, same bytes, on every run and in every process
(text depends on the Python installation's stdlib only).

Edits are applied with slices and one ``b"".join`` per version: no per-byte Python.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from bench.data import stdlib_text
from bench.units import KiB, MiB

CORPUS_KINDS = ("text", "random")


@dataclass(frozen=True)
class CorpusSpec:
    """What :func:`versions` generates."""

    versions: int = 8
    size: int = 64 * MiB
    kind: str = "text"
    seed: int = 20261101
    edits: int = 3  # of each kind (insert, delete, overwrite) per version
    max_edit: int = 16 * KiB

    def __post_init__(self) -> None:
        if self.kind not in CORPUS_KINDS:
            raise ValueError(f"corpus kind must be one of {CORPUS_KINDS}, got {self.kind!r}")
        if self.versions < 1 or self.size < 1 or self.edits < 0 or self.max_edit < 1:
            raise ValueError(f"invalid corpus spec {self}")


def _base(spec: CorpusSpec) -> bytes:
    if spec.kind == "text":
        return stdlib_text(spec.size)
    return random.Random(spec.seed).randbytes(spec.size)


def _material(spec: CorpusSpec, rng: random.Random, n: int, source: bytes) -> bytes:
    """``n`` new bytes for an insert or overwrite."""
    if spec.kind == "random" or len(source) <= n:
        return rng.randbytes(n)
    start = rng.randrange(len(source) - n)
    return source[start : start + n]


def next_version(prev: bytes, spec: CorpusSpec, rng: random.Random) -> bytes:
    """Apply one round of edits to ``prev``; consumes ``rng`` deterministically."""
    size = len(prev)
    edits: list[tuple[int, str, int]] = []
    for kind in ("insert", "delete", "overwrite"):
        for _ in range(spec.edits):
            edits.append((rng.randrange(size + 1), kind, rng.randint(1, spec.max_edit)))
    edits.sort()
    pieces: list[bytes] = []
    cursor = 0  # bytes of prev before cursor are emitted or deliberately dropped
    for pos, kind, length in edits:
        if pos < cursor:  # overlaps the previous edit's span: skip it (still deterministic)
            continue
        pieces.append(prev[cursor:pos])
        if kind == "insert":
            pieces.append(_material(spec, rng, length, prev))
            cursor = pos
        elif kind == "delete":
            cursor = min(size, pos + length)
        else:
            length = min(length, size - pos)
            pieces.append(_material(spec, rng, length, prev))
            cursor = pos + length
    pieces.append(prev[cursor:])
    return b"".join(pieces)


def versions(spec: CorpusSpec) -> Iterator[bytes]:
    """Yield the ``spec.versions`` versions in order (holds two versions at a time)."""
    rng = random.Random(spec.seed ^ 0x5EED)
    current = _base(spec)
    yield current
    for _ in range(spec.versions - 1):
        current = next_version(current, spec, rng)
        yield current
