"""Paging through key-ordered listings with S3's prefix/delimiter rules.

Shared by ListObjects (V1, V2) and ListMultipartUploads. With a delimiter, each common
prefix is emitted once and the scan then seeks to the prefix's successor instead of walking
every key beneath it. A resume point that is itself a common prefix skips that prefix.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gateway.meta.keyorder import prefix_successor

T = TypeVar("T")


@dataclass(frozen=True)
class Cursor:
    """Where a fetch starts: after ``key`` (or at it, if ``inclusive``); ``tiebreak`` orders
    several entries under one key (upload ids)."""

    key: str
    inclusive: bool = False
    tiebreak: str = ""


@dataclass
class Page(Generic[T]):
    items: list[T] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    last: str | None = None  # the last key or common prefix returned
    last_item: T | None = None

    @property
    def count(self) -> int:
        return len(self.items) + len(self.prefixes)


def common_prefix(key: str, prefix: str, delimiter: str) -> str | None:
    if not delimiter:
        return None
    i = key.find(delimiter, len(prefix))
    return None if i < 0 else key[: i + len(delimiter)]


async def paginate(
    fetch: Callable[[Cursor, int], Awaitable[list[T]]],
    key_of: Callable[[T], str],
    prefix: str,
    delimiter: str,
    start: Cursor,
    max_items: int,
    tiebreak_of: Callable[[T], str] = lambda _: "",
    batch_max: int = 1000,
) -> Page[T]:
    """One page of at most ``max_items`` entries (items and common prefixes) from ``start``."""
    page: Page[T] = Page()
    cursor = start
    if not start.inclusive and not start.tiebreak and start.key.startswith(prefix):
        cp = common_prefix(start.key, prefix, delimiter)
        if cp is not None and cp == start.key:
            nxt = prefix_successor(cp)
            if nxt is None:
                return page
            cursor = Cursor(nxt, inclusive=True)
    batch = min(batch_max, max_items) + 1
    while True:
        rows = await fetch(cursor, batch)
        reseek = False
        for row in rows:
            if page.count >= max_items:
                page.truncated = True
                return page
            key = key_of(row)
            cp = common_prefix(key, prefix, delimiter)
            if cp is not None:
                page.prefixes.append(cp)
                page.last = cp
                nxt = prefix_successor(cp)
                if nxt is None:
                    return page
                cursor, reseek = Cursor(nxt, inclusive=True), True
                break
            page.items.append(row)
            page.last, page.last_item = key, row
            cursor = Cursor(key, tiebreak=tiebreak_of(row))
        if not reseek and len(rows) < batch:
            return page
