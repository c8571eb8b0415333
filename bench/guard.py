"""The performance regression guard: ratios within one run, checked against half their target.

This module owns the pass/fail rule, not the measurements (those are :mod:`bench.suite`).
``python -m bench guard --quick`` starts an embedded server on a temporary data directory,
runs the quick suite (a few seconds per part), and fails (exit 1) only when a ratio is
worse than **half** of its target: a ``>=`` target fails below ``target / 2``, the dedup
``<=`` target fails above ``2 x target``. A failing ratio is measured once more before the
verdict and the better of the two measurements counts for every ratio of that part, so one
noisy moment on a shared machine does not fail CI. It is not a timed test:
absolute speed never fails it, only the gateway falling far behind what the same machine
does in-process (or over HTTP with a no-op handler) in the same run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from bench.report import table, write_json
from bench.suite import Suite, SuiteResult, SuiteSpec, target_of


@dataclass(frozen=True)
class Verdict:
    name: str
    value: float
    target: float
    kind: str  # "min" or "max"

    @property
    def floor(self) -> float:
        """The failing bound: half the target (or twice it, for a "max" target)."""
        return self.target / 2 if self.kind == "min" else self.target * 2

    @property
    def ok(self) -> bool:
        return self.value >= self.floor if self.kind == "min" else self.value <= self.floor

    @property
    def meets_target(self) -> bool:
        return self.value >= self.target if self.kind == "min" else self.value <= self.target


def judge(ratios: dict[str, float]) -> list[Verdict]:
    out = []
    for name, value in ratios.items():
        target, kind = target_of(name)
        out.append(Verdict(name, value, target, kind))
    return out


def best_of(first: dict[str, float], second: dict[str, float]) -> dict[str, float]:
    """Per ratio, the better of two measurements (re-measuring one ratio re-measures its
    whole part; a ratio that was fine the first time must not fail on a noisier second)."""
    out = {}
    for name in first.keys() | second.keys():
        values = [d[name] for d in (first, second) if name in d]
        out[name] = max(values) if target_of(name)[1] == "min" else min(values)
    return out


def verdict_table(verdicts: list[Verdict]) -> str:
    rows = []
    for v in verdicts:
        sign = ">=" if v.kind == "min" else "<="
        status = "ok" if v.meets_target else ("below target" if v.ok else "FAIL")
        rows.append([v.name, v.value, f"{sign} {v.target:.2f}", f"{sign} {v.floor:.2f}", status])
    return table(("ratio", "value", "target", "fails unless", "status"), rows)


def run_guard(spec: SuiteSpec, retries: int = 2, json_path: str | None = None) -> int:
    """Run the suite, re-measure failures up to ``retries`` times; return the exit code."""
    with Suite(spec) as suite:
        result: SuiteResult = suite.run_all()
        for _ in range(retries):
            failing = [v.name for v in judge(result.ratios) if not v.ok]
            if not failing:
                break
            print(f"guard: re-measuring {', '.join(failing)}", file=sys.stderr)
            previous = dict(result.ratios)
            suite.rerun(failing)
            result.ratios.update(best_of(previous, result.ratios))
    verdicts = judge(result.ratios)
    print(result.runs_table())
    print()
    print(verdict_table(verdicts))
    for note in result.notes:
        print(f"note: {note}")
    if json_path:
        doc: dict[str, Any] = result.to_json()
        doc["guard"] = {v.name: {"value": round(v.value, 4), "floor": v.floor, "ok": v.ok} for v in verdicts}
        write_json(json_path, doc)
    failed = [v for v in verdicts if not v.ok]
    if failed:
        print(f"guard: FAIL ({', '.join(v.name for v in failed)})")
        return 1
    print("guard: ok")
    return 0
