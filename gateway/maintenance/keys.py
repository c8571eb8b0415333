"""Key jobs: KEK rotation (re-wrap every wrapped key, no data rewritten) and data
re-encryption (every pack rewritten under fresh DEKs), both resumable after a crash, plus
the live gateway's side of rotation (:func:`follow_keyring`). docs/operations.md ("Key
rotation") describes them for operators.

**Rotate.** Adds a KEK version (the provider's ``add_version``) and records the job
(``keys-rotate``: the target version) in the metadata store. Then every wrapped key still on
an older version of this KEK (``packs.wrapped_dek``, ``users.dedup_key``,
``access_keys.secret``) is unwrapped and wrapped again under the current version, one page
per transaction, each row replaced only if it still holds the key that was read. So is the
DEK that every *inline* manifest (a tiny object sealed into its manifest, gateway/inline.py)
carries: many manifests share one wrapped DEK, so each distinct one is re-wrapped once per
run and every manifest carrying it is rewritten with the new wrap (compare-and-set on the
manifest bytes; the sealed record is unchanged). Re-running
after a crash finds the job and resumes with the same target instead of adding another
version. Gateways keep reading throughout: old versions stay in the keyring, and a gateway
re-reads the keyring when it meets a version it does not hold. A running gateway also
re-reads it every :data:`KEYRING_REFRESH_SECONDS` (:func:`follow_keyring`) so its *new* wraps
use the new version; rotation therefore re-scans until a pass that starts at least
:data:`SETTLE_SECONDS` after the version was added finds nothing left. Pack headers in the
backend keep the wrap they were written with (they are immutable); the keyring keeps every
version, so they stay readable.

**Re-encrypt.** Records the job (``keys-reencrypt``: its start time) and first re-seals
every inline manifest's record under fresh DEKs (one DEK per :data:`REENCRYPT_DEK_USES`
records, wrapped once; the record header, the AAD, is kept and the payload gets a new nonce,
as in repacking), replacing each manifest by compare-and-set, one page at a time; after each
page the job records the last version done (``inline_after``), so a crash resumes after it.
Then it rewrites every pack created before the start through
:class:`~gateway.maintenance.repack.PackRewriter` (fresh DEK per new pack, rows repointed, old
packs retired); what is left after a crash is exactly the live packs older than the recorded
start. Retired packs' blobs (holding data under the old DEKs) are deleted once the grace
period has passed, by this job or by a later ``strata gc``.

A serving gateway seals new tiny objects under its own inline DEK until that DEK is renewed
(hourly, and at once when the KEK version changes): against a leaked DEK, run ``keys rotate``
(or restart the gateways) before ``keys reencrypt``.

Admin commands use the metadata store without the serving gateways' version cache
(gateway/cache.py), so a gateway may answer from a cached copy of a manifest that a job
replaced until the cache entry expires. That copy still reads: every KEK version stays in the
keyring, and the old DEK still opens the old record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from crypto import CryptoError, KEKProvider, Sealer, WrappedKey
from crypto.kek import rewrap
from dedup import CorruptPackError
from dedup.manifest import InlineRecord, Manifest
from gateway.backends.base import BlobBackend
from gateway.config import Config
from gateway.inline import InlineKeys
from gateway.maintenance.fsck import DekCache, pages, version_cursor
from gateway.maintenance.gc import PACK_PAGE, GcReport, NullObserver, Observer, delete_retired_packs
from gateway.maintenance.repack import PackRewriter, RewriteReport, reseal_record
from gateway.meta.models import ObjectVersion
from gateway.meta.store import MaintenanceStore, WrappedKeyKind

log = logging.getLogger("strata.keys")

ROTATE_JOB = "keys-rotate"
REENCRYPT_JOB = "keys-reencrypt"
KEYRING_REFRESH_SECONDS = 2.0  # how often a serving gateway re-reads a changed keyring
SETTLE_SECONDS = 3 * KEYRING_REFRESH_SECONDS  # after this, every gateway wraps with the new version
SETTLED_PASSES = 3  # passes after the settle time before giving up on rows still being written
KEY_PAGE = 256
KINDS: tuple[WrappedKeyKind, ...] = ("pack", "user", "access_key")
REENCRYPT_DEK_USES = 1 << 16  # inline records re-sealed under one fresh DEK


class KeyJobError(Exception):
    """A key job cannot run (printed, exit status 1); nothing was changed."""


@runtime_checkable
class VersionedKEK(Protocol):
    """A provider whose versions Strata adds itself (the local keyring). A KMS rotates its
    key material on its own; only the re-wrap applies there."""

    def add_version(self) -> int: ...


@runtime_checkable
class ReloadableKEK(Protocol):
    """A provider backed by a file that other processes may change."""

    @property
    def path(self) -> Path: ...

    def reload(self) -> None: ...


@dataclass
class RotateReport:
    version: int = 0  # the KEK version every key now uses
    added: bool = False  # this run added it (False: an interrupted rotation was resumed)
    rewrapped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    inline: int = 0  # inline manifests rewritten with their DEK's new wrap
    inline_deks: int = 0  # distinct inline DEKs re-wrapped (each once per run)
    left: int = 0  # rows still on an older version when the job gave up waiting for writers

    def summary(self) -> str:
        how = "added" if self.added else "resumed rotation to"
        counts = ", ".join(f"{n:,} {kind.replace('_', ' ')}s" for kind, n in self.rewrapped.items())
        inline = f", {self.inline:,} inline objects ({self.inline_deks:,} DEKs)"
        tail = f"; {self.left:,} rows still on older versions (run again)" if self.left else ""
        return f"{how} KEK version {self.version}; re-wrapped {counts}{inline}{tail}"


async def rotate(
    meta: MaintenanceStore,
    kek: KEKProvider,
    observer: Observer | None = None,
    report: RotateReport | None = None,
    settle: float = SETTLE_SECONDS,
) -> RotateReport:
    """Add a KEK version (or resume an interrupted rotation) and re-wrap every key on an
    older version of this KEK. ``settle``: how long serving gateways may take to pick up the
    new version (0 when none is running)."""
    observer = observer or NullObserver()
    report = report or RotateReport()
    job = await meta.get_job(ROTATE_JOB)
    if job is None:
        if not isinstance(kek, VersionedKEK):
            raise KeyJobError(
                f"the KEK provider {kek.kek_id!r} manages its own versions; rotate the key in the KMS"
            )
        job = {"version": await asyncio.to_thread(kek.add_version), "added": time.time()}
        await meta.put_job(ROTATE_JOB, job)
        report.added = True
    elif isinstance(kek, ReloadableKEK) and kek.current_version < job["version"]:
        kek.reload()
    report.version = int(job["version"])
    if kek.current_version < report.version:
        raise KeyJobError(f"the keyring has no KEK version {report.version}; is this the right keyring?")
    settle_at = float(job["added"]) + settle
    settled_passes = 0
    inline_wraps: dict[WrappedKey, WrappedKey] = {}  # old wrap -> new, for every pass of this run
    while True:
        started = time.time()
        found = await _rewrap_pass(meta, kek, report, observer, inline_wraps)
        if started >= settle_at:
            settled_passes += 1
            if not found:
                break
            if settled_passes >= SETTLED_PASSES:
                report.left = found
                return report  # the job stays recorded: running it again resumes
        await asyncio.sleep(max(0.0, settle_at - time.time()))
    await meta.put_job(ROTATE_JOB, None)
    return report


async def _rewrap_pass(
    meta: MaintenanceStore,
    kek: KEKProvider,
    report: RotateReport,
    observer: Observer,
    inline_wraps: dict[WrappedKey, WrappedKey],
) -> int:
    """Re-wrap every row below the target version, kind by kind, then the DEKs of inline
    manifests; returns the rows and manifests found."""
    found = 0
    for kind in KINDS:
        await observer.phase(f"rewrap {kind.replace('_', ' ')}s", None, "keys")
        after: str | None = None
        while rows := await meta.scan_wrapped_keys(kind, kek.kek_id, report.version, after, KEY_PAGE):
            after = rows[-1][0]
            found += len(rows)
            changes = [(row_id, old, await rewrap(kek, old)) for row_id, old in rows]
            report.rewrapped[kind] += await meta.rewrap_keys(kind, changes)
            observer.advance(len(rows), "")
    await observer.phase("rewrap inline objects", None, "objects")
    async for page in inline_versions(meta):
        changes = []
        for v, inline in page:
            old = inline.wrapped_dek
            if old.kek_id != kek.kek_id or old.kek_version >= report.version:
                continue
            new = inline_wraps.get(old)
            if new is None:
                new = inline_wraps[old] = await rewrap(kek, old)
                report.inline_deks += 1
            changes.append((v, dataclasses.replace(v.manifest, inline=InlineRecord(new, inline.record))))
        found += len(changes)
        report.inline += await replace_manifests(meta, changes)
        observer.advance(len(page), "")
    return found


async def inline_versions(
    meta: MaintenanceStore, after: tuple[str, str, str] | None = None
) -> AsyncIterator[list[tuple[ObjectVersion, InlineRecord]]]:
    """Pages of (version, its inline record) of every inline manifest, from ``after`` on."""
    async for page in pages(meta.scan_inline_versions, version_cursor, KEY_PAGE, after):
        yield [(v, v.manifest.inline) for v in page if v.manifest.inline is not None]


async def replace_manifests(meta: MaintenanceStore, changes: list[tuple[ObjectVersion, Manifest]]) -> int:
    """Compare-and-set each version's manifest to its new one, concurrently (SQLite commits
    them as one group); returns how many were still as read (the others changed meanwhile:
    an overwrite or a delete wins, and a later pass or run sees what replaced them)."""
    done = await asyncio.gather(
        *(meta.replace_manifest(v.bucket, v.key, v.version_id, v.manifest, new) for v, new in changes)
    )
    return sum(done)


@dataclass
class ReencryptReport:
    started: float = 0.0
    resumed: bool = False
    rewrite: RewriteReport = field(default_factory=RewriteReport)
    cleanup: GcReport = field(default_factory=GcReport)  # retired packs deleted (grace permitting)
    inline: int = 0  # inline manifests re-sealed (this run)
    inline_deks: int = 0  # fresh DEKs they were sealed under
    inline_damaged: list[str] = field(default_factory=list)  # "bucket/key (version): reason" left as is

    @property
    def damaged(self) -> bool:
        """Records that did not open were left in place (the job stays recorded)."""
        return bool(self.rewrite.damaged or self.inline_damaged)

    def summary(self) -> str:
        r = self.rewrite
        how = "resumed: " if self.resumed else ""
        return (
            f"{how}re-sealed {self.inline:,} inline objects under {self.inline_deks:,} fresh DEKs "
            f"({len(self.inline_damaged):,} damaged left in place); "
            f"re-encrypted {r.sources:,} packs into {r.packs_written:,} ({r.bytes_written:,} bytes, "
            f"{r.records:,} records, {len(r.damaged):,} damaged left in place); "
            f"{self.cleanup.packs_deleted:,} old pack blobs deleted ({self.cleanup.deleted_bytes:,} bytes)"
        )


async def reencrypt(
    meta: MaintenanceStore,
    backend: BlobBackend,
    kek: KEKProvider,
    pool: Executor,
    config: Config,
    grace: float | None = None,
    observer: Observer | None = None,
    report: ReencryptReport | None = None,
) -> ReencryptReport:
    """Re-seal every inline manifest, then rewrite every pack created before the job started,
    under fresh DEKs (resuming an interrupted run), then delete old blobs whose grace period
    is over."""
    observer = observer or NullObserver()
    report = report or ReencryptReport()
    grace = config.gc.grace_seconds if grace is None else grace
    job = await meta.get_job(REENCRYPT_JOB)
    report.resumed = job is not None
    if job is None:
        job = {"started": time.time()}
        await meta.put_job(REENCRYPT_JOB, job)
    report.started = float(job["started"])
    stats = await meta.storage_stats()
    await _reencrypt_inline(meta, kek, pool, job, report, observer, stats.inline_versions)
    await observer.phase("reencrypt", stats.packs, "packs")
    rewriter = PackRewriter(meta, backend, kek, pool, config.storage, report.rewrite)
    after: str | None = None
    try:
        while page := await meta.scan_pack_usage(after, PACK_PAGE):
            after = page[-1].pack.pack_id
            old = [u for u in page if u.retired_at is None and u.created < report.started]
            empty = [u.pack.pack_id for u in old if u.live_chunks == 0]
            if empty:
                report.rewrite.retired += len(await meta.retire_packs(empty, time.time()))
            for usage in old:
                if usage.live_chunks:
                    await rewriter.rewrite(usage.pack)
            observer.advance(len(page), f"{report.rewrite.sources:,} rewritten")
        await rewriter.finish()
    except BaseException:
        await asyncio.shield(rewriter.abort())
        raise
    for damaged in report.rewrite.damaged:
        observer.note(f"damaged record left in place: {damaged}")
    if not report.damaged:
        await meta.put_job(REENCRYPT_JOB, None)
    await delete_retired_packs(meta, backend, time.time() - grace, report.cleanup, observer)
    return report


async def _reencrypt_inline(
    meta: MaintenanceStore,
    kek: KEKProvider,
    pool: Executor,
    job: dict[str, Any],
    report: ReencryptReport,
    observer: Observer,
    total: int,
) -> None:
    """Re-seal every inline manifest's record under fresh DEKs, one page at a time, from where
    an interrupted run of the job stopped; ``job`` records each page done (``inline_after``)
    and the end of the phase (``inline_done``). A page redone after a crash is re-sealed
    again under another fresh DEK, which is harmless."""
    if job.get("inline_done"):
        return
    await observer.phase("reencrypt inline objects", total, "objects")
    olds = DekCache(kek)
    fresh = InlineKeys(kek, max_uses=REENCRYPT_DEK_USES)
    last_dek: WrappedKey | None = None
    start = job.get("inline_after")
    loop = asyncio.get_running_loop()
    async for page in inline_versions(meta, None if start is None else (start[0], start[1], start[2])):
        work: list[tuple[ObjectVersion, Sealer, Sealer, WrappedKey]] = []
        for v, inline in page:
            old = await olds.sealer(inline.wrapped_dek)
            if isinstance(old, str):
                report.inline_damaged.append(f"{v.bucket}/{v.key} ({v.version_id}): {old}")
                continue
            new, wrapped = await fresh.current()
            if wrapped != last_dek:
                report.inline_deks += 1
                last_dek = wrapped
            work.append((v, old, new, wrapped))
        items = [(old, new, wrapped, v.manifest) for v, old, new, wrapped in work]
        resealed = await loop.run_in_executor(pool, reseal_inline, items)
        changes: list[tuple[ObjectVersion, Manifest]] = []
        for (v, *_), result in zip(work, resealed, strict=True):
            if isinstance(result, str):
                report.inline_damaged.append(f"{v.bucket}/{v.key} ({v.version_id}): {result}")
            else:
                changes.append((v, result))
        report.inline += await replace_manifests(meta, changes)
        if page:
            job["inline_after"] = list(version_cursor(page[-1][0]))
            await meta.put_job(REENCRYPT_JOB, job)
        observer.advance(len(page), f"{report.inline:,} re-sealed")
    for damaged in report.inline_damaged:
        observer.note(f"damaged inline object left as it is: {damaged}")
    job.pop("inline_after", None)
    job["inline_done"] = True
    await meta.put_job(REENCRYPT_JOB, job)


def reseal_inline(items: list[tuple[Sealer, Sealer, WrappedKey, Manifest]]) -> list[Manifest | str]:
    """For each (old sealer, new sealer, the new DEK's wrap, inline manifest): the manifest
    with its record re-sealed under the new DEK (:func:`reseal_record`: same header, new
    nonce), or why the record does not open."""
    out: list[Manifest | str] = []
    for old, new, wrapped, manifest in items:
        assert manifest.inline is not None
        try:
            sealed = reseal_record(old, new, memoryview(manifest.inline.record), manifest.chunk_ids[0])
        except (CorruptPackError, CryptoError) as e:
            out.append(f"record does not open ({e or type(e).__name__})")
            continue
        out.append(dataclasses.replace(manifest, inline=InlineRecord(wrapped, bytes(sealed.record))))
    return out


async def follow_keyring(kek: KEKProvider, interval: float = KEYRING_REFRESH_SECONDS) -> None:
    """For a serving gateway: re-read a file-backed keyring when it changes, so new wraps use
    a version that ``strata keys rotate`` added in another process. Runs until cancelled."""
    if not isinstance(kek, ReloadableKEK):
        return
    seen: tuple[int, int] | None = None
    while True:
        try:
            st = await asyncio.to_thread(os.stat, kek.path)
            stamp = (st.st_ino, st.st_mtime_ns)
            if seen is not None and stamp != seen:
                await asyncio.to_thread(kek.reload)
                log.info("keyring %s changed: KEK version %d is current", kek.path, kek.current_version)
            seen = stamp
        except asyncio.CancelledError:
            raise
        except Exception:  # a half-replaced file, a permission slip: keep the keys we hold
            log.exception("could not re-read the keyring %s", kek.path)
        await asyncio.sleep(interval)
