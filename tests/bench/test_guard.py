"""The performance regression guard, run as CI runs it (not a timed test: it checks ratios).

``python -m bench guard --quick`` starts its own server on a temporary data directory and
fails only when a ratio is worse than half of its target (see bench/guard.py).
``STRATA_SKIP_PERF_GUARD=1`` skips it (an explicit, visible escape hatch, e.g. while a known
regression is being fixed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RATIOS = {
    "put_vs_encode[random]",
    "get_vs_decode[random]",
    "small_put_vs_noop",
    "small_get_vs_noop",
    "physical_vs_unique",
}


@pytest.mark.skipif(os.environ.get("STRATA_SKIP_PERF_GUARD") == "1", reason="STRATA_SKIP_PERF_GUARD=1")
def test_guard_quick(tmp_path: Path) -> None:
    out = tmp_path / "guard.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "guard", "--quick", "--quiet", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report = proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert set(doc["ratios"]) == RATIOS, report
    assert proc.returncode == 0, f"performance guard failed:\n{report}"


def test_verdicts_fail_only_below_half_the_target() -> None:
    from bench.guard import judge

    verdicts = {
        v.name: v
        for v in judge(
            {
                "put_vs_encode[random]": 0.31,  # below target 0.60 but above 0.30: passes
                "get_vs_decode[text]": 0.29,  # below 0.30: fails
                "small_put_vs_noop": 0.125,  # exactly half of 0.25: passes
                "small_get_vs_noop": 0.50,  # meets 0.40
                "physical_vs_unique": 2.3,  # above 2 x 1.10: fails
            }
        )
    }
    assert verdicts["put_vs_encode[random]"].ok and not verdicts["put_vs_encode[random]"].meets_target
    assert not verdicts["get_vs_decode[text]"].ok
    assert verdicts["small_put_vs_noop"].ok
    assert verdicts["small_get_vs_noop"].meets_target
    assert not verdicts["physical_vs_unique"].ok
    assert verdicts["physical_vs_unique"].floor == 2.2


def test_best_of_keeps_the_better_measurement() -> None:
    from bench.guard import best_of

    merged = best_of(
        {"small_put_vs_noop": 0.10, "small_get_vs_noop": 0.27, "physical_vs_unique": 1.3},
        {"small_put_vs_noop": 0.14, "small_get_vs_noop": 0.12, "physical_vs_unique": 1.05},
    )
    assert merged == {"small_put_vs_noop": 0.14, "small_get_vs_noop": 0.27, "physical_vs_unique": 1.05}
