"""CPU time spent during a measurement: by the whole machine, and by the server under test.

This module owns one job: turning ``/proc`` counters read at the start and the end of a
measured window into cores used and CPU cost per unit of work. Throughput on a shared,
noisy machine moves from run to run; the CPU a server spends per MB or per request moves
much less, and it says how far a 2-core machine can go at all: a GET that costs the server
0.95 core-ms per MB, while the client's receive costs 0.3, cannot exceed
2 / (0.95 + 0.3) ≈ 1.6 GB/s however it is scheduled.

* machine busy time: ``/proc/stat``'s first line: user, nice, system, irq and softirq;
* a process's time: ``utime + stime`` of ``/proc/PID/stat`` (all its threads).

Where ``/proc`` is missing (not Linux) or the process is gone, readings are ``None`` and
the measurement simply carries no CPU figures.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds(stat: str = "/proc/stat") -> float | None:
    """CPU seconds every core of the machine spent busy since boot (not idle, not iowait)."""
    try:
        with open(stat) as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:8]] + [0] * 7
    # user, nice, system, irq, softirq; not idle, iowait, steal (the host's), nor guest
    # time (already counted in user and nice)
    return (sum(ticks[0:3]) + ticks[5] + ticks[6]) / _TICK


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all threads) since it started."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    rest = text.rpartition(")")[2].split()
    return (int(rest[11]) + int(rest[12])) / _TICK  # fields 14 and 15: utime, stime


def core_ms_per(cpu_seconds: float, units: float) -> float | None:
    """CPU milliseconds per unit of work (MB, operation); None when no work was done."""
    return None if units <= 0 else 1000.0 * cpu_seconds / units


@dataclass(frozen=True)
class CpuUse:
    """CPU used over ``seconds`` of wall time: ``machine`` and ``server`` CPU seconds."""

    seconds: float
    machine: float
    server: float | None  # None: no server process was watched

    @property
    def machine_cores(self) -> float:
        return self.machine / self.seconds if self.seconds > 0 else 0.0

    @property
    def server_cores(self) -> float | None:
        return None if self.server is None or self.seconds <= 0 else self.server / self.seconds

    def server_ms_per(self, units: float) -> float | None:
        """Server CPU milliseconds per unit (MB, operation) when ``units`` were done."""
        return None if self.server is None else core_ms_per(self.server, units)

    def machine_ms_per(self, units: float) -> float | None:
        """Machine CPU milliseconds per unit (client, server and everything else)."""
        return core_ms_per(self.machine, units)

    def to_json(self, mb: float, ops: int) -> dict[str, float]:
        out = {"machine_cores": round(self.machine_cores, 3)}
        per_mb = self.machine_ms_per(mb)
        if per_mb is not None:
            out["machine_core_ms_per_mb"] = round(per_mb, 4)
        if self.server_cores is not None:
            out["server_cores"] = round(self.server_cores, 3)
        for name, units in (("mb", mb), ("op", ops)):
            value = self.server_ms_per(units)
            if value is not None:
                out[f"server_core_ms_per_{name}"] = round(value, 4)
        return out


class CpuWindow:
    """Reads the counters at :meth:`start` and :meth:`stop`; ``stop`` returns the use, or
    None where the machine's counters cannot be read."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self._start: tuple[float, float | None, float | None] | None = None

    def _read(self) -> tuple[float, float | None, float | None]:
        server = process_cpu_seconds(self.server_pid) if self.server_pid else None
        return time.monotonic(), machine_busy_seconds(), server

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> CpuUse | None:
        if self._start is None:
            return None
        (t0, m0, s0), (t1, m1, s1) = self._start, self._read()
        if m0 is None or m1 is None:
            return None
        server = s1 - s0 if s0 is not None and s1 is not None else None
        return CpuUse(t1 - t0, m1 - m0, server)
