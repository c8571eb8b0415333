"""The dedup measurement: upload a versioned corpus, compare the backend's growth with the ideal.

This module owns the ``dedup`` mode. It uploads every version of a
:class:`bench.corpus.CorpusSpec` corpus, one after another, to a fresh bucket and reports

* ``logical_bytes``: the sum of the uploaded object sizes;
* ``physical_bytes``: how much the backend grew across the run, as measured by a
  :class:`PhysicalMeter` (today :class:`LocalDirMeter`: the total size of the files under
  ``<data-dir>/blobs``; a meter for an S3 backend bucket can plug in by implementing
  ``measure()``);
* ``unique_compressed_bytes``: the in-process ideal, computed from the same bytes: every
  version cut with the gateway's chunker parameters (:class:`chunker.ChunkerParams`
  defaults: 256 KiB / 1 MiB / 4 MiB), chunk ids deduplicated, and each unique chunk counted
  at its zstd level-1 size, or raw when compression saves less than 10% (the gateway's rule);
* ``physical_over_unique``: the ratio the target applies to (goal: at most 1.10), and
  ``dedup_ratio`` = logical / physical.

The upload is sequential so that every version can dedup against all earlier ones.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import zstandard

from bench.client import S3Client, new_session
from bench.corpus import CorpusSpec, versions
from bench.load import run_sync
from bench.progress import Progress
from bench.signer import SigV4Signer
from bench.units import format_size, mb_per_s
from chunker import ChunkerParams, chunk_buffer
from dedup import chunk_id


class PhysicalMeter(Protocol):
    """Something that knows how many bytes a backend holds right now."""

    def describe(self) -> str: ...

    def measure(self) -> int: ...


@dataclass(frozen=True)
class LocalDirMeter:
    """Total size of the regular files under a directory (the embedded backend's ``blobs/``)."""

    root: Path

    def describe(self) -> str:
        return f"files under {self.root}"

    def measure(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:  # renamed or removed while we walked
                    continue
        return total


def local_meter(data_dir: str | Path) -> LocalDirMeter:
    """The meter of an embedded-default server whose ``--data-dir`` is ``data_dir``."""
    return LocalDirMeter(Path(data_dir) / "blobs")


# -- the in-process ideal -------------------------------------------------------------------

_tls = threading.local()
_IDEAL_KEY = b"strata-bench-dedup-ideal-key-32b"


def _compressed_len(chunk: memoryview) -> int:
    cctx = getattr(_tls, "cctx", None)
    if cctx is None:
        cctx = _tls.cctx = zstandard.ZstdCompressor(level=1, write_checksum=False)
    n = len(chunk)
    c = len(cctx.compress(chunk))
    return c if c * 10 <= n * 9 else n


@dataclass
class IdealDedup:
    """Accumulates the unique, compressed size of everything fed to it."""

    params: ChunkerParams = field(default_factory=ChunkerParams)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    seen: set[bytes] = field(default_factory=set)
    chunks: int = 0
    unique_raw: int = 0
    unique_compressed: int = 0

    def add(self, data: bytes) -> None:
        pieces = chunk_buffer(data, self.params)
        with ThreadPoolExecutor(self.threads) as pool:
            ids = list(pool.map(lambda c: chunk_id(_IDEAL_KEY, c), pieces))
            fresh = []
            for cid, piece in zip(ids, pieces, strict=True):
                if cid not in self.seen:
                    self.seen.add(cid)
                    fresh.append(piece)
            sizes = list(pool.map(_compressed_len, fresh))
        self.chunks += len(pieces)
        self.unique_raw += sum(len(p) for p in fresh)
        self.unique_compressed += sum(sizes)


# -- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DedupSpec:
    endpoint: str
    access_key: str
    secret_key: str
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    bucket: str = ""  # empty: a fresh bucket per run
    region: str = "us-east-1"
    progress: bool = True


def run_dedup(spec: DedupSpec, meter: PhysicalMeter) -> dict[str, Any]:
    """Upload the corpus and compare; returns the JSON-ready result."""
    bucket = spec.bucket or f"bench-dedup-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
    ideal = IdealDedup()
    progress = Progress(
        f"DEDUP {spec.corpus.versions}x{format_size(spec.corpus.size)} {spec.corpus.kind}",
        enabled=spec.progress,
    )
    logical = 0
    upload_s = 0.0

    async def upload() -> int:
        nonlocal logical, upload_s
        signer = SigV4Signer(spec.access_key, spec.secret_key, spec.region)
        async with new_session(1, spec.corpus.size) as session:
            client = S3Client(session, spec.endpoint, signer)
            await client.create_bucket(bucket)
            before = meter.measure()
            for i, data in enumerate(versions(spec.corpus)):
                progress.update(i, spec.corpus.versions, ops=i, nbytes=logical, elapsed=upload_s, force=True)
                t = time.perf_counter()
                await client.put(bucket, f"corpus/file.v{i:03d}", memoryview(data))
                upload_s += time.perf_counter() - t
                logical += len(data)
                ideal.add(data)
            progress.update(1, 1, ops=spec.corpus.versions, nbytes=logical, elapsed=upload_s, force=True)
            progress.close()
            return meter.measure() - before

    physical = run_sync(upload)
    uc = ideal.unique_compressed
    return {
        "mode": "dedup",
        "bucket": bucket,
        "data": spec.corpus.kind,
        "versions": spec.corpus.versions,
        "size": spec.corpus.size,
        "edits_per_version": 3 * spec.corpus.edits,
        "logical_bytes": logical,
        "physical_bytes": physical,
        "unique_raw_bytes": ideal.unique_raw,
        "unique_compressed_bytes": uc,
        "chunks": ideal.chunks,
        "unique_chunks": len(ideal.seen),
        "physical_over_unique": round(physical / uc, 4) if uc else None,
        "dedup_ratio": round(logical / physical, 3) if physical else None,
        "upload_mb_per_s": round(mb_per_s(logical, upload_s), 3),
        "meter": meter.describe(),
    }
