"""A plain-text progress line on stderr (``\\r`` updates, no dependencies).

This module owns what the user sees while a measurement runs: a bar of done/total (or
elapsed/duration), ops, throughput so far (MB/s, MB = 10^6 bytes) and errors, redrawn at
most a few times a second, and erased/ended with a newline by :meth:`Progress.close`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from bench.units import mb_per_s

_WIDTH = 24


class Progress:
    """One progress line; :meth:`update` is cheap to call often (it throttles itself)."""

    def __init__(
        self, label: str, *, enabled: bool = True, stream: TextIO | None = None, interval: float = 0.25
    ):
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = 0.0
        self._shown = False
        self._width = 0

    def update(
        self,
        done: float,
        total: float | None,
        *,
        ops: int = 0,
        nbytes: int = 0,
        errors: int = 0,
        elapsed: float = 0.0,
        phase: str = "",
        force: bool = False,
    ) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        frac = min(1.0, done / total) if total else 0.0
        fill = int(frac * _WIDTH)
        bar = "#" * fill + "-" * (_WIDTH - fill)
        parts = [f"{self.label}{' ' + phase if phase else ''} [{bar}] {frac * 100:5.1f}%"]
        parts.append(f"{ops} ops")
        if nbytes:
            parts.append(f"{mb_per_s(nbytes, elapsed):8.1f} MB/s")
        if elapsed:
            parts.append(f"{ops / elapsed:9.1f} op/s  {elapsed:6.1f}s")
        if errors:
            parts.append(f"{errors} errors")
        line = "  ".join(parts)
        self.stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
