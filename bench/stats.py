"""Measurements of a load run: per-operation samples in, a summary with percentiles out.

This module owns the numbers. Each worker process fills an :class:`OpLog` (op code,
completion time, latency, payload bytes per operation, in compact arrays that pickle as
raw bytes); :func:`summarize` merges the logs of all processes into a :class:`Summary`
whose :meth:`Summary.to_json` has the documented keys (``mb_per_s``, ``ops_per_s``,
``p50_ms``, ``p90_ms``, ``p99_ms``, ``op``, ``size``, ``concurrency``, ``count``, ``errors``,
``data``...). Throughput is payload bytes of successful operations over the wall time from
the common start to the last completion, in MB/s with MB = 10^6 bytes.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any

from bench.cpu import CpuUse
from bench.units import MB, mb_per_s

OPS = ("put", "get", "head", "delete", "list")
OP_CODE = {name: i for i, name in enumerate(OPS)}


@dataclass
class OpLog:
    """Samples of one worker process; times are seconds relative to the common start."""

    codes: array = field(default_factory=lambda: array("B"))
    ends: array = field(default_factory=lambda: array("d"))
    latencies: array = field(default_factory=lambda: array("d"))
    nbytes: array = field(default_factory=lambda: array("q"))
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def record(self, op: str, end: float, latency: float, nbytes: int) -> None:
        self.codes.append(OP_CODE[op])
        self.ends.append(end)
        self.latencies.append(latency)
        self.nbytes.append(nbytes)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(message[:500])

    def extend(self, other: OpLog) -> None:
        self.codes.extend(other.codes)
        self.ends.extend(other.ends)
        self.latencies.extend(other.latencies)
        self.nbytes.extend(other.nbytes)
        self.errors += other.errors
        self.error_samples.extend(other.error_samples[: max(0, 5 - len(self.error_samples))])


def percentile(sorted_values: list[float] | array, q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of an already sorted sequence; NaN if empty."""
    n = len(sorted_values)
    if not n:
        return math.nan
    rank = max(1, math.ceil(q / 100 * n))
    return float(sorted_values[min(rank, n) - 1])


@dataclass
class OpStats:
    """Throughput and latency of one kind of operation (or all of them)."""

    count: int
    nbytes: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def mb_per_s(self) -> float:
        return mb_per_s(self.nbytes, self.seconds)

    @property
    def ops_per_s(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def of(cls, latencies: list[float], nbytes: int, seconds: float) -> OpStats:
        lat = sorted(latencies)
        mean = sum(lat) / len(lat) * 1000 if lat else math.nan
        return cls(
            len(lat),
            nbytes,
            seconds,
            percentile(lat, 50) * 1000,
            percentile(lat, 90) * 1000,
            percentile(lat, 99) * 1000,
            mean,
        )


@dataclass
class Summary:
    """The result of one load run."""

    op: str
    size: int
    concurrency: int
    data: str
    processes: int
    seconds: float
    total: OpStats
    by_op: dict[str, OpStats]
    errors: int
    error_samples: list[str]
    log: OpLog
    endpoint: str = ""
    label: str = ""
    loadavg: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at start and end
    prefix: str = ""  # key prefix of the run (its objects are obj-<n> under it)
    cpu: CpuUse | None = None  # CPU time of the machine (and the server) while it ran

    def to_json(self) -> dict[str, Any]:
        t = self.total
        out: dict[str, Any] = {
            "op": self.op,
            "size": self.size,
            "concurrency": self.concurrency,
            "count": t.count,
            "errors": self.errors,
            "data": self.data,
            "mb_per_s": round(t.mb_per_s, 3),
            "ops_per_s": round(t.ops_per_s, 3),
            "p50_ms": _r(t.p50_ms),
            "p90_ms": _r(t.p90_ms),
            "p99_ms": _r(t.p99_ms),
            "mean_ms": _r(t.mean_ms),
            "seconds": round(self.seconds, 3),
            "bytes": t.nbytes,
            "processes": self.processes,
            "mb": "10^6 bytes",
        }
        out["loadavg"] = [round(x, 2) for x in self.loadavg]
        if self.endpoint:
            out["endpoint"] = self.endpoint
        if self.label:
            out["label"] = self.label
        if len(self.by_op) > 1:
            out["by_op"] = {
                name: {
                    "count": s.count,
                    "mb_per_s": round(s.mb_per_s, 3),
                    "ops_per_s": round(s.ops_per_s, 3),
                    "p50_ms": _r(s.p50_ms),
                    "p90_ms": _r(s.p90_ms),
                    "p99_ms": _r(s.p99_ms),
                }
                for name, s in self.by_op.items()
            }
        if self.error_samples:
            out["error_samples"] = self.error_samples
        if self.cpu is not None:
            out["cpu"] = self.cpu.to_json(t.nbytes / MB, t.count)
        return out


def _r(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 3)


def summarize(
    op: str, size: int, concurrency: int, data: str, processes: int, log: OpLog, seconds: float | None = None
) -> Summary:
    """Merge-ready summary of ``log``; ``seconds`` defaults to the last completion time."""
    elapsed = seconds if seconds is not None else (max(log.ends) if len(log.ends) else 0.0)
    total = OpStats.of(list(log.latencies), sum(log.nbytes), elapsed)
    codes = set(log.codes)
    by_op: dict[str, OpStats] = {}
    if len(codes) == 1:
        by_op[OPS[codes.pop()]] = total
    else:
        by_code: dict[int, list[int]] = {}
        for i, code in enumerate(log.codes):
            by_code.setdefault(code, []).append(i)
        for code, idx in sorted(by_code.items()):
            lat = [log.latencies[i] for i in idx]
            by_op[OPS[code]] = OpStats.of(lat, sum(log.nbytes[i] for i in idx), elapsed)
    return Summary(
        op, size, concurrency, data, processes, elapsed, total, by_op, log.errors, log.error_samples, log
    )
