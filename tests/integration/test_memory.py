"""Memory stays bounded on 1 GiB transfers (DESIGN: "never hold a whole object").

A fresh server receives a 1 GiB single PUT (streamed from a file), a 1 GiB multipart
upload (boto3 ``upload_fileobj``), and serves a 1 GiB download that the test streams to
nowhere. A thread samples the server's RSS every 50 ms; the peak must stay under 256 MiB.
The test process never holds more than a few MiB of the data either.

Another fresh server takes 16 concurrent large PUTs from the benchmark client (the
``bench/README.md`` memory measurement, with 128 MiB objects instead of 1 GiB: memory per
upload does not grow with the object, and the peak is reached within seconds). Its peak
RSS (VmHWM) must stay under 256 MiB as well. Neither test is timed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import pytest
from boto3.s3.transfer import TransferConfig
from support.metrics import sample, scrape
from support.s3 import GiB, MiB, make_client, multipart_etag_of_file, unique_bucket, write_random_file
from support.server import REPO_ROOT, StrataServer
from support.waiting import eventually

from gateway.memory import status_bytes

RSS_LIMIT = 256 * MiB


class RssSampler:
    """Samples the RSS of a process (and its children) every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.rss())
                self.samples += 1
            except psutil.NoSuchProcess:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def big_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path, str]:
    d = tmp_path_factory.mktemp("gib")
    a, b = d / "a.bin", d / "b.bin"
    return a, write_random_file(a, GiB, seed=None), b, write_random_file(b, GiB, seed=None)


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


@pytest.mark.slow
def test_memory_bounded_on_1gib(strata_factory: Any, big_files: tuple[Path, str, Path, str]) -> None:
    path_a, digest_a, path_b, _digest_b = big_files
    server: StrataServer = strata_factory()
    s3 = make_client(server, read_timeout=600)
    bucket = unique_bucket("mem")
    s3.create_bucket(Bucket=bucket)
    baseline = psutil.Process(server.pid).memory_info().rss
    peaks: dict[str, int] = {}

    # 1. one streamed single PUT of 1 GiB
    with RssSampler(server.pid) as sampler, open(path_a, "rb") as f:
        s3.put_object(Bucket=bucket, Key="single", Body=f)
    peaks["single PUT"] = sampler.peak
    assert s3.head_object(Bucket=bucket, Key="single")["ContentLength"] == GiB

    # 2. multipart via upload_fileobj (8 MiB parts, 10 in flight)
    cfg = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=10)
    with RssSampler(server.pid) as sampler, open(path_b, "rb") as f:
        s3.upload_fileobj(f, bucket, "multi", Config=cfg)
    peaks["multipart"] = sampler.peak
    head = s3.head_object(Bucket=bucket, Key="multi")
    assert head["ContentLength"] == GiB
    assert head["ETag"] == multipart_etag_of_file(path_b, 8 * MiB)

    # 3. a 1 GiB download streamed to nowhere (hashed on the way to prove it is right)
    h = hashlib.sha256()
    got = 0
    with RssSampler(server.pid) as sampler:
        body = s3.get_object(Bucket=bucket, Key="single")["Body"]
        for block in body.iter_chunks(MiB):
            h.update(block)
            got += len(block)
    peaks["download"] = sampler.peak
    assert got == GiB
    assert h.hexdigest() == digest_a

    report = ", ".join(f"{k}: {_mib(v)}" for k, v in peaks.items()) + f" (baseline {_mib(baseline)})"
    print(f"server RSS peaks: {report}")
    over = {k: v for k, v in peaks.items() if v >= RSS_LIMIT}
    assert not over, f"server RSS reached {report}; limit {_mib(RSS_LIMIT)}"


@pytest.mark.slow
def test_memory_bounded_on_16_concurrent_uploads(strata_factory: Any, tmp_path: Path) -> None:
    uploads, size = 16, 128 * MiB
    server: StrataServer = strata_factory()
    baseline = psutil.Process(server.pid).memory_info().rss
    out = tmp_path / "put.json"
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "run",
        "--endpoint",
        server.endpoint,
        "--access-key",
        server.access_key,
        "--secret-key",
        server.secret_key,
        "--op",
        "put",
        "--size",
        str(size),
        "--concurrency",
        str(uploads),
        "--count",
        str(uploads),
        "--data",
        "random",
        "--quiet",
        "--json",
        str(out),
    ]
    with RssSampler(server.pid) as sampler:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["errors"] == 0, result.get("error_samples")
    assert result["count"] == uploads
    assert result["bytes"] == uploads * size
    peak = max(sampler.peak, status_bytes("VmHWM", server.pid) or 0)  # the kernel's peak
    report = f"{uploads} x {_mib(size)} PUTs: peak {_mib(peak)} (baseline {_mib(baseline)})"
    print(f"server RSS {report}")
    assert peak < RSS_LIMIT, f"server RSS reached {report}; limit {_mib(RSS_LIMIT)}"


def _rss_anon(pid: int) -> int:
    anon = status_bytes("RssAnon", pid)
    assert anon is not None, "no RssAnon in /proc"
    return anon


class AnonRssSampler(RssSampler):
    """:class:`RssSampler` of the server's anonymous memory alone (heap, not mapped files)."""

    def rss(self) -> int:
        return _rss_anon(self.proc.pid)


@pytest.mark.slow
async def test_idle_server_gives_freed_memory_back(strata_factory: Any) -> None:
    """Concurrent large GETs leave freed buffers inside the heap; once the server has had no
    request for server.idle_trim_seconds, they go back to the kernel."""
    server: StrataServer = strata_factory(extra_env={"STRATA_SERVER_IDLE_TRIM_SECONDS": "1"})
    s3 = make_client(server)
    bucket = unique_bucket("trim")
    s3.create_bucket(Bucket=bucket)
    data = os.urandom(32 * MiB)
    for i in range(4):
        s3.put_object(Bucket=bucket, Key=f"o{i}", Body=data)
    digest = hashlib.md5(data).hexdigest()
    del data
    before = _rss_anon(server.pid)

    def get(i: int) -> str:
        h = hashlib.md5()
        for block in s3.get_object(Bucket=bucket, Key=f"o{i % 4}")["Body"].iter_chunks(MiB):
            h.update(block)
        return h.hexdigest()

    with AnonRssSampler(server.pid, interval=0.02) as sampler, ThreadPoolExecutor(12) as pool:
        digests = list(pool.map(get, range(24)))
    assert digests == [digest] * 24
    peak = sampler.peak
    print(f"server RssAnon: {_mib(before)} before, {_mib(peak)} at the peak")
    assert peak > before + 96 * MiB, (before / MiB, peak / MiB)  # 12 GETs' runs in flight
    await eventually(lambda: _rss_anon(server.pid) < peak - 64 * MiB, timeout=30)  # no requests meanwhile
    # RSS falls while malloc_trim runs: the trim is counted once it is over
    await eventually(lambda: sample(scrape(server)[1], "memory_trims_total") >= 1)
    _, samples = scrape(server)
    assert sample(samples, "memory_trimmed_bytes_total") >= 48 * MiB
    assert sample(samples, "read_ahead_bytes") == 0  # every GET gave its read-ahead budget back
