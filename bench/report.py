"""Output: terminal tables, JSON files and PNG plots of load runs.

This module owns presentation only. :func:`table` renders rows as an aligned plain-text
table; :func:`run_table` does it for load summaries (MB/s with MB = 10^6 bytes, latency
percentiles in ms); :func:`write_json` writes a result file; :func:`plot_run` draws the
throughput over time (1-second bins, or finer for short runs) and the latency histogram
of one run into one PNG with matplotlib's Agg backend (imported only when asked for).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.stats import OPS, Summary
from bench.units import MB, MiB, format_size


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An aligned plain-text table (numbers right-aligned)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    sep = "  "
    lines = [sep.join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append(sep.join("-" * w for w in widths))
    for row in cells:
        lines.append(
            sep.join(
                c.rjust(w) if c[:1].isdigit() or c[:1] == "-" else c.ljust(w)
                for c, w in zip(row, widths, strict=True)
            )
        )
    return "\n".join(lines)


RUN_HEADERS = (
    "run",
    "op",
    "size",
    "data",
    "conc",
    "ops",
    "err",
    "MB/s",
    "op/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "cores",
    "srv cores",
    "srv ms/MB",
)


def _cpu_cells(s: Summary) -> list[Any]:
    """Busy cores of the machine and of the server, and server core-ms per MB (MB = 10^6
    bytes; per operation for sizes under 1 MiB, marked "/op"); "-" where not measured."""
    cpu = s.cpu
    if cpu is None:
        return [None, None, None]
    if s.size >= MiB:
        return [cpu.machine_cores, cpu.server_cores, cpu.server_ms_per(s.total.nbytes / MB)]
    per_op = cpu.server_ms_per(s.total.count)
    return [cpu.machine_cores, cpu.server_cores, None if per_op is None else f"{per_op:.3f}/op"]


def run_rows(summaries: Sequence[Summary]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for s in summaries:
        t = s.total
        label = s.label or s.endpoint
        rows.append(
            [
                label,
                s.op,
                format_size(s.size),
                s.data,
                s.concurrency,
                t.count,
                s.errors,
                t.mb_per_s,
                t.ops_per_s,
                t.p50_ms,
                t.p90_ms,
                t.p99_ms,
                *_cpu_cells(s),
            ]
        )
        if len(s.by_op) > 1:
            for name in OPS:
                o = s.by_op.get(name)
                if o is not None:
                    rows.append(
                        [
                            "",
                            f"  {name}",
                            "",
                            "",
                            "",
                            o.count,
                            "",
                            o.mb_per_s,
                            o.ops_per_s,
                            o.p50_ms,
                            o.p90_ms,
                            o.p99_ms,
                            "",
                            "",
                            "",
                        ]
                    )
    return rows


def run_table(summaries: Sequence[Summary]) -> str:
    """The end-of-run table (MB = 10^6 bytes)."""
    prefixes = ", ".join(sorted({s.prefix for s in summaries if s.prefix}))
    return (
        table(RUN_HEADERS, run_rows(summaries))
        + "\n(MB/s: 10^6 bytes per second; latencies in ms; cores: CPU busy on the machine and in"
        + " the server (given --server-pid) during the run; srv ms/MB: server CPU per MB or per op)"
        + (f"\nkey prefix: {prefixes}" if prefixes else "")
    )


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def plot_run(summary: Summary, path: str | Path) -> None:
    """Throughput over time (top) and latency histogram (bottom) of one run, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = summary.log
    seconds = max(summary.seconds, 1e-6)
    width = 1.0 if seconds >= 20 else max(seconds / 20, 0.05)
    nbins = max(1, math.ceil(seconds / width))
    mbytes = [0.0] * nbins
    ops = [0] * nbins
    for end, nb in zip(log.ends, log.nbytes, strict=True):
        b = min(nbins - 1, int(end / width))
        mbytes[b] += nb / MB
        ops[b] += 1
    xs = [(i + 0.5) * width for i in range(nbins)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7))
    name = summary.label or summary.op.upper()
    title = f"{name} {format_size(summary.size)} {summary.data} c={summary.concurrency}"
    if any(mbytes):
        top.plot(xs, [m / width for m in mbytes], drawstyle="steps-mid", label="MB/s")
        top.set_ylabel("MB/s (10^6 B/s)")
    else:
        top.plot(xs, [o / width for o in ops], drawstyle="steps-mid", label="op/s")
        top.set_ylabel("op/s")
    top.set_xlabel("time since start (s)")
    top.set_title(f"{title}: throughput over time ({width:.2g}s bins)")
    top.grid(alpha=0.3)
    lat_ms = [x * 1000 for x in log.latencies]
    if lat_ms:
        bottom.hist(lat_ms, bins=60, color="tab:orange")
        for q, val in (
            ("p50", summary.total.p50_ms),
            ("p90", summary.total.p90_ms),
            ("p99", summary.total.p99_ms),
        ):
            bottom.axvline(val, linestyle="--", color="k", alpha=0.6)
            bottom.text(val, bottom.get_ylim()[1] * 0.9, f" {q}", fontsize=8)
    bottom.set_xlabel("latency (ms)")
    bottom.set_ylabel("operations")
    bottom.set_title("latency histogram")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rounds_cell(sides: dict[str, list[float]]) -> str:
    """``no-op 3,994.9 / 3,566.3 · strata 1,965.5 / 2,270.3``: each side's rounds in order."""
    names = {"noop": "no-op"}
    return " · ".join(
        f"{names.get(side, side)} {' / '.join(_cell(v) for v in values)}" for side, values in sides.items()
    )


