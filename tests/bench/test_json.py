"""Result shapes: the summary JSON keys and the CLI's JSON files (against the no-op server)."""

from __future__ import annotations

import json
import subprocess
import sys
from array import array
from pathlib import Path

import pytest

from bench.report import suite_markdown
from bench.server import NoopServer, inherited_settings
from bench.stats import OpLog, summarize
from bench.suite import codec_cost

REQUIRED = {
    "mb_per_s",
    "ops_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "op",
    "size",
    "concurrency",
    "count",
    "errors",
    "data",
}
REPO = Path(__file__).resolve().parents[2]


def test_summary_json_shape_and_math() -> None:
    log = OpLog()
    for i in range(100):  # 100 PUTs of 1 MB over 2 s, latencies 1..100 ms
        log.record("put", (i + 1) * 0.02, (i + 1) / 1000, 1_000_000)
    log.error("put: boom")
    doc = summarize("put", 1_000_000, 4, "random", 2, log).to_json()
    assert set(doc) >= REQUIRED
    assert doc["count"] == 100 and doc["errors"] == 1
    assert doc["mb_per_s"] == pytest.approx(50.0)
    assert doc["ops_per_s"] == pytest.approx(50.0)
    assert (doc["p50_ms"], doc["p90_ms"], doc["p99_ms"]) == (50.0, 90.0, 99.0)
    assert isinstance(log.latencies, array)
    json.dumps(doc)


def test_mixed_summary_has_per_op_breakdown() -> None:
    log = OpLog()
    log.record("get", 0.5, 0.01, 10_000_000)
    log.record("head", 1.0, 0.002, 0)
    doc = summarize("mixed", 10, 2, "random", 1, log).to_json()
    assert set(doc["by_op"]) == {"get", "head"}
    assert doc["mb_per_s"] == pytest.approx(10.0)  # 10 MB over the 1 s to the last completion


@pytest.fixture(scope="module")
def noop(tmp_path_factory: pytest.TempPathFactory):
    with NoopServer(tmp_path_factory.mktemp("noop") / "noop.log") as server:
        yield server


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("op", "extra"),
    [
        ("put", ["--count", "40", "--size", "4KiB"]),
        ("put", ["--count", "3", "--size", "3MiB", "--data", "text"]),
        ("get", ["--count", "20", "--size", "4KiB", "--objects", "8"]),
        ("mixed", ["--duration", "1", "--size", "8KiB", "--objects", "40"]),
        ("list", ["--count", "5", "--size", "1KiB", "--objects", "10"]),
        ("delete", ["--count", "10", "--size", "1KiB"]),
    ],
)
def test_run_writes_json(noop: NoopServer, tmp_path: Path, op: str, extra: list[str]) -> None:
    out = tmp_path / "out.json"
    plot = tmp_path / "out.png"
    proc = _bench(
        "run",
        "--endpoint",
        noop.endpoint,
        "--access-key",
        "k",
        "--secret-key",
        "s",
        "--op",
        op,
        "--concurrency",
        "4",
        "--quiet",
        "--json",
        str(out),
        "--plot",
        str(plot),
        *extra,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert set(doc) >= REQUIRED
    assert doc["op"] == op and doc["errors"] == 0 and doc["concurrency"] == 4
    if "--count" in extra:
        assert doc["count"] == int(extra[extra.index("--count") + 1])
    assert plot.stat().st_size > 1000
    assert "MB/s" in proc.stdout


def test_ceiling_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    proc = _bench(
        "ceiling",
        "--size",
        "4MiB",
        "--total",
        "8MiB",
        "--min-seconds",
        "0.1",
        "--streams",
        "2",
        "--quiet",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["encode_mb_per_s"] > 0 and doc["decode_mb_per_s"] > 0
    assert doc["data"] == "random" and doc["size"] == 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        ({"PATH": "/bin", "HOME": "/root"}, []),
        (
            {"STRATA_STORAGE_DIRECT_WRITES": "true", "STRATA_STORAGE_CHUNK_CACHE": "0"},
            ["STRATA_STORAGE_CHUNK_CACHE=0", "STRATA_STORAGE_DIRECT_WRITES=true"],
        ),
        ({"STRATA_ROOT_ACCESS_KEY": "A", "STRATA_ROOT_SECRET_KEY": "S"}, []),  # the bench sets its own
        (
            {
                "STRATA_META_DSNS": "postgresql://u:pw@h/db",
                "STRATA_REDIS_URL": "redis://:pw@h",
                "STRATA_KMS_KEY": "k",
                "STRATA_KMS": "alias/strata",
            },
            ["STRATA_KMS=(set)", "STRATA_KMS_KEY=(set)", "STRATA_META_DSNS=(set)", "STRATA_REDIS_URL=(set)"],
        ),
    ],
)
def test_settings_a_started_server_inherits_are_reported_without_secrets(
    environ: dict[str, str], expected: list[str]
) -> None:
    assert inherited_settings(environ) == expected


