"""The performance regression guard, run as CI runs it (not a timed test: it checks ratios).

``python -m bench guard --quick`` starts its own server on a temporary data directory and
fails only when a ratio is worse than half of its target (see bench/guard.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RATIOS = {
    "put_vs_encode[random]",
    "get_vs_decode[random]",
    "small_put_vs_noop",
    "small_get_vs_noop",
    "physical_vs_unique",
}


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
