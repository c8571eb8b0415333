"""gateway.buffers: plaintext buffers are reused only once no view of them is alive."""

from __future__ import annotations

import pytest

from gateway.buffers import GRAIN, BufferRecycler, unviewed


def test_unviewed_sees_live_views_and_keeps_the_contents() -> None:
    buf = bytearray(b"abcdef")
    assert unviewed(buf) and len(buf) == 6
    view = memoryview(buf)[2:4]
    assert not unviewed(buf)
    piece = view[1:]  # a slice of a view keeps the buffer viewed too
    del view
    assert not unviewed(buf)
    del piece
    assert unviewed(buf) and buf[:5] == b"abcde" and len(buf) == 6


@pytest.mark.parametrize("size", [1, 1000, GRAIN, GRAIN + 1, 3 * GRAIN - 7])
def test_take_gives_writable_views_of_exactly_the_size(size: int) -> None:
    view = BufferRecycler().take(size)
    assert view.nbytes == size and not view.readonly
    assert isinstance(view.obj, bytearray) and len(view.obj) % GRAIN == 0


def test_a_buffer_given_back_is_reused_only_when_nothing_views_it() -> None:
    recycler = BufferRecycler()
    first = recycler.take(100_000)
    first[:] = b"x" * 100_000
    held = first[10:20]  # e.g. the transport has not sent these bytes yet
    recycler.give_back([first, b"not ours", memoryview(b"read-only bytes")])
    del first
    assert recycler.held_bytes == GRAIN
    second = recycler.take(50_000)
    assert second.obj is not held.obj  # still viewed: a new buffer
    assert bytes(held) == b"x" * 10
    owner = held.obj
    del held
    third = recycler.take(200_000)
    assert third.obj is owner and recycler.held_bytes == 0  # nothing views it now: reused
    too_big = recycler.take(GRAIN + 1)
    assert too_big.obj is not owner


def test_give_back_keeps_at_most_max_bytes() -> None:
    recycler = BufferRecycler(max_bytes=3 * GRAIN)
    views = [recycler.take(GRAIN) for _ in range(5)]
    recycler.give_back(views)
    assert recycler.held_bytes == 3 * GRAIN
