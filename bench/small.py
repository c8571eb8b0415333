"""Small objects against the no-op floor: the same client, two servers, one ratio.

This module owns the ``small`` mode. It starts the no-op server (:mod:`bench.noop`, as a
child process on a free port, unless ``noop_endpoint`` is given), then for each operation
(PUT, then GET by default) runs the identical load (same size, concurrency, processes and
duration) first against the no-op server and then against the endpoint under test. The
ratio ``endpoint op/s / no-op op/s`` says how much of what this client and this machine
can do over HTTP the gateway keeps; it cancels most of the machine's noise and the
client's own cost, which both sides share.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.load import LoadSpec
from bench.rounds import Rounds
from bench.server import NoopServer
from bench.stats import Summary


@dataclass(frozen=True)
class SmallSpec:
    endpoint: str
    access_key: str
    secret_key: str
    size: int = 4096
    concurrency: int = 32
    duration: float = 10.0  # per round, per op, per server
    rounds: int = 1  # alternate no-op / endpoint this many times; the best round of each counts
    ops: Sequence[str] = ("put", "get")
    objects: int = 256  # key set for reads, populated once per server
    processes: int = 0
    bucket: str = "strata-bench"
    noop_endpoint: str = ""  # empty: start one
    progress: bool = True
    server_pid: int | None = None  # the endpoint's server, when local: its CPU is measured


@dataclass
class SmallResult:
    """Per op, every round's summary for both servers; the best round of each is compared
    (interference from other load only ever slows a round down, see :mod:`bench.rounds`)."""

    spec: SmallSpec
    rounds: dict[str, Rounds] = field(default_factory=dict)

    @property
    def noop(self) -> dict[str, Summary]:
        return {op: r.best_reference for op, r in self.rounds.items()}

    @property
    def target(self) -> dict[str, Summary]:
        return {op: r.best_target for op, r in self.rounds.items()}

    def ratio(self, op: str) -> float:
        return self.rounds[op].ratio()

    def summaries(self) -> list[Summary]:
        noop, target = self.noop, self.target
        return [s for op in self.spec.ops for s in (noop[op], target[op])]

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": "small",
            "size": self.spec.size,
            "concurrency": self.spec.concurrency,
            "duration": self.spec.duration,
            "rounds": self.spec.rounds,
            "noop": {op: s.to_json() for op, s in self.noop.items()},
            "strata": {op: s.to_json() for op, s in self.target.items()},
            "ratios": {op: round(self.ratio(op), 4) for op in self.spec.ops},
            "ops_per_s_by_round": {op: self.rounds[op].by_round("ops_per_s") for op in self.spec.ops},
        }


def run_small(spec: SmallSpec) -> SmallResult:
    result = SmallResult(spec)
    base = LoadSpec(
        endpoint=spec.endpoint,
        access_key=spec.access_key,
        secret_key=spec.secret_key,
        size=spec.size,
        concurrency=spec.concurrency,
        duration=spec.duration,
        objects=spec.objects,
        processes=spec.processes,
        bucket=spec.bucket,
        progress=spec.progress,
        server_pid=spec.server_pid,
    )
    with tempfile.TemporaryDirectory(prefix="bench-noop-") as tmp:
        noop = None if spec.noop_endpoint else NoopServer(Path(tmp) / "noop.log", size=spec.size).start()
        try:
            noop_endpoint = spec.noop_endpoint or (noop.endpoint if noop else "")
            noop_spec = replace(base, endpoint=noop_endpoint, server_pid=noop.pid if noop else None)
            for op in spec.ops:
                rounds = result.rounds[op] = Rounds()
                for _ in range(max(1, spec.rounds)):
                    rounds.run(
                        replace(noop_spec, op=op, label=f"noop {op}"),
                        replace(base, op=op, label=f"strata {op}"),
                    )
        finally:
            if noop is not None:
                noop.stop()
    return result
