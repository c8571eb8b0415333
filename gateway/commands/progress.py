"""Progress lines for long operator jobs (fsck, gc, rebuilds), drawn on stderr.

On a terminal one line is redrawn in place (at most every ``min_interval`` seconds); when
stderr is a file or a pipe (CI logs, ``2> log``) a plain line is written every
``plain_interval`` seconds instead, so logs stay readable. Results go to stdout; only
progress and summaries go here. :func:`render` and :func:`human_bytes` are pure.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: int | float) -> str:
    """``1536`` -> ``"1.5 KiB"``; ``512`` -> ``"512 B"``."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def render(label: str, done: int, total: int | None, unit: str, detail: str, elapsed: float) -> str:
    """One progress line: ``fsck: 120/400 objects (30%), 2 broken [0:07]``."""
    count = f"{done:,}" if total is None else f"{done:,}/{total:,}"
    pct = f" ({100 * done // total}%)" if total else ""
    unit = f" {unit}" if unit else ""
    extra = f", {detail}" if detail else ""
    minutes, seconds = divmod(int(elapsed), 60)
    return f"{label}: {count}{unit}{pct}{extra} [{minutes}:{seconds:02d}]"


class Progress:
    """A counter shown on ``stream`` while a job runs. Not thread-safe: call from one task."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "",
        stream: TextIO | None = None,
        min_interval: float = 0.2,
        plain_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.detail = ""
        self._stream = sys.stderr if stream is None else stream
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._interval = min_interval if self._tty else plain_interval
        self._clock = clock
        self._start = clock()
        self._last = self._start
        self._drawn = False

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    def line(self) -> str:
        return render(self.label, self.done, self.total, self.unit, self.detail, self.elapsed)

    def update(self, advance: int = 0, detail: str | None = None, done: int | None = None) -> None:
        """Add ``advance`` to the count (or set it to ``done``), replace the detail text, and
        redraw if it is time."""
        self.done = self.done + advance if done is None else done
        if detail is not None:
            self.detail = detail
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self._draw()

    def write(self, text: str, file: TextIO | None = None) -> None:
        """Print a line (to ``file``, default the progress stream) without mangling the bar."""
        self._clear()
        print(text, file=self._stream if file is None else file, flush=True)

    def close(self) -> None:
        """Draw the final state once and end the line."""
        self._draw()
        if self._tty:
            print(file=self._stream, flush=True)
        self._drawn = False

    def _draw(self) -> None:
        if self._tty:
            self._stream.write("\r\x1b[K" + self.line())
            self._stream.flush()
            self._drawn = True
        else:
            print(self.line(), file=self._stream, flush=True)

    def _clear(self) -> None:
        if self._tty and self._drawn:
            self._stream.write("\r\x1b[K")
            self._drawn = False
