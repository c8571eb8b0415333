"""CPU accounting of load runs (bench.cpu) and the CPU bound the suite derives from it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cpu import CpuUse, CpuWindow, machine_busy_seconds, process_cpu_seconds
from bench.suite import codec_cost, cpu_bound_mb_per_s

TICK = os.sysconf("SC_CLK_TCK")
LINUX = Path("/proc/self/stat").exists()


@pytest.mark.parametrize(
    ("line", "busy_ticks"),
    [
        # user nice system idle iowait irq softirq steal guest guest_nice
        ("cpu  100 20 30 5000 70 4 6 900 50 5", 100 + 20 + 30 + 4 + 6),  # steal, guest not counted
        ("cpu  1 2 3 4", 1 + 2 + 3),  # an old kernel's four fields
        ("cpu  0 0 0 999 0 0 0 0 0 0", 0),
    ],
)
def test_machine_busy_counts_user_system_irq(tmp_path: Path, line: str, busy_ticks: int) -> None:
    stat = tmp_path / "stat"
    stat.write_text(line + "\ncpu0 1 1 1 1 1 1 1 1 1 1\n")
    assert machine_busy_seconds(str(stat)) == pytest.approx(busy_ticks / TICK)


@pytest.mark.parametrize("text", ["", "intr 1 2 3\n", "cpu0 1 2 3 4\n"])
def test_machine_busy_is_none_without_an_aggregate_line(tmp_path: Path, text: str) -> None:
    stat = tmp_path / "stat"
    stat.write_text(text)
    assert machine_busy_seconds(str(stat)) is None
    assert machine_busy_seconds(str(tmp_path / "missing")) is None


def test_process_cpu_of_a_missing_process_is_none() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert process_cpu_seconds(proc.pid) is None


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_process_cpu_reads_a_name_with_spaces_and_parentheses(tmp_path: Path) -> None:
    """The command name may hold ") (": fields are counted after its last parenthesis."""
    exe = tmp_path / "a) (b c"
    exe.symlink_to(sys.executable)
    burn = (
        "import hashlib, sys, time\nd = b'x' * (1 << 20)\nt = time.process_time()\n"
        "while time.process_time() - t < 0.4: hashlib.sha256(d).digest()\n"
        "print(time.process_time(), flush=True)\nsys.stdin.read()"
    )
    proc = subprocess.Popen([str(exe), "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        own = float(proc.stdout.readline())  # the child's own count, then it idles
        seen = process_cpu_seconds(proc.pid)
    finally:
        proc.communicate("")
    assert seen is not None and seen == pytest.approx(own, abs=0.05)
    assert proc.returncode == 0


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_window_sees_the_server_work_and_the_machine_at_least_as_much() -> None:
    window = CpuWindow(os.getpid())
    window.start()
    data = os.urandom(1 << 20)
    start = time.process_time()
    while time.process_time() - start < 0.5:
        hashlib.sha256(data).digest()
    use = window.stop()
    assert use is not None and use.server is not None
    assert use.server >= 0.4  # about 0.5 s, counted in clock ticks
    assert use.machine >= use.server - 2 / TICK  # the machine includes this process
    assert 0.0 < use.server_cores <= os.cpu_count()  # type: ignore[operator]


def test_window_without_a_server_reports_the_machine_only() -> None:
    window = CpuWindow()
    assert window.stop() is None  # never started
    window.start()
    use = window.stop()
    if LINUX:
        assert use is not None and use.server is None and use.server_cores is None
        assert "server_cores" not in use.to_json(mb=10.0, ops=1)


def test_use_per_unit_and_json() -> None:
    use = CpuUse(seconds=2.0, machine=3.0, server=1.5)
    assert use.machine_cores == 1.5 and use.server_cores == 0.75
    assert use.server_ms_per(1000.0) == pytest.approx(1.5)  # 1.5 s over 1000 MB
    assert use.server_ms_per(0) is None and use.machine_ms_per(0) is None
    assert use.to_json(mb=3000.0, ops=30) == {
        "machine_cores": 1.5,
        "machine_core_ms_per_mb": 1.0,
        "server_cores": 0.75,
        "server_core_ms_per_mb": 0.5,
        "server_core_ms_per_op": 50.0,
    }
    assert CpuUse(0.0, 1.0, 1.0).machine_cores == 0.0 and CpuUse(0.0, 1.0, 1.0).server_cores is None


@pytest.mark.parametrize(
    ("cores", "costs", "expected"),
    [
        (2, (0.5, 0.5), 2000.0),  # 1 core-ms per MB on 2 cores: 2,000 MB/s
        (2, (0.43, 0.42), 2000.0 / 0.85),
        (1, (4.0,), 250.0),
        (2, (0.5, None), None),  # a cost that was not measured: no bound
        (2, (0.5, 0.0), None),
        (2, (), None),
    ],
)
def test_cpu_bound(cores: int, costs: tuple[float | None, ...], expected: float | None) -> None:
    got = cpu_bound_mb_per_s(cores, *costs)
    assert got == (None if expected is None else pytest.approx(expected))


def test_codec_cost_is_the_cheapest_measurement_that_has_one() -> None:
    before = {"encode_core_ms_per_mb": 3.9, "decode_core_ms_per_mb": None}
    after = {"encode_core_ms_per_mb": 3.7, "decode_core_ms_per_mb": 0.6}
    assert codec_cost("encode", before, after) == 3.7
    assert codec_cost("decode", before, after) == 0.6  # a missing figure is skipped
    assert codec_cost("decode", before, {}) is None
