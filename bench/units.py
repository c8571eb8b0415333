"""Byte sizes and rates: parsing ``64MiB``-style sizes and formatting them back.

This module owns the benchmark's units. Sizes accept binary suffixes (``KiB``, ``MiB``,
``GiB``, ``TiB``: powers of 1024) and decimal ones (``KB``/``k``, ``MB``, ``GB``: powers of
1000), case-insensitively, with an optional ``B`` and an optional space; a bare number is
bytes. Throughput is always reported in **MB/s with MB = 10^6 bytes** (:data:`MB`).
"""

from __future__ import annotations

import re

MB = 1_000_000  # the unit of every reported throughput: MB/s means 10^6 bytes per second
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_SUFFIXES = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": KiB,
    "kib": KiB,
    "mi": MiB,
    "mib": MiB,
    "gi": GiB,
    "gib": GiB,
    "ti": 1024 * GiB,
    "tib": 1024 * GiB,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str | int) -> int:
    """``"64MiB"`` -> 67108864, ``"4KiB"`` -> 4096, ``"1.5GB"`` -> 1500000000, ``"100"`` -> 100.

    Raises :class:`ValueError` for anything else (negative, unknown suffix, fractional bytes).
    """
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (try 4KiB, 64MiB, 1GiB)")
    number, suffix = m.groups()
    mult = _SUFFIXES.get(suffix.lower())
    if mult is None:
        raise ValueError(f"unknown size suffix {suffix!r} in {text!r} (KiB, MiB, GiB, KB, MB, GB)")
    if "." in number:
        value = float(number) * mult
        if value != int(value):
            raise ValueError(f"{text!r} is not a whole number of bytes")
        return int(value)
    return int(number) * mult


def format_size(n: int) -> str:
    """The shortest exact binary spelling: 67108864 -> ``"64MiB"``, 1000 -> ``"1000B"``."""
    for unit, mult in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return f"{n}B"


def mb_per_s(nbytes: int, seconds: float) -> float:
    """Throughput in MB/s (10^6 bytes per second); 0 when no time passed."""
    return nbytes / MB / seconds if seconds > 0 else 0.0
