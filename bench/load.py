"""The load generator: several processes, each an asyncio (uvloop) loop of aiohttp requests.

This module owns how load is produced and timed. :func:`run_load` starts ``processes``
worker processes (``forkserver``; default one per core, never more than the concurrency) and
splits the concurrency between them. Each worker builds its payload data once, opens one
aiohttp session, pre-populates its share of the key set when the workload reads or deletes,
then reports ready. When every worker is ready the parent records the common start ``t0``
and releases them together; from then on each worker runs its coroutines until the shared
operation counter reaches ``count`` or ``t0 + duration`` passes, logging every operation
(:class:`bench.stats.OpLog`). Pre-population and clean-up are never timed.

Workloads:

* ``put``: unique objects ``obj-<n>`` (see :mod:`bench.data` for how they are made unique);
* ``get`` / ``head``: random keys of a pre-populated set of ``objects`` objects;
* ``delete``: deletes the pre-populated objects, each once;
* ``list``: ListObjectsV2 pages (up to 1000 keys) over a pre-populated prefix;
* ``mixed``: warp's mix, 45% GET, 30% HEAD, 15% PUT, 10% DELETE, over the pre-populated
  set; each worker owns its share of the keys, so a DELETE never races a GET of the same key.

``data`` is ``random`` or ``text`` (stamped per object, :mod:`bench.data`) or
``versioned``: object ``n`` is version ``n mod versions`` of the versioned corpus
(:mod:`bench.corpus`, text), so after the first round everything dedups.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing as mp
import os
import queue
import random
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import uvloop

from bench.client import WINDOW, S3Client, StreamedObject, new_session
from bench.corpus import CorpusSpec, versions
from bench.cpu import CpuWindow
from bench.data import PayloadSource
from bench.progress import Progress
from bench.signer import SigV4Signer
from bench.stats import OpLog, Summary, summarize
from bench.tuning import keep_freed_memory
from bench.units import GiB, format_size

WORKLOADS = ("put", "get", "head", "mixed", "list", "delete")
DATA_KINDS = ("random", "text", "versioned")
MIXED = (("get", 45), ("head", 30), ("put", 15), ("delete", 10))
DEFAULT_DURATION = 10.0
_MAX_ERRORS_IN_A_ROW = 200
_POLL = 0.1


@dataclass(frozen=True)
class LoadSpec:
    """One load run. ``count`` or ``duration`` bounds it (``duration`` wins if both are set)."""

    endpoint: str
    access_key: str
    secret_key: str
    op: str = "put"
    size: int = 64 * 1024 * 1024
    data: str = "random"
    concurrency: int = 4
    count: int | None = None
    duration: float | None = None
    processes: int = 0  # 0: one per core
    bucket: str = "strata-bench"
    objects: int | None = None  # key set of get/head/mixed/list/delete; None: a default
    versions: int = 8  # data=versioned
    region: str = "us-east-1"
    cleanup: bool = False
    progress: bool = True
    label: str = ""
    prefix: str = ""  # set by resolved(): unique per run, unless given
    prepopulated: bool = False  # the keys of `objects` already exist under `prefix` (get/head/list)
    nonce: int = 0  # set by resolved(): makes object ids unique per run
    server_pid: int | None = None  # a local server: its CPU time is measured during the run

    def resolved(self) -> LoadSpec:
        """Fill in defaults; validate."""
        if self.op not in WORKLOADS:
            raise ValueError(f"op must be one of {WORKLOADS}, got {self.op!r}")
        if self.data not in DATA_KINDS:
            raise ValueError(f"data must be one of {DATA_KINDS}, got {self.data!r}")
        if self.concurrency < 1 or self.size < 1:
            raise ValueError("concurrency and size must be positive")
        if self.data == "versioned" and self.size * self.versions > 2 * GiB:
            raise ValueError("versioned data keeps every version in memory: size x versions must be <= 2 GiB")
        procs = min(self.processes or os.cpu_count() or 1, self.concurrency)
        objects = self.objects
        if objects is None:
            if self.op == "delete":
                objects = self.count or 1000
            elif self.op == "list":
                objects = 1000
            else:
                objects = max(self.concurrency, min(1000, max(1, GiB // self.size)))
        count, duration = self.count, self.duration
        if count is None and duration is None:
            if self.op == "delete":
                count = objects
            else:
                duration = DEFAULT_DURATION
        if self.prepopulated and (self.op not in ("get", "head", "list") or not self.prefix):
            raise ValueError("prepopulated needs the prefix of an earlier run and a read-only op")
        if self.op == "delete" and count is not None and count > objects:
            raise ValueError(f"delete --count {count} exceeds the {objects} pre-populated objects")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return dataclasses.replace(
            self,
            processes=procs,
            objects=objects if self.op != "put" else 0,
            count=count,
            duration=duration,
            prefix=self.prefix or f"bench-{stamp}-{os.urandom(3).hex()}/",
            nonce=self.nonce or random.SystemRandom().getrandbits(62),
        )

    @property
    def needs_population(self) -> bool:
        return self.op != "put" and not self.prepopulated

    def describe(self) -> str:
        bound = f"{self.count} ops" if self.duration is None else f"{self.duration:g}s"
        name = self.label or self.op.upper()
        return f"{name} {format_size(self.size)} {self.data} c={self.concurrency} {bound}"


# -- shared state between the parent and the workers --------------------------------------


@dataclass
class _Shared:
    ready: Any  # Value('i'): workers done populating
    go: Any  # Event: start measuring
    t0: Any  # Value('d'): the common start (time.monotonic(), system-wide on Linux)
    claim: Any  # Value('q'): next operation index
    populated: Any  # Array('q', P): objects populated per worker
    counters: Any  # Array('q', 3P): ops, bytes, errors per worker

    @classmethod
    def create(cls, ctx: Any, procs: int) -> _Shared:
        return cls(
            ctx.Value("i", 0),
            ctx.Event(),
            ctx.Value("d", 0.0),
            ctx.Value("q", 0),
            ctx.Array("q", procs, lock=False),
            ctx.Array("q", 3 * procs, lock=False),
        )

    def next_op(self) -> int:
        with self.claim.get_lock():
            i = self.claim.value
            self.claim.value = i + 1
        return i


# -- worker side ---------------------------------------------------------------------------


class _Bodies:
    """Request bodies of one process (its data is generated once, here)."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.versions: list[bytes] = []
        self.source: PayloadSource | None = None
        if spec.data == "versioned":
            self.versions = list(versions(CorpusSpec(versions=spec.versions, size=spec.size, kind="text")))
        else:
            self.source = PayloadSource(spec.data, spec.size)

    def body(self, index: int) -> bytes | memoryview | StreamedObject:
        if self.versions:
            return memoryview(self.versions[index % len(self.versions)])
        assert self.source is not None
        object_id = self.spec.nonce + index
        if self.source.size <= WINDOW:
            return self.source.object_bytes(object_id)
        return StreamedObject(self.source, object_id)


