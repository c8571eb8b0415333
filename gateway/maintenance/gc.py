"""Garbage collection: mark-and-sweep of the chunk index with a grace period, repacking of
sparse packs, and deletion of pack blobs nothing points at. docs/operations.md ("Garbage
collection") describes the design for operators; the invariants are:

* **Mark** streams every manifest (parts of unfinished multipart uploads first, then every
  object version: CompleteMultipartUpload moves references from parts to versions, so this
  order never misses a reference that moves during the scan) into a scratch set on disk.
* **Condemn, then sweep.** An index row no manifest references is first *condemned*
  (``condemned_at``). It is deleted only by a later pass, at least ``grace`` seconds later,
  if that pass's fresh mark still finds it unreferenced and it is still condemned, and only
  if it was condemned *before that mark started*. Every commit that makes a manifest visible
  revives the condemned chunks it names, or fails with a retryable ``SlowDown`` if one was
  swept (``MetadataStore.put_object``); dedup lookups treat condemned chunks as misses. So a
  reference created after the mark began revived the chunk (the sweep, which only deletes
  rows still condemned, skips it) or failed cleanly, and a reference created before it is
  seen by the mark. An acknowledged object never points at swept data.
* **Packs.** A pack with no chunk row is *retired*; its blob is deleted only after another
  grace period (readers that resolved a location just before still find the bytes), with a
  tombstone row so a late commit naming the pack fails instead of pointing at nothing.
  Packs whose live share is below ``gc.repack_threshold`` are rewritten (:mod:`.repack`).
  Blobs with no pack row (a crashed upload) older than the grace are tombstoned and deleted.

Every step is one short metadata transaction that re-checks its condition, so the collector
can be interrupted (Ctrl-C, SIGKILL) anywhere and simply run again, next to a live gateway.
With ``grace = 0`` the condemn pass and the sweep pass run back to back in one call.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from crypto import KEKProvider
from gateway.backends.base import BlobBackend, pack_blob_name
from gateway.config import Config
from gateway.maintenance.fsck import pack_id_of
from gateway.maintenance.lease import LeaseBusy, exclusive
from gateway.maintenance.repack import PackRewriter, RewriteReport
from gateway.meta.store import MaintenanceStore

T = TypeVar("T")
log = logging.getLogger("strata.gc")

MANIFEST_PAGE = 256  # versions or parts per metadata page
CHUNK_PAGE = 2048  # chunk index rows per page
PACK_PAGE = 256  # packs per page
BLOB_BATCH = 256  # listed blobs checked against the pack rows at once
TOMBSTONE_SECONDS = 7 * 86400  # how long a deleted pack's id keeps refusing late commits


class Observer(Protocol):
    """What a job reports while it runs (the CLI draws progress bars from it)."""

    async def phase(self, name: str, total: int | None, unit: str) -> None: ...  # a phase begins
    def advance(self, n: int, detail: str) -> None: ...
    def note(self, text: str) -> None: ...  # a line worth keeping (a damaged record, ...)


class NullObserver:
    async def phase(self, name: str, total: int | None, unit: str) -> None:
        pass

    def advance(self, n: int, detail: str) -> None:
        pass

    def note(self, text: str) -> None:
        log.warning("%s", text)


@dataclass
class GcReport:
    manifests: int = 0  # manifests marked (summed over passes)
    condemned: int = 0
    revived: int = 0  # condemned chunks found referenced again
    swept_chunks: int = 0
    swept_record_bytes: int = 0
    packs_retired: int = 0
    packs_deleted: int = 0  # retired packs whose blob was deleted
    orphans_deleted: int = 0  # blobs without a pack row
    deleted_bytes: int = 0  # blob bytes deleted (packs and orphans)
    repack: RewriteReport = field(default_factory=RewriteReport)

    @property
    def reclaimed(self) -> int:
        """Backend bytes freed: deleted blobs minus the packs that repacking wrote."""
        return self.deleted_bytes - self.repack.bytes_written

    def summary(self) -> str:
        return (
            f"reclaimed {self.reclaimed:,} bytes: "
            f"{self.swept_chunks:,} chunks swept, "
            f"{self.packs_deleted + self.orphans_deleted:,} packs deleted "
            f"({self.orphans_deleted:,} orphaned), "
            f"{self.repack.sources:,} repacked into "
            f"{self.repack.packs_written:,}; {self.condemned:,} chunks condemned, {self.revived:,} revived"
        )


class LiveSet:
    """The chunk ids a mark found referenced, in a scratch SQLite file (memory stays bounded
    however many chunks the store holds). All access goes through one thread."""

    def __init__(self, path: Path) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gc-live")
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=OFF")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.execute("CREATE TABLE live (id BLOB PRIMARY KEY) WITHOUT ROWID")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def add(self, ids: Iterable[bytes]) -> None:
        rows = [(i,) for i in ids]

        def insert() -> None:
            self._conn.execute("BEGIN")
            self._conn.executemany("INSERT OR IGNORE INTO live VALUES (?)", rows)
            self._conn.execute("COMMIT")

        if rows:
            await self._run(insert)

    async def present(self, ids: list[bytes]) -> set[bytes]:
        """Those of ``ids`` that are in the set."""

        def query() -> set[bytes]:
            found: set[bytes] = set()
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                sql = f"SELECT id FROM live WHERE id IN ({','.join('?' * len(part))})"
                found.update(r[0] for r in self._conn.execute(sql, part))
            return found

        return await self._run(query) if ids else set()

    async def clear(self) -> None:
        await self._run(lambda: self._conn.execute("DELETE FROM live"))

    async def close(self) -> None:
        await self._run(self._conn.close)
        self._pool.shutdown(wait=True)


class Collector:
    """One garbage collection run over a gateway's stores (see the module docstring)."""

    def __init__(
        self,
        meta: MaintenanceStore,
        backend: BlobBackend,
        kek: KEKProvider,
        pool: Executor,
        config: Config,
        *,
        grace: float | None = None,
        observer: Observer | None = None,
        report: GcReport | None = None,
    ) -> None:
        self.meta = meta
        self.backend = backend
        self.kek = kek
        self.pool = pool
        self.config = config
        self.grace = config.gc.grace_seconds if grace is None else grace
        if self.grace < 0:
            raise ValueError(f"the grace period must be >= 0 seconds, got {self.grace}")
        self.observer: Observer = observer or NullObserver()
        self.report = GcReport() if report is None else report
        self._totals: dict[str, int] = {}

    async def run(self) -> GcReport:
        stats = await self.meta.storage_stats()  # only for the progress totals
        self._totals = {
            "mark": stats.versions + stats.delete_markers + stats.parts,
            "sweep": stats.chunks,
            "packs": stats.packs,
        }
        with tempfile.TemporaryDirectory(prefix="strata-gc-") as scratch:
            live = LiveSet(Path(scratch) / "live.sqlite")
            try:
                mark_start, first_condemned = await self.chunk_pass(live)
                if first_condemned is not None and first_condemned <= time.time() - self.grace:
                    await live.clear()  # the grace is already over: sweep them now (grace 0)
                    mark_start, _ = await self.chunk_pass(live)
            finally:
                await live.close()
        await self.pack_pass(mark_start)
        await self.delete_orphans()
        cutoff = time.time() - self.grace
        await delete_retired_packs(self.meta, self.backend, cutoff, self.report, self.observer)
        await self.meta.prune_tombstones(time.time() - max(TOMBSTONE_SECONDS, self.grace))
        return self.report

    # -- mark ----------------------------------------------------------------------------
    async def mark(self, live: LiveSet) -> None:
        """Every chunk id referenced by a multipart part, then by an object version."""
        await self.observer.phase("mark", self._totals.get("mark"), "manifests")
        await self.meta.settle_commits()  # commits whose claim ran before now are visible
        after_part: tuple[str, int] | None = None
        while page := await self.meta.scan_parts(after_part, MANIFEST_PAGE):
            after_part = (page[-1][0].upload_id, page[-1][1].part_number)
            await live.add(cid for _, part in page for cid in part.manifest.indexed_ids)
            self._marked(len(page))
        after_version: tuple[str, str, str] | None = None
        while versions := await self.meta.scan_versions(after_version, MANIFEST_PAGE):
            last = versions[-1]
            after_version = (last.bucket, last.key, last.version_id)
            await live.add(cid for v in versions for cid in v.manifest.indexed_ids)
            self._marked(len(versions))

    def _marked(self, n: int) -> None:
        self.report.manifests += n
        self.observer.advance(n, "")

    # -- condemn and sweep ---------------------------------------------------------------
    async def chunk_pass(self, live: LiveSet) -> tuple[float, float | None]:
        """Mark, then walk the chunk index once: sweep rows condemned before this mark (and
        at least ``grace`` ago) that are still unreferenced, revive referenced ones, condemn
        unreferenced ones older than the mark. Returns (mark start, first condemnation)."""
        mark_start = time.time()
        await self.mark(live)
        cutoff = min(mark_start, time.time() - self.grace)
        await self.observer.phase("sweep", self._totals.get("sweep"), "chunks")
        first_condemned: float | None = None
        after: bytes | None = None
        r = self.report
        while page := await self.meta.scan_chunks(after, CHUNK_PAGE):
            after = page[-1].chunk_id
            referenced = await live.present([c.chunk_id for c in page])
            dead = [c for c in page if c.chunk_id not in referenced]
            revive = [c.chunk_id for c in page if c.chunk_id in referenced and c.condemned_at is not None]
            sweep = [c.chunk_id for c in dead if c.condemned_at is not None and c.condemned_at < cutoff]
            condemn = [c.chunk_id for c in dead if c.condemned_at is None and c.created < mark_start]
            if revive:
                r.revived += await self.meta.revive_chunks(revive)
            if sweep:
                rows, nbytes = await self.meta.sweep_chunks(sweep, cutoff)
                r.swept_chunks += rows
                r.swept_record_bytes += nbytes
            if condemn:
                at = time.time()
                r.condemned += await self.meta.condemn_chunks(condemn, at)
                first_condemned = at if first_condemned is None else first_condemned
            self.observer.advance(len(page), f"{r.swept_chunks:,} swept, {r.condemned:,} condemned")
        return mark_start, first_condemned

    # -- packs ---------------------------------------------------------------------------
    async def pack_pass(self, mark_start: float) -> None:
        """Retire packs no chunk row points into; repack those below the live threshold.
        Packs newer than the mark are left alone (their uploads may still be committing)."""
        await self.observer.phase("packs", self._totals.get("packs"), "packs")
        threshold = self.config.gc.repack_threshold
        rewriter = PackRewriter(
            self.meta, self.backend, self.kek, self.pool, self.config.storage, self.report.repack
        )
        after: str | None = None
        try:
            while page := await self.meta.scan_pack_usage(after, PACK_PAGE):
                after = page[-1].pack.pack_id
                settled = [u for u in page if u.retired_at is None and u.created < mark_start]
                empty = [u.pack.pack_id for u in settled if u.live_chunks == 0]
                if empty:
                    self.report.packs_retired += len(await self.meta.retire_packs(empty, time.time()))
                for usage in settled:
                    if usage.live_chunks and usage.live_bytes < threshold * usage.pack.size:
                        await rewriter.rewrite(usage.pack)
                self.observer.advance(len(page), f"{self.report.repack.sources:,} repacked")
            await rewriter.finish()
        except BaseException:
            await asyncio.shield(rewriter.abort())
            raise
        for damaged in self.report.repack.damaged:
            self.observer.note(f"damaged record left in place: {damaged}")

    async def delete_orphans(self) -> None:
        """Delete pack blobs that no pack row names and that are older than the grace period
        (a crashed or failed upload's packs), tombstoning their ids first."""
        await self.observer.phase("orphans", None, "blobs")
        older_than = time.time() - self.grace
        batch: dict[str, int] = {}
        async for info in self.backend.list_info("packs/"):
            pack_id = pack_id_of(info.name)
            if pack_id is not None and info.modified < older_than:
                batch[pack_id] = info.size
            if len(batch) >= BLOB_BATCH:
                await self._delete_orphans(batch)
            self.observer.advance(1, f"{self.report.orphans_deleted:,} orphans deleted")
        await self._delete_orphans(batch)

    async def _delete_orphans(self, candidates: dict[str, int]) -> None:
        if not candidates:
            return
        for pack_id in await self.meta.tombstone_orphans(list(candidates), time.time()):
            await self.backend.delete(pack_blob_name(pack_id))
            self.report.orphans_deleted += 1
            self.report.deleted_bytes += candidates[pack_id]
        candidates.clear()


