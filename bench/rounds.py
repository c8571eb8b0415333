"""Alternating rounds: one load against a reference server and against the endpoint under
test, in turn, several times, and the best round of each side.

This module owns how two servers are compared on a shared, noisy machine. A slow spell of
the machine (another tenant, a writeback burst) that lasts a few seconds hits one
measurement and not the next: measured once each, minutes apart, the two sides of a ratio
can land in different spells. Measured in alternating rounds, each side gets several
chances, and each side's best round counts, because other load only ever slows a
measurement down. Read-only loads (GET, HEAD, LIST) populate their key set in their side's
first round and reuse it afterwards, so only the first round pays for the upload.

Both the small-object comparison (:mod:`bench.small`) and the big-object part of the suite
(:mod:`bench.suite`) measure through :class:`Rounds`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from bench.load import LoadSpec, run_load
from bench.stats import Summary

READ_ONLY = ("get", "head", "list")


def best(runs: list[Summary]) -> Summary:
    """The round that moved the most operations per second (for one object size, also the
    most MB/s)."""
    return max(runs, key=lambda r: r.total.ops_per_s)


def measure(spec: LoadSpec, done: list[Summary]) -> Summary:
    """Run ``spec`` once and append its summary to ``done``; a read-only load reuses the key
    set that the first run in ``done`` populated."""
    if done and spec.op in READ_ONLY:
        spec = replace(spec, prefix=done[0].prefix, prepopulated=True)
    summary = run_load(spec)
    done.append(summary)
    return summary


@dataclass
class Rounds:
    """Every round's summary of the reference side and of the target side of one load."""

    reference: list[Summary] = field(default_factory=list)
    target: list[Summary] = field(default_factory=list)

    def run(self, reference: LoadSpec, target: LoadSpec) -> None:
        """One round: the reference first, then the target."""
        measure(reference, self.reference)
        measure(target, self.target)

    @property
    def best_reference(self) -> Summary:
        return best(self.reference)

    @property
    def best_target(self) -> Summary:
        return best(self.target)

    def ratio(self) -> float:
        """The target's best op/s over the reference's best (0.0 if the reference did
        nothing)."""
        base = self.best_reference.total.ops_per_s
        return self.best_target.total.ops_per_s / base if base else 0.0

    def by_round(self, unit: str, names: tuple[str, str] = ("noop", "strata")) -> dict[str, list[float]]:
        """Each side's figure per round, in order (``unit``: a field of the totals), under
        ``names`` (reference, target)."""
        return {
            name: [round(getattr(r.total, unit), 1) for r in runs]
            for name, runs in zip(names, (self.reference, self.target), strict=True)
        }