def _key(spec: LoadSpec, index: int) -> str:
    return f"{spec.prefix}obj-{index:09d}"


class _Worker:
    """The measured loop of one process."""

    def __init__(self, spec: LoadSpec, index: int, concurrency: int, shared: _Shared) -> None:
        self.spec = spec
        self.index = index
        self.concurrency = concurrency
        self.shared = shared
        self.rng = random.Random(os.urandom(16))
        self.bodies = _Bodies(spec)
        self.log = OpLog()
        self.t0 = 0.0
        self.deadline = float("inf")
        self.created: set[str] = set()
        # mixed: the keys this worker owns and may read/delete; in-flight readers per key
        self.pool: list[str] = []
        self.busy: dict[str, int] = {}
        self._errors_in_a_row = 0
        self._ops = self._bytes = 0

    def own_keys(self) -> list[str]:
        n = self.spec.objects or 0
        return [_key(self.spec, i) for i in range(self.index, n, self.spec.processes)]

    async def populate(self, client: S3Client) -> None:
        keys = self.own_keys()
        pending = iter(enumerate(keys))
        done = 0

        async def one() -> None:
            nonlocal done
            for _, key in pending:
                idx = int(key.rsplit("-", 1)[1])
                await client.put(self.spec.bucket, key, self.bodies.body(idx))
                self.created.add(key)
                done += 1
                self.shared.populated[self.index] = done

        await asyncio.gather(*(one() for _ in range(self.concurrency)))
        self.pool = keys

    def _choose(self) -> str:
        if self.spec.op != "mixed":
            return self.spec.op
        r = self.rng.randrange(100)
        for op, weight in MIXED:
            if r < weight:
                return op
            r -= weight
        return "get"

    def _readable_key(self) -> str:
        if self.spec.op == "mixed":
            return self.pool[self.rng.randrange(len(self.pool))]
        return _key(self.spec, self.rng.randrange(self.spec.objects or 1))

    def _take_deletable(self) -> str | None:
        for _ in range(8):
            if len(self.pool) < 2:
                return None
            i = self.rng.randrange(len(self.pool))
            key = self.pool[i]
            if self.busy.get(key):
                continue
            self.pool[i] = self.pool[-1]
            self.pool.pop()
            return key
        return None

    async def _one(self, client: S3Client, op: str, i: int) -> tuple[str, int]:
        spec = self.spec
        if op == "put":
            index = i if spec.op == "put" else (spec.objects or 0) + i
            key = _key(spec, index)
            body = self.bodies.body(index)
            n = await client.put(spec.bucket, key, body)
            self.created.add(key)
            if spec.op == "mixed":
                self.pool.append(key)
            return op, n
        if op == "delete":
            if spec.op == "delete":
                key = _key(spec, i)
            else:
                taken = self._take_deletable()
                if taken is None:  # the pool ran low: read instead
                    return await self._one(client, "get", i)
                key = taken
            n = await client.delete(spec.bucket, key)
            self.created.discard(key)
            return op, n
        if op == "list":
            return op, await client.list_page(spec.bucket, spec.prefix)
        key = self._readable_key()
        self.busy[key] = self.busy.get(key, 0) + 1
        try:
            if op == "head":
                return op, await client.head(spec.bucket, key)
            return op, await client.get(spec.bucket, key, stream=spec.size > WINDOW)
        finally:
            left = self.busy[key] - 1
            if left:
                self.busy[key] = left
            else:
                del self.busy[key]

    async def loop(self, client: S3Client) -> None:
        spec, shared, log = self.spec, self.shared, self.log
        limit = spec.count if spec.duration is None else None
        if spec.op == "delete":
            limit = min(limit if limit is not None else spec.objects or 0, spec.objects or 0)
        slot = 3 * self.index
        clock = time.monotonic
        while True:
            if clock() >= self.deadline:
                break
            i = shared.next_op()
            if limit is not None and i >= limit:
                break
            op = self._choose()
            start = clock()
            try:
                op, n = await self._one(client, op, i)
            except Exception as e:  # counted, reported, not fatal
                log.error(f"{op}: {type(e).__name__}: {e}")
                shared.counters[slot + 2] = log.errors
                self._errors_in_a_row += 1
                if self._errors_in_a_row >= _MAX_ERRORS_IN_A_ROW:
                    raise RuntimeError(f"{self._errors_in_a_row} errors in a row; last: {e}") from e
                continue
            end = clock()
            self._errors_in_a_row = 0
            log.record(op, end - self.t0, end - start, n)
            self._ops += 1
            self._bytes += n
            shared.counters[slot] = self._ops
            shared.counters[slot + 1] = self._bytes

    async def cleanup(self, client: S3Client) -> None:
        keys = iter(sorted(self.created))

        async def one() -> None:
            for key in keys:
                with contextlib.suppress(Exception):
                    await client.delete(self.spec.bucket, key)

        await asyncio.gather(*(one() for _ in range(self.concurrency)))

    async def run(self) -> OpLog:
        spec = self.spec
        signer = SigV4Signer(spec.access_key, spec.secret_key, spec.region)
        async with new_session(self.concurrency, spec.size) as session:
            client = S3Client(session, spec.endpoint, signer)
            try:
                await self._measure(client)
            finally:
                client.close()
        return self.log

    async def _measure(self, client: S3Client) -> None:
        spec, shared = self.spec, self.shared
        if spec.needs_population:
            await self.populate(client)
        elif spec.prepopulated:
            self.pool = self.own_keys()
        with shared.ready.get_lock():
            shared.ready.value += 1
        # Block this loop on purpose (nothing else runs until t0), but not past the parent.
        parent = mp.parent_process()
        while not shared.go.wait(0.5):
            if parent is not None and not parent.is_alive():
                raise SystemExit("the benchmark parent process is gone")
        self.t0 = shared.t0.value
        if spec.duration is not None:
            self.deadline = self.t0 + spec.duration
        await asyncio.gather(*(self.loop(client) for _ in range(self.concurrency)))
        if spec.cleanup:
            await self.cleanup(client)


