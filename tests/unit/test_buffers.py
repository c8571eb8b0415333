"""gateway.buffers: plaintext buffers are reused only once no view of them is alive, and a
Deferred run hands its pieces out only after their fills wrote them, in order."""

from __future__ import annotations

import pytest

from gateway.buffers import GRAIN, BufferRecycler, Deferred, unviewed


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


def _deferred(written: list[bool], calls: list[int], fail: set[int] | None = None) -> Deferred:
    """Pieces of one byte each; ``written[i]``: the piece holds its byte already (no fill).
    Fills log their index in ``calls`` and fail while their index is in ``fail``."""
    fail = fail if fail is not None else set()
    pieces = [memoryview(bytearray([i if done else 0])) for i, done in enumerate(written)]

    def fill(i: int) -> None:
        calls.append(i)
        if i in fail:
            raise ValueError(i)
        pieces[i][0] = i

    fills = [None if done else (lambda i=i: fill(i)) for i, done in enumerate(written)]
    return Deferred(pieces, fills)


@pytest.mark.parametrize(
    ("written", "groups"),
    [
        ([False, False, False], [[0], [1], [2]]),
        ([True, False, True, True], [[0, 1], [2, 3]]),  # written pieces join the next group
        ([True, True], [[0, 1]]),
        ([False], [[0]]),
        ([], []),
    ],
)
def test_open_each_yields_groups_that_end_with_a_filled_piece(
    written: list[bool], groups: list[list[int]]
) -> None:
    calls: list[int] = []
    run = _deferred(written, calls)
    seen: list[list[int]] = []
    handed = 0
    for group in run.open_each():
        seen.append([piece[0] for piece in group])
        assert seen[-1] == list(range(handed, handed + len(group)))  # each one written already
        handed += len(group)
        assert calls == [i for i in range(handed) if not written[i]]  # no fill ran ahead
    assert seen == groups
    assert run.nbytes == len(written)
    assert [p[0] for p in run.open()] == list(range(len(written)))  # written once: no fill again
    assert calls == [i for i, done in enumerate(written) if not done]


def test_a_failed_fill_stays_set_and_hands_out_nothing_past_it() -> None:
    calls: list[int] = []
    run = _deferred([False, False, False], calls, fail={1})
    groups = run.open_each()
    assert [p[0] for p in next(groups)] == [0]
    with pytest.raises(ValueError):
        next(groups)
    with pytest.raises(ValueError):  # again: piece 1 is never handed out unwritten
        run.open()
    assert calls == [0, 1, 1]


def test_a_discarded_run_cannot_be_opened() -> None:
    run = _deferred([False], [])
    run.discard()
    with pytest.raises(RuntimeError):
        run.open()
    with pytest.raises(RuntimeError):
        next(run.open_each())


def test_fills_and_pieces_must_pair_up() -> None:
    with pytest.raises(ValueError):
        Deferred([memoryview(b"a")], [])
