"""The standard measurement set and its ratios (what the README table and the guard use).

This module owns *which* measurements make up a Strata benchmark report and how they are
turned into ratios measured within one run (the machine is shared and noisy, so absolute
numbers move; ratios of two measurements taken minutes apart move much less):

* ``put_vs_encode[kind]``: PUT MB/s of 64 MiB objects at concurrency 4 / the *achievable*
  encode ceiling on the same data kind (target >= 0.60);
* ``get_vs_decode[kind]``: GET MB/s / the achievable decode ceiling (target >= 0.60);
* ``small_put_vs_noop`` / ``small_get_vs_noop``: 4 KiB op/s at concurrency 32 / the same
  client's op/s against the no-op server (targets >= 0.25 and >= 0.40);
* ``physical_vs_unique``: dedup physical bytes / in-process unique compressed bytes over
  the versioned corpus (target <= 1.10).

The *achievable* ceiling is the lower of the in-process codec ceiling (the best of three
measurements: before the PUTs, between the PUTs and the GETs, after the GETs) and what the
same client moves with the same objects and concurrency through the no-op server (the HTTP
floor). The no-op server and Strata are measured in alternating rounds (``big_rounds``, 3;
1 in ``quick``), and each side's best round counts (:mod:`bench.rounds`). On a
small machine where client and server share the cores, loopback HTTP alone can be slower
than the codec (here the no-op GET runs at about a quarter of AES-GCM decode speed), and a
ratio against the codec alone would then judge the machine rather than the gateway. The
uncapped ratios (``put_vs_encode_uncapped[kind]``, ``get_vs_decode_uncapped[kind]``) and
``put_vs_noop[kind]`` / ``get_vs_noop[kind]`` are reported beside them, without targets.

Every run against a server the suite started also records CPU time (:mod:`bench.cpu`):
the machine's busy cores and the server's core-ms per MB or per request. From them comes
one more figure without a target, ``put_vs_encode_cpu_bound[kind]`` /
``get_vs_decode_cpu_bound[kind]``: the highest ratio the machine's cores allow at all, if the
gateway spent nothing beyond the codec's own CPU per MB (the ceiling's) plus what the same
client and the no-op server spend per MB over HTTP. When a target sits above that bound,
no gateway can meet it on this machine.

By default it starts its own embedded Strata server on a temporary data directory
(:class:`bench.server.StrataServer`); it can also measure a running one
(``endpoint`` + keys, and ``data_dir`` for the dedup part). ``quick`` makes every part a few
seconds long and measures random data only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.ceiling import CeilingSpec, run_ceiling
from bench.corpus import CorpusSpec
from bench.dedup import DedupSpec, local_meter, run_dedup
from bench.load import LoadSpec
from bench.report import RUN_HEADERS, run_rows, table
from bench.rounds import Rounds
from bench.server import NoopServer, StrataServer, inherited_settings
from bench.small import SmallSpec, run_small
from bench.stats import Summary
from bench.units import MB, GiB, MiB

TARGETS: dict[str, tuple[float, str]] = {
    # name -> (target, "min": ratio should be at least target / "max": at most target)
    "put_vs_encode": (0.60, "min"),
    "get_vs_decode": (0.60, "min"),
    "small_put_vs_noop": (0.25, "min"),
    "small_get_vs_noop": (0.40, "min"),
    "physical_vs_unique": (1.10, "max"),
}


def cpu_bound_mb_per_s(cores: float, *costs: float | None) -> float | None:
    """The MB/s ``cores`` sustain when every MB costs the sum of ``costs`` (core-ms per MB);
    None if a cost is unknown."""
    if not costs or any(c is None or c <= 0 for c in costs):
        return None
    return 1000.0 * cores / sum(c for c in costs if c is not None)


def codec_cost(phase: str, *measurements: dict[str, Any]) -> float | None:
    """The codec's core-ms per MB for ``phase`` ("encode" / "decode"): the lowest of the
    ceiling ``measurements`` (other load only ever adds CPU), None if none has it."""
    return min((c for m in measurements if (c := m.get(f"{phase}_core_ms_per_mb"))), default=None)


def http_cost(noop_runs: list[Summary]) -> float | None:
    """The machine's core-ms per MB over HTTP with a no-op handler: the lowest of the no-op
    runs' (other load only ever adds CPU), None if none measured it."""
    costs = [c for r in noop_runs if r.cpu is not None and (c := r.cpu.machine_ms_per(r.total.nbytes / MB))]
    return min(costs, default=None)