def _worker_main(spec: LoadSpec, index: int, concurrency: int, shared: _Shared, results: Any) -> None:
    if os.environ.get("BENCH_MALLOC_TUNING", "1") != "0":
        keep_freed_memory()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            log = runner.run(_Worker(spec, index, concurrency, shared).run())
        results.put((index, "ok", log))
    except BaseException:
        results.put((index, "error", traceback.format_exc()))


# -- parent side ---------------------------------------------------------------------------


class LoadError(RuntimeError):
    """A worker process failed (the message carries its traceback)."""


def _mp_context() -> Any:
    """``forkserver`` with this module preloaded: workers start in milliseconds, already
    holding aiohttp and uvloop, and never inherit the parent's threads or event loop."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["bench.load"])
    return ctx


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_sync(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run one coroutine on a fresh uvloop loop (parent-side set-up requests)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_fn())  # type: ignore[arg-type]


def ensure_bucket(spec: LoadSpec) -> None:
    async def go() -> None:
        async with new_session(1, 4096) as session:
            client = S3Client(
                session, spec.endpoint, SigV4Signer(spec.access_key, spec.secret_key, spec.region)
            )
            await client.create_bucket(spec.bucket)

    run_sync(go)


def run_load(spec: LoadSpec) -> Summary:
    """Run one measurement and return its summary (raises :class:`LoadError` if a worker fails)."""
    spec = spec.resolved()
    ensure_bucket(spec)
    procs = spec.processes
    ctx = _mp_context()
    shared = _Shared.create(ctx, procs)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=_worker_main, args=(spec, w, c, shared, results), daemon=True, name=f"bench-worker-{w}"
        )
        for w, c in enumerate(_split(spec.concurrency, procs))
    ]
    progress = Progress(spec.describe(), enabled=spec.progress)
    logs: dict[int, OpLog] = {}
    try:
        for p in workers:
            p.start()
        objects = spec.objects or 0
        while shared.ready.value < procs:
            _check(results, workers, logs)
            if spec.needs_population:
                done = sum(shared.populated[:])
                progress.update(done, objects, ops=done, phase="(populating)")
            time.sleep(_POLL)
        progress.close()
        load_start = os.getloadavg()[0]
        cpu = CpuWindow(spec.server_pid)
        cpu.start()
        shared.t0.value = time.monotonic()
        shared.go.set()
        ops = nbytes = errors = 0
        elapsed = 0.0
        while len(logs) < procs:
            _check(results, workers, logs, timeout=_POLL)
            counters = shared.counters[:]
            ops, nbytes, errors = sum(counters[0::3]), sum(counters[1::3]), sum(counters[2::3])
            elapsed = time.monotonic() - shared.t0.value
            if spec.duration is not None:
                done, total = min(elapsed, spec.duration), spec.duration
            else:
                done, total = ops + errors, (spec.count or 1)
            progress.update(done, total, ops=ops, nbytes=nbytes, errors=errors, elapsed=elapsed)
        cpu_use = cpu.stop()
        progress.update(1, 1, ops=ops, nbytes=nbytes, errors=errors, elapsed=elapsed, force=True)
        progress.close()
    finally:
        for p in workers:
            if p.is_alive() and len(logs) < procs:
                p.terminate()
        for p in workers:
            p.join(timeout=30)
    merged = OpLog()
    for w in sorted(logs):
        merged.extend(logs[w])
    summary = summarize(spec.op, spec.size, spec.concurrency, spec.data, procs, merged)
    summary.endpoint = spec.endpoint
    summary.label = spec.label
    summary.loadavg = (load_start, os.getloadavg()[0])
    summary.prefix = spec.prefix
    summary.cpu = cpu_use
    return summary


def _check(results: Any, workers: list[Any], logs: dict[int, OpLog], timeout: float = 0.0) -> None:
    """Collect finished workers' logs; raise if one failed or died without reporting."""
    while True:
        try:
            index, status, payload = results.get(timeout=timeout) if timeout else results.get_nowait()
        except queue.Empty:
            break
        if status != "ok":
            raise LoadError(f"worker {index} failed:\n{payload}")
        logs[index] = payload
        timeout = 0.0
    for w, p in enumerate(workers):
        if w not in logs and p.exitcode is not None and results.empty():
            time.sleep(0.2)  # its result may still be in flight through the queue
            if results.empty():
                raise LoadError(f"worker {w} exited with code {p.exitcode} without a result")
