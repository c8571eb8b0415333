"""Key jobs: KEK rotation (re-wrap every wrapped key, no data rewritten) and data
re-encryption (every pack rewritten under fresh DEKs), both resumable after a crash, plus
the live gateway's side of rotation (:func:`follow_keyring`). docs/operations.md ("Key
rotation") describes them for operators.

**Rotate.** Adds a KEK version (the provider's ``add_version``) and records the job
(``keys-rotate``: the target version) in the metadata store. Then every wrapped key still on
an older version of this KEK (``packs.wrapped_dek``, ``users.dedup_key``,
``access_keys.secret``) is unwrapped and wrapped again under the current version, one page
per transaction, each row replaced only if it still holds the key that was read. Re-running
after a crash finds the job and resumes with the same target instead of adding another
version. Gateways keep reading throughout: old versions stay in the keyring, and a gateway
re-reads the keyring when it meets a version it does not hold. A running gateway also
re-reads it every :data:`KEYRING_REFRESH_SECONDS` (:func:`follow_keyring`) so its *new* wraps
use the new version; rotation therefore re-scans until a pass that starts at least
:data:`SETTLE_SECONDS` after the version was added finds nothing left. Pack headers in the
backend keep the wrap they were written with (they are immutable); the keyring keeps every
version, so they stay readable.

**Re-encrypt.** Records the job (``keys-reencrypt``: its start time) and rewrites every pack
created before it through :class:`~gateway.maintenance.repack.PackRewriter` (fresh DEK per
new pack, rows repointed, old packs retired); what is left after a crash is exactly the
live packs older than the recorded start. Retired packs' blobs (holding data under the old
DEKs) are deleted once the grace period has passed, by this job or by a later ``strata gc``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from crypto import KEKProvider
from crypto.kek import rewrap
from gateway.backends.base import BlobBackend
from gateway.config import Config
from gateway.maintenance.gc import PACK_PAGE, GcReport, NullObserver, Observer, delete_retired_packs
from gateway.maintenance.repack import PackRewriter, RewriteReport
from gateway.meta.store import MaintenanceStore, WrappedKeyKind

log = logging.getLogger("strata.keys")

ROTATE_JOB = "keys-rotate"
REENCRYPT_JOB = "keys-reencrypt"
KEYRING_REFRESH_SECONDS = 2.0  # how often a serving gateway re-reads a changed keyring
SETTLE_SECONDS = 3 * KEYRING_REFRESH_SECONDS  # after this, every gateway wraps with the new version
SETTLED_PASSES = 3  # passes after the settle time before giving up on rows still being written
KEY_PAGE = 256
KINDS: tuple[WrappedKeyKind, ...] = ("pack", "user", "access_key")


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
    left: int = 0  # rows still on an older version when the job gave up waiting for writers

    def summary(self) -> str:
        how = "added" if self.added else "resumed rotation to"
        counts = ", ".join(f"{n:,} {kind.replace('_', ' ')}s" for kind, n in self.rewrapped.items())
        tail = f"; {self.left:,} rows still on older versions (run again)" if self.left else ""
        return f"{how} KEK version {self.version}; re-wrapped {counts}{tail}"


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
    while True:
        started = time.time()
        found = await _rewrap_pass(meta, kek, report, observer)
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
    meta: MaintenanceStore, kek: KEKProvider, report: RotateReport, observer: Observer
) -> int:
    """Re-wrap every row below the target version, kind by kind; returns the rows found."""
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
    return found


@dataclass
class ReencryptReport:
    started: float = 0.0
    resumed: bool = False
    rewrite: RewriteReport = field(default_factory=RewriteReport)
    cleanup: GcReport = field(default_factory=GcReport)  # retired packs deleted (grace permitting)

    def summary(self) -> str:
        r = self.rewrite
        how = "resumed: " if self.resumed else ""
        return (
            f"{how}re-encrypted {r.sources:,} packs into {r.packs_written:,} ({r.bytes_written:,} bytes, "
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
    """Rewrite every pack created before the job started under fresh DEKs (resuming an
    interrupted run), then delete old blobs whose grace period is over."""
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
    if not report.rewrite.damaged:
        await meta.put_job(REENCRYPT_JOB, None)
    await delete_retired_packs(meta, backend, time.time() - grace, report.cleanup, observer)
    return report


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
