"""gateway.memory: anonymous RSS, malloc_trim, and the idle-trim job's schedule."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from gateway.memory import MiB, anonymous_rss, trim_when_idle

pytestmark = pytest.mark.skipif(anonymous_rss() is None, reason="needs Linux /proc RssAnon")


def test_anonymous_rss_counts_touched_memory() -> None:
    before = anonymous_rss()
    block = bytearray(64 * MiB)  # zero-filled: every page touched
    during = anonymous_rss()
    assert before is not None and during is not None
    assert during - before >= 48 * MiB
    del block


def test_trim_returns_freed_heap_memory_fragmentation_kept() -> None:
    """With the serving process's malloc settings, buffers freed between live ones stay
    resident until trim() (a fresh interpreter, so the test process's heap plays no part)."""
    script = textwrap.dedent(
        """
        from gateway import memory
        memory.tune_malloc()
        MiB = 1 << 20
        keep, drop = [], []
        for i in range(192):  # 1 MiB buffers, each followed by a small live one
            drop.append(bytearray(MiB))
            keep.append(bytearray(1024))  # above pymalloc's limit: from the same heap
        keep.append(bytearray(1024))
        drop.clear()
        freed = memory.anonymous_rss()
        assert memory.trim()
        print(freed, memory.anonymous_rss())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    freed, trimmed = map(int, out.stdout.split())
    assert freed - trimmed >= 128 * MiB, (freed / MiB, trimmed / MiB)


class _Probe:
    """What the idle-trim job sees and does: a busy flag, an RSS figure, and its calls."""

    def __init__(self, rss: int = 100 * MiB) -> None:
        self.busy = True
        self.rss = rss
        self.calls: list[str] = []
        self.freed: list[int] = []

    def release(self) -> None:
        self.calls.append("release")

    def give_back(self) -> None:
        self.calls.append("trim")
        self.rss = 100 * MiB


async def _run(probe: _Probe, idle: float, steps: list[tuple[float, bool, int]]) -> list[str]:
    """Run the job; each step waits, then sets busy and the RSS. Returns the calls made."""
    job = asyncio.ensure_future(
        trim_when_idle(
            lambda: probe.busy,
            probe.release,
            idle,
            rss=lambda: probe.rss,
            give_back=probe.give_back,
            growth=16 * MiB,
            on_trim=probe.freed.append,
        )
    )
    try:
        for wait, busy, rss in steps:
            await asyncio.sleep(wait)
            probe.busy, probe.rss = busy, rss
        await asyncio.sleep(idle * 3)
        return probe.calls
    finally:
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job


async def test_idle_after_growth_trims_once() -> None:
    """Busy, then idle with 200 MiB more: the buffers are dropped, then the heap trimmed;
    staying idle without new growth trims nothing more."""
    probe = _Probe()
    calls = await _run(probe, 0.05, [(0.0, True, 300 * MiB), (0.1, False, 300 * MiB)])
    assert calls == ["release", "trim"]
    assert probe.freed == [200 * MiB]  # what the trim gave back, for the metrics


async def test_no_trim_without_growth() -> None:
    probe = _Probe()
    calls = await _run(probe, 0.05, [(0.0, True, 110 * MiB), (0.1, False, 110 * MiB)])
    assert calls == []


async def test_requests_keep_resetting_the_idle_clock() -> None:
    """Idle gaps shorter than the idle period never trim, however much memory grew."""
    probe = _Probe()
    steps = [(0.0, True, 400 * MiB)]
    for _ in range(8):
        steps += [(0.05, False, 400 * MiB), (0.05, True, 400 * MiB)]
    job_calls = await _run(probe, 0.2, [*steps, (0.0, True, 400 * MiB)])
    assert job_calls == []


async def test_growth_after_a_trim_trims_again() -> None:
    probe = _Probe()
    steps = [(0.0, True, 300 * MiB), (0.1, False, 300 * MiB), (0.2, True, 250 * MiB), (0.1, False, 250 * MiB)]
    calls = await _run(probe, 0.05, steps)
    assert calls == ["release", "trim", "release", "trim"]


_FREEZE_SCRIPT = """
import gc, weakref
from gateway.memory import freeze_startup_heap

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

kept = [Node() for _ in range(1000)]
dead_before = cycle()  # garbage when the heap is frozen: collected, not frozen
frozen = freeze_startup_heap()
assert dead_before() is None, "garbage was frozen instead of collected"
assert frozen >= 1000 and frozen == gc.get_freeze_count(), frozen
assert not any(o is kept for o in gc.get_objects()), "a live object was left to be scanned"
dead_after = cycle()  # the collector still runs for what comes later
gc.collect()
assert dead_after() is None, "a cycle made after the freeze was not collected"
print("ok", frozen)
"""


def test_freeze_startup_heap_freezes_the_live_heap_and_collection_goes_on() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _FREEZE_SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ")