def target_of(name: str) -> tuple[float, str]:
    return TARGETS[name.split("[", 1)[0]]


@dataclass(frozen=True)
class SuiteSpec:
    quick: bool = False
    kinds: tuple[str, ...] = ("random", "text")
    big_size: int = 64 * MiB
    big_concurrency: int = 4
    big_count: int = 24  # per PUT run (full mode); a GET run reads 4x as many objects
    big_duration: float = 3.0  # per PUT/GET run (quick mode)
    big_rounds: int = 3  # alternating no-op / Strata rounds of big PUT and GET, per data kind
    get_objects: int = 16
    ceiling_total: int = 1 * GiB
    small_size: int = 4096
    small_concurrency: int = 32
    small_duration: float = 4.0
    small_rounds: int = 3
    small_objects: int = 256
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    processes: int = 0
    endpoint: str = ""  # empty: start an embedded server
    access_key: str = ""
    secret_key: str = ""
    data_dir: str = ""  # for dedup against an external server
    progress: bool = True

    @classmethod
    def quick_spec(cls, **kw: Any) -> SuiteSpec:
        return cls(
            quick=True,
            kinds=("random",),
            big_size=16 * MiB,
            big_duration=2.5,
            big_rounds=1,
            get_objects=4,
            ceiling_total=256 * MiB,
            small_duration=1.25,
            small_rounds=2,
            small_objects=128,
            corpus=CorpusSpec(versions=5, size=16 * MiB, kind="text", edits=1),
            **kw,
        )


@dataclass
class SuiteResult:
    ratios: dict[str, float] = field(default_factory=dict)
    info: dict[str, float] = field(default_factory=dict)  # ratios without a target
    http_floor: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> op -> best no-op MB/s
    big_rounds: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)  # MB/s per round
    runs: list[Summary] = field(default_factory=list)
    ceilings: dict[str, dict[str, Any]] = field(default_factory=dict)
    small: dict[str, Any] = field(default_factory=dict)
    dedup: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ratios": {k: round(v, 4) for k, v in self.ratios.items()},
            "targets": {k: target_of(k)[0] for k in self.ratios},
            "info_ratios": {k: round(v, 4) for k, v in self.info.items()},
            "runs": [s.to_json() for s in self.runs],
            "ceilings": self.ceilings,
            "http_floor_mb_per_s": self.http_floor,
            "big_mb_per_s_by_round": self.big_rounds,
            "small": self.small,
            "dedup": self.dedup,
            "notes": self.notes,
        }

    def ratio_table(self) -> str:
        rows = []
        for name, value in self.ratios.items():
            target, kind = target_of(name)
            rows.append([name, value, f"{'>=' if kind == 'min' else '<='} {target:.2f}"])
        for name, value in self.info.items():
            rows.append([name, value, "(info)"])
        return table(("ratio", "value", "target"), rows)

    def runs_table(self) -> str:
        return table(RUN_HEADERS, run_rows(self.runs))