async def delete_retired_packs(
    meta: MaintenanceStore, backend: BlobBackend, retired_before: float, report: GcReport, observer: Observer
) -> None:
    """Delete the blobs of packs retired before ``retired_before`` (rows dropped and
    tombstoned first, in one transaction; a crash before the blob delete leaves an orphan
    that the next run removes)."""
    await observer.phase("delete", None, "packs")
    while packs := await meta.delete_retired_packs(retired_before, PACK_PAGE):
        for pack in packs:
            await backend.delete(pack_blob_name(pack.pack_id))
            report.packs_deleted += 1
            report.deleted_bytes += pack.size
        observer.advance(len(packs), "")


async def run_periodically(
    meta: MaintenanceStore, backend: BlobBackend, kek: KEKProvider, pool: Executor, config: Config
) -> None:
    """``strata serve`` with ``gc.interval_seconds > 0``: collect every interval, forever."""
    while True:
        await asyncio.sleep(config.gc.interval_seconds)
        try:
            async with exclusive(meta, "gc (scheduled)"):
                report = await Collector(meta, backend, kek, pool, config).run()
            log.info("gc: %s", report.summary())
        except LeaseBusy:
            log.info("gc: another process's maintenance job is running; skipped until the next interval")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("gc run failed; retrying at the next interval")
