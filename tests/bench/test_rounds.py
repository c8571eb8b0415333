"""Alternating rounds (bench.rounds): which round counts, the ratio, and key-set reuse."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.load import LoadSpec
from bench.rounds import Rounds, best
from bench.server import NoopServer
from bench.stats import OpLog, Summary, summarize


def _run(ops: int, seconds: float, size: int = 4096) -> Summary:
    """A finished run of ``ops`` operations whose last one completed at ``seconds``."""
    log = OpLog()
    for i in range(ops):
        log.record("get", seconds * (i + 1) / ops, 0.001, size)
    return summarize("get", size, 4, "random", 1, log)


@pytest.mark.parametrize(
    ("reference", "target", "expected"),
    [
        ([(100, 1.0)], [(25, 1.0)], 0.25),
        # the best round of each side counts, wherever it fell
        ([(100, 1.0), (200, 1.0), (150, 1.0)], [(50, 1.0), (30, 1.0), (40, 1.0)], 0.25),
        ([(100, 2.0), (100, 1.0)], [(60, 1.0), (60, 2.0)], 0.6),
        ([(0, 1.0)], [(10, 1.0)], 0.0),  # a reference that did nothing gives no ratio
    ],
)
def test_each_side_keeps_its_best_round(
    reference: list[tuple[int, float]], target: list[tuple[int, float]], expected: float
) -> None:
    rounds = Rounds([_run(*r) for r in reference], [_run(*t) for t in target])
    assert rounds.ratio() == pytest.approx(expected)
    assert rounds.best_reference.total.ops_per_s == max(r.total.ops_per_s for r in rounds.reference)
    assert best(rounds.target).total.ops_per_s == max(r.total.ops_per_s for r in rounds.target)


def test_by_round_lists_every_round_in_order_under_the_given_names() -> None:
    mb = 1_000_000
    rounds = Rounds([_run(10, 1.0, mb), _run(30, 2.0, mb)], [_run(5, 1.0, mb), _run(4, 0.5, mb)])
    assert rounds.by_round("ops_per_s") == {"noop": [10.0, 15.0], "strata": [5.0, 8.0]}
    assert rounds.by_round("mb_per_s", names=("a", "b")) == {"a": [10.0, 15.0], "b": [5.0, 8.0]}


@pytest.fixture(scope="module")
def noop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NoopServer]:
    with NoopServer(tmp_path_factory.mktemp("noop") / "noop.log") as server:
        yield server


def test_read_rounds_populate_once_and_reuse_the_key_set(noop: NoopServer) -> None:
    """Against a real (no-op) server: the first GET round of a side uploads its key set, the
    later rounds read the same keys; writes never reuse a prefix."""
    common = {"endpoint": noop.endpoint, "access_key": "k", "secret_key": "s", "progress": False}
    get = LoadSpec(op="get", size=8192, count=16, concurrency=2, objects=4, processes=1, **common)
    rounds = Rounds()
    for _ in range(3):
        rounds.run(get, get)
    for side in (rounds.reference, rounds.target):
        assert len(side) == 3 and all(r.errors == 0 and r.total.count == 16 for r in side)
        assert {r.prefix for r in side} == {side[0].prefix}
    assert rounds.reference[0].prefix != rounds.target[0].prefix  # each side has its own keys

    put = LoadSpec(op="put", size=4096, count=4, concurrency=2, processes=1, **common)
    writes = Rounds()
    writes.run(put, put)
    writes.run(put, put)
    assert len({r.prefix for r in writes.reference + writes.target}) == 4