def test_suite_markdown_lists_the_notes() -> None:
    doc = {"runs": [], "ratios": {}, "targets": {}, "notes": ["server settings from the environment: X=1"]}
    assert suite_markdown(doc).endswith("\n* server settings from the environment: X=1\n")
    assert "* " not in suite_markdown({**doc, "notes": []})


def test_run_reports_the_servers_cpu(noop: NoopServer, tmp_path: Path) -> None:
    """With --server-pid, the JSON and the table carry the machine's and the server's CPU:
    per op for small objects, and the server's share of the machine's busy time."""
    out = tmp_path / "out.json"
    common = ["--endpoint", noop.endpoint, "--access-key", "k", "--secret-key", "s", "--quiet"]
    load = ["--op", "put", "--size", "4KiB", "--duration", "1.5", "--concurrency", "8"]
    proc = _bench("run", *common, *load, "--server-pid", str(noop.pid), "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cpu = json.loads(out.read_text())["cpu"]
    assert 0.05 < cpu["server_cores"] <= cpu["machine_cores"] + 0.05
    assert cpu["server_core_ms_per_op"] > 0 and cpu["machine_core_ms_per_mb"] > 0
    assert "/op" in proc.stdout.splitlines()[2]  # the run's row: server CPU per request
    plain = _bench("run", *common, *load, "--json", str(out))  # no server named: machine only
    assert plain.returncode == 0, plain.stdout + plain.stderr
    cpu = json.loads(out.read_text())["cpu"]
    assert "server_cores" not in cpu and cpu["machine_cores"] > 0


def test_suite_markdown_shows_cpu_columns() -> None:
    run = {"label": "strata get random", "op": "get", "size": 64 << 20, "concurrency": 4, "mb_per_s": 1500.0}
    run |= {"ops_per_s": 22.4, "p50_ms": 180.0, "p99_ms": 260.0, "cpu": {"machine_cores": 1.72}}
    run["cpu"]["server_core_ms_per_mb"] = 0.851
    ceiling = {"encode_mb_per_s": 500.0, "decode_mb_per_s": 4000.0}
    before = {**ceiling, "encode_core_ms_per_mb": 3.9, "decode_core_ms_per_mb": 0.5}
    after = {**ceiling, "encode_core_ms_per_mb": 3.7, "decode_core_ms_per_mb": 0.6}
    ceiling |= {f"{p}_core_ms_per_mb": codec_cost(p, before, after) for p in ("encode", "decode")}
    doc = {
        "runs": [run],
        "ratios": {},
        "targets": {},
        "ceilings": {"random": {**ceiling, "measurements": [before, after]}},
    }
    lines = suite_markdown(doc).splitlines()
    assert lines[2].endswith("| 1.72 | 0.851 |")
    assert lines[3].endswith("| 3.70 / 0.500 (codec) |")  # the cheapest of the measurements
    assert "(best of 500+4000 / 500+4000)" in lines[3]


def test_suite_markdown_lists_every_round() -> None:
    doc = {
        "runs": [],
        "ratios": {},
        "targets": {},
        "big_mb_per_s_by_round": {"random": {"get": {"noop": [3994.9, 3566.3], "strata": [1965.5, 2270.3]}}},
        "small": {"ops_per_s_by_round": {"put": {"noop": [6261.1], "strata": [1375.1]}}},
    }
    lines = suite_markdown(doc).splitlines()
    assert "| random get rounds, MB/s: no-op 3,994.9 / 3,566.3 · strata 1,965.5 / 2,270.3 |" in lines[2]
    assert "| small put rounds, op/s: no-op 6,261.1 · strata 1,375.1 |" in lines[3]
