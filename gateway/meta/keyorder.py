"""Key ordering helpers shared by listings and stores: S3 lists keys in UTF-8 byte order,
which equals code-point order for Python strings."""

from __future__ import annotations

MAX_CODEPOINT = 0x10FFFF


def prefix_successor(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    None when no such string exists (empty prefix, or only maximal code points).
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < MAX_CODEPOINT:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:  # skip surrogates, which cannot be encoded as UTF-8
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None
