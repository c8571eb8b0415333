"""The codec ceiling: how fast this machine can run Strata's pipeline with no HTTP at all.

This module owns the in-process upper bound that PUT and GET throughput are compared with.
It pushes the same objects the load generator sends (:class:`bench.data.PayloadSource`)
through the gateway's codec, using every core:

* **encode** = :class:`chunker.StreamChunker` fed 1 MiB pieces (as the gateway's ingest
  batches) + per chunk, in a ``ThreadPoolExecutor`` of ``os.cpu_count()`` threads, one task
  doing :func:`dedup.chunk_id` (keyed BLAKE3) and :func:`dedup.seal_chunk` (zstd level 1 when
  it pays + AES-256-GCM), + MD5 of the whole object in its own thread, as the gateway
  computes the ETag. ``streams`` objects are encoded at once (default 4, the concurrency of
  the standard PUT run), each by its own driver thread;
* **decode** = :func:`dedup.open_record` of every sealed record in the same pool (GCM open +
  zstd decompress, no re-hash, as GET does).

No dedup lookup, no pack framing, no I/O: this is the CPU cost of the codec alone.
Throughput is plaintext bytes per second, MB = 10^6 bytes; ``encode_core_ms_per_mb`` and
``decode_core_ms_per_mb`` are the CPU time of all the process's threads per MB, which other
load on the machine moves far less than throughput.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from bench.cpu import core_ms_per
from bench.data import PayloadSource
from bench.progress import Progress
from bench.units import MB, GiB, MiB, format_size, mb_per_s
from chunker import ChunkerParams, StreamChunker
from crypto import Sealer, new_dek
from dedup import SealedChunk, chunk_id, new_dedup_key, open_record, seal_chunk

FEED = 1 * MiB  # piece size fed to the chunker, like the gateway's ingest batches


@dataclass(frozen=True)
class CeilingSpec:
    data: str = "random"
    size: int = 64 * MiB
    total: int = 1 * GiB  # at least this many plaintext bytes are encoded, and decoded
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    streams: int = 4
    zstd_level: int = 1
    params: ChunkerParams = field(default_factory=ChunkerParams)
    min_seconds: float = 2.0  # each of encode and decode runs at least this long
    progress: bool = True


def _seal(key: bytes, sealer: Sealer, plain: memoryview, level: int) -> SealedChunk:
    return seal_chunk(sealer, chunk_id(key, plain), plain, level)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class _Codec:
    def __init__(self, spec: CeilingSpec) -> None:
        self.spec = spec
        self.key = new_dedup_key()
        self.sealer = Sealer(new_dek())
        self.pool = ThreadPoolExecutor(spec.threads, thread_name_prefix="codec")
        self.md5 = ThreadPoolExecutor(spec.streams, thread_name_prefix="md5")

    def encode(self, data: bytes) -> list[SealedChunk]:
        """One object: chunk it here, seal its chunks in the pool, MD5 it in its own thread."""
        md5 = self.md5.submit(_md5, data)
        chunker = StreamChunker(self.spec.params)
        view = memoryview(data)
        futures: list[Future[SealedChunk]] = []
        level = self.spec.zstd_level
        for off in range(0, len(view), FEED):
            for c in chunker.feed(view[off : off + FEED]):
                futures.append(self.pool.submit(_seal, self.key, self.sealer, c, level))
        for c in chunker.finish():
            futures.append(self.pool.submit(_seal, self.key, self.sealer, c, level))
        sealed = [f.result() for f in futures]
        md5.result()
        return sealed

    def encode_len(self, data: bytes) -> int:
        self.encode(data)
        return len(data)

    def decode(self, chunk: SealedChunk) -> int:
        return len(open_record(self.sealer, chunk.record, chunk.chunk_id))

    def close(self) -> None:
        self.pool.shutdown()
        self.md5.shutdown()


def _keep_busy(
    submit: Callable[[int], Future[int]],
    in_flight: int,
    total: int,
    min_seconds: float,
    progress: Progress,
    phase: str,
) -> tuple[int, float]:
    """Run jobs ``submit(0), submit(1), ...`` (each returns the plaintext bytes it processed),
    ``in_flight`` at a time, until at least ``total`` bytes are done and ``min_seconds`` have
    passed; then let the running ones finish. Returns (bytes, seconds to the last completion)."""
    start = time.perf_counter()
    pending: set[Future[int]] = set()
    done_bytes = jobs = 0
    while True:
        elapsed = time.perf_counter() - start
        if done_bytes < total or elapsed < min_seconds:
            while len(pending) < in_flight:
                pending.add(submit(jobs))
                jobs += 1
        if not pending:
            break
        done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
        for f in done:
            done_bytes += f.result()
        progress.update(
            done_bytes,
            total,
            ops=jobs - len(pending),
            nbytes=done_bytes,
            elapsed=time.perf_counter() - start,
            phase=phase,
        )
    return done_bytes, time.perf_counter() - start


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def run_ceiling(spec: CeilingSpec) -> dict[str, Any]:
    """Measure encode and decode throughput; returns the JSON-ready result."""
    if spec.size * spec.streams > 4 * GiB:
        raise ValueError("ceiling keeps `streams` objects in memory: size x streams must be <= 4 GiB")
    source = PayloadSource(spec.data, spec.size)
    nonce = int.from_bytes(os.urandom(7), "little")
    objects = [source.object_bytes(nonce + i) for i in range(spec.streams)]
    load_start = os.getloadavg()[0]
    codec = _Codec(spec)
    progress = Progress(f"CEILING {format_size(spec.size)} {spec.data}", enabled=spec.progress)
    drivers = ThreadPoolExecutor(spec.streams, thread_name_prefix="stream")
    try:
        # Untimed first pass: warms thread-local zstd contexts and gives decode its records.
        records = [c for sealed in drivers.map(codec.encode, objects) for c in sealed]
        cpu0 = time.process_time()  # this process, every thread
        encoded, encode_s = _keep_busy(
            lambda i: drivers.submit(codec.encode_len, objects[i % len(objects)]),
            spec.streams,
            spec.total,
            spec.min_seconds,
            progress,
            "encode",
        )
        cpu1 = time.process_time()
        decoded, decode_s = _keep_busy(
            lambda i: codec.pool.submit(codec.decode, records[i % len(records)]),
            2 * spec.threads,
            spec.total,
            spec.min_seconds,
            progress,
            "decode",
        )
        cpu2 = time.process_time()
        progress.close()
    finally:
        drivers.shutdown()
        codec.close()
    plain = sum(c.plain_len for c in records)
    stored = sum(len(c.record) for c in records)
    return {
        "mode": "ceiling",
        "data": spec.data,
        "size": spec.size,
        "threads": spec.threads,
        "streams": spec.streams,
        "encode_bytes": encoded,
        "decode_bytes": decoded,
        "encode_mb_per_s": round(mb_per_s(encoded, encode_s), 3),
        "decode_mb_per_s": round(mb_per_s(decoded, decode_s), 3),
        # CPU per MB, from every thread of this process: the codec's cost, whatever the load
        "encode_core_ms_per_mb": _rounded(core_ms_per(cpu1 - cpu0, encoded / MB)),
        "decode_core_ms_per_mb": _rounded(core_ms_per(cpu2 - cpu1, decoded / MB)),
        "encode_seconds": round(encode_s, 3),
        "decode_seconds": round(decode_s, 3),
        "stored_over_plain": round(stored / plain, 4) if plain else None,
        "chunks_per_object": round(len(records) / spec.streams, 2),
        "mb": "10^6 bytes",
        "loadavg": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
