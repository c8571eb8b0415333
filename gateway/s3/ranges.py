"""HTTP Range header parsing, as S3 applies it to GetObject.

S3 honours a single ``bytes=`` range; a syntactically invalid header, or one naming several
ranges, is ignored and the whole object is served. A syntactically valid range that does not
overlap the object is ``InvalidRange`` (416).
"""

from __future__ import annotations

import re

from gateway.s3.errors import S3Error

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return the half-open byte span [start, end) to serve, or None for the whole object."""
    if header is None:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise S3Error("InvalidRange", RangeRequested=header, ActualObjectSize=str(size))
        return max(size - n, 0), size
    start = int(first)
    end = size - 1 if last == "" else int(last)
    if last != "" and end < start:
        return None  # invalid syntax per RFC 9110: ignored
    if start >= size:
        raise S3Error("InvalidRange", RangeRequested=header, ActualObjectSize=str(size))
    return start, min(end, size - 1) + 1