def suite_markdown(doc: dict[str, Any]) -> str:
    """Markdown tables of a suite result (``python -m bench suite --markdown FILE``)."""
    lines = [
        "| measurement | MB/s | op/s | p50 ms | p99 ms | load avg | busy cores | server core-ms/MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in doc["runs"]:
        load = " to ".join(f"{x:.1f}" for x in run.get("loadavg", []))
        p50, p99 = _cell(run["p50_ms"]), _cell(run["p99_ms"])
        cpu = run.get("cpu", {})
        lines.append(
            f"| {run.get('label') or run['op']} {format_size(run['size'])} c={run['concurrency']} "
            f"| {run['mb_per_s']:.1f} | {run['ops_per_s']:.1f} | {p50} | {p99} | {load} "
            f"| {_cell(cpu.get('machine_cores'))} | {_cell(cpu.get('server_core_ms_per_mb'))} |"
        )
    for kind, c in doc.get("ceilings", {}).items():
        seen = c.get("measurements", [])
        detail = " / ".join(
            f"{x.get('encode_mb_per_s', 0):.0f}+{x.get('decode_mb_per_s', 0):.0f}" for x in seen if x
        )
        costs = " / ".join(_cell(c.get(f"{phase}_core_ms_per_mb")) for phase in ("encode", "decode"))
        lines.append(
            f"| ceiling {kind} encode / decode (best of {detail}) "
            f"| {c['encode_mb_per_s']:.1f} / {c['decode_mb_per_s']:.1f} | | | | | | {costs} (codec) |"
        )
    for kind, ops in doc.get("big_mb_per_s_by_round", {}).items():
        for op, sides in ops.items():
            lines.append(f"| {kind} {op} rounds, MB/s: {_rounds_cell(sides)} | | | | | | | |")
    for op, sides in (doc.get("small") or {}).get("ops_per_s_by_round", {}).items():
        lines.append(f"| small {op} rounds, op/s: {_rounds_cell(sides)} | | | | | | | |")
    d = doc.get("dedup") or {}
    if d:
        lines.append(
            f"| dedup {d['versions']} x {format_size(d['size'])} {d['data']}: logical / physical / unique "
            f"compressed bytes | {d['logical_bytes']:,} / {d['physical_bytes']:,} / "
            f"{d['unique_compressed_bytes']:,} | | | | | | |"
        )
    lines += ["", "| ratio | value | target |", "|---|---|---|"]
    for name, value in doc["ratios"].items():
        target = doc["targets"][name]
        sign = "<=" if name.startswith("physical") else ">="
        lines.append(f"| `{name}` | {value:.3f} | {sign} {target:.2f} |")
    for name, value in doc.get("info_ratios", {}).items():
        lines.append(f"| `{name}` | {value:.3f} | (info) |")
    notes = doc.get("notes") or []
    if notes:
        lines += ["", *(f"* {note}" for note in notes)]
    return "\n".join(lines) + "\n"