class Suite:
    """Runs the parts of the suite against one server; each part records its ratios."""

    def __init__(self, spec: SuiteSpec) -> None:
        self.spec = spec
        self.result = SuiteResult()
        self._tmp: str | None = None
        self.server: StrataServer | None = None
        self.endpoint = spec.endpoint
        self.access_key = spec.access_key
        self.secret_key = spec.secret_key
        self.data_dir = spec.data_dir
        self._noop_server: NoopServer | None = None
        self._noop_dir: str | None = None

    @property
    def server_pid(self) -> int | None:
        """The PID of the server the suite started (None when measuring a given endpoint)."""
        return self.server.pid if self.server is not None else None

    def __enter__(self) -> Suite:
        if not self.endpoint:
            self._tmp = tempfile.mkdtemp(prefix="strata-bench-")
            self.server = StrataServer(Path(self._tmp) / "data").start()
            settings = inherited_settings(os.environ)
            if settings:
                self.result.notes.append(f"server settings from the environment: {', '.join(settings)}")
            self.endpoint = self.server.endpoint
            self.access_key, self.secret_key = self.server.access_key, self.server.secret_key
            self.data_dir = str(self.server.data_dir)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._noop_server is not None:
            self._noop_server.stop()
        if self._noop_dir is not None:
            shutil.rmtree(self._noop_dir, ignore_errors=True)
        if self.server is not None:
            self.server.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _target_load(self, **kw: Any) -> LoadSpec:
        """A load against the endpoint under test."""
        return LoadSpec(
            endpoint=self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            processes=self.spec.processes,
            progress=self.spec.progress,
            server_pid=self.server_pid,
            **kw,
        )

    def _note_errors(self, summaries: list[Summary]) -> None:
        for summary in summaries:
            if summary.errors:
                self.result.notes.append(
                    f"{summary.label}: {summary.errors} errors, e.g. {summary.error_samples[:1]}"
                )

    def _noop(self) -> NoopServer:
        """The no-op server of the big-object runs, started once per suite."""
        if self._noop_server is None:
            self._noop_dir = tempfile.mkdtemp(prefix="bench-noop-")
            self._noop_server = NoopServer(Path(self._noop_dir) / "noop.log").start()
        return self._noop_server

    def _ceiling(self, kind: str) -> dict[str, Any]:
        s = self.spec
        return run_ceiling(
            CeilingSpec(
                data=kind,
                size=s.big_size,
                total=s.ceiling_total,
                min_seconds=0.75 if s.quick else 2.0,
                progress=s.progress,
            )
        )

    def _big_bounds(self, op: str) -> dict[str, Any]:
        s = self.spec
        if s.quick:
            return {"duration": s.big_duration}
        return {"count": s.big_count if op == "put" else 4 * s.big_count}

    def big(self, kind: str) -> None:
        """Big objects of one data kind: the codec ceiling, ``big_rounds`` rounds of PUT,
        the ceiling again, ``big_rounds`` rounds of GET, and the ceiling a third time.

        A round runs the load against the no-op server (the HTTP floor) and against Strata
        in turn (:mod:`bench.rounds`). Every side keeps its best measurement: other load on
        a shared machine only ever slows one down, and alternating puts each side into the
        machine's slow and quiet spells alike. The PUT rounds all come before the GET
        rounds, so that the GETs read objects written last (a local pack that many newer
        writes pushed out of the write-cache window is read from the disk, which the no-op
        server never does).
        """
        s = self.spec
        noop = self._noop()
        rounds = {op: Rounds() for op in ("put", "get")}
        ceilings = [self._ceiling(kind)]
        for op, pair in rounds.items():
            target = self._target_load(
                op=op,
                label=f"strata {op} {kind}",
                size=s.big_size,
                data=kind,
                concurrency=s.big_concurrency,
                objects=s.get_objects if op == "get" else None,
                **self._big_bounds(op),
            )
            reference = replace(
                target,
                endpoint=noop.endpoint,
                access_key="noop",
                secret_key="noop",
                server_pid=noop.pid,
                label=f"noop {op} {kind}",
            )
            for _ in range(max(1, s.big_rounds)):
                pair.run(reference, target)
            ceilings.append(self._ceiling(kind))
            self._note_errors(pair.reference + pair.target)
            self.result.runs += [pair.best_reference, pair.best_target]
        self._big_ratios(kind, ceilings, rounds)

    def _big_ratios(self, kind: str, ceilings: list[dict[str, Any]], rounds: dict[str, Rounds]) -> None:
        encode = max(c["encode_mb_per_s"] for c in ceilings)
        decode = max(c["decode_mb_per_s"] for c in ceilings)
        costs = {f"{p}_core_ms_per_mb": codec_cost(p, *ceilings) for p in ("encode", "decode")}
        self.result.ceilings[kind] = {
            "encode_mb_per_s": encode,
            "decode_mb_per_s": decode,
            **costs,
            "measurements": ceilings,
        }
        http = {op: pair.best_reference.total.mb_per_s for op, pair in rounds.items()}
        self.result.http_floor[kind] = http
        self.result.big_rounds[kind] = {op: pair.by_round("mb_per_s") for op, pair in rounds.items()}
        put_mb, get_mb = (rounds[op].best_target.total.mb_per_s for op in ("put", "get"))
        self.result.ratios[f"put_vs_encode[{kind}]"] = put_mb / min(encode, http["put"])
        self.result.ratios[f"get_vs_decode[{kind}]"] = get_mb / min(decode, http["get"])
        info = self.result.info
        info[f"put_vs_encode_uncapped[{kind}]"] = put_mb / encode
        info[f"get_vs_decode_uncapped[{kind}]"] = get_mb / decode
        info[f"put_vs_noop[{kind}]"] = put_mb / http["put"]
        info[f"get_vs_noop[{kind}]"] = get_mb / http["get"]
        cores = os.cpu_count() or 1
        for op, name, rate, phase in (
            ("put", "put_vs_encode", encode, "encode"),
            ("get", "get_vs_decode", decode, "decode"),
        ):
            bound = cpu_bound_mb_per_s(
                cores, costs[f"{phase}_core_ms_per_mb"], http_cost(rounds[op].reference)
            )
            if bound is not None:
                info[f"{name}_cpu_bound[{kind}]"] = bound / min(rate, http[op])

    def small(self) -> None:
        s = self.spec
        res = run_small(
            SmallSpec(
                endpoint=self.endpoint,
                access_key=self.access_key,
                secret_key=self.secret_key,
                size=s.small_size,
                concurrency=s.small_concurrency,
                duration=s.small_duration,
                rounds=s.small_rounds,
                objects=s.small_objects,
                processes=s.processes,
                progress=s.progress,
                server_pid=self.server_pid,
            )
        )
        self.result.runs.extend(res.summaries())
        self.result.small = res.to_json()
        self.result.ratios["small_put_vs_noop"] = res.ratio("put")
        self.result.ratios["small_get_vs_noop"] = res.ratio("get")

    def dedup(self) -> None:
        if not self.data_dir:
            self.result.notes.append("dedup skipped: no data dir to measure")
            return
        res = run_dedup(
            DedupSpec(
                self.endpoint,
                self.access_key,
                self.secret_key,
                corpus=self.spec.corpus,
                progress=self.spec.progress,
            ),
            local_meter(self.data_dir),
        )
        self.result.dedup = res
        self.result.ratios["physical_vs_unique"] = res["physical_over_unique"] or 0.0

    def run_all(self) -> SuiteResult:
        for kind in self.spec.kinds:
            self.big(kind)
        self.small()
        self.dedup()
        return self.result

    def rerun(self, ratio_names: list[str]) -> None:
        """Measure again the parts that produce ``ratio_names`` (each part once)."""
        parts: dict[str, None] = {}
        for name in ratio_names:
            base = name.split("[", 1)[0]
            if base in ("put_vs_encode", "get_vs_decode"):
                parts["big:" + name.split("[", 1)[1].rstrip("]")] = None
            elif base.startswith("small_"):
                parts["small"] = None
            else:
                parts["dedup"] = None
        for part in parts:
            if part.startswith("big:"):
                self.big(part[4:])
            elif part == "small":
                self.small()
            else:
                self.dedup()
