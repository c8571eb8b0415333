"""``strata fsck``: check that every object's chunks exist, decrypt and hash to their id (in
packs, or sealed inline in a tiny object's manifest); ``strata fsck --rebuild-index``:
re-add chunk index rows from the pack trailers.

Broken objects go to stdout, one line each (``bucket/key (versionId): reason``); progress
and the summary go to stderr. Exit status: 0 clean, 1 something is broken, 2 the stores
could not be used. Both jobs are safe next to a live gateway; Ctrl-C prints what was
found so far, and running the command again starts over safely.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.backends.base import BackendUnavailable
from gateway.commands.progress import Progress, human_bytes
from gateway.config import Config
from gateway.identity import Identities
from gateway.maintenance.fsck import Broken, Checker, FsckReport, RebuildReport, VerdictSet, rebuild_index
from gateway.runtime import admin_stores


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "fsck",
        help="check that every object's chunks exist, decrypt and hash to their id",
        description=(
            "Read every chunk that an object version or an unfinished multipart part references "
            "(from its pack, or from the manifest of a tiny object stored inline), check its "
            "AES-GCM tag and re-hash it with its tenant's dedup key. Broken objects are "
            "printed as 'bucket/key (versionId): reason' on stdout; exit status 1 if any. "
            "Read-only and safe while 'strata serve' runs on the same stores."
        ),
    )
    common(p)
    p.add_argument(
        "--rebuild-index",
        action="store_true",
        help="instead of checking, add the chunk index rows recorded in every pack's trailer that "
        "the metadata store lacks (idempotent; do not run it while gc runs)",
    )
    p.set_defaults(run=run)


def missing_store(config: Config) -> str | None:
    """Why the configured stores cannot be the ones a gateway wrote, or None. A read-only
    command must not create an empty store (and then report it clean)."""
    data_dir = config.storage.data_dir
    if not config.meta.dsns and not (data_dir / "meta.sqlite").is_file():
        return f"no Strata metadata in {data_dir} (meta.sqlite is missing); check --data-dir / --config"
    return None


def run(args: argparse.Namespace, config: Config) -> int:
    problem = missing_store(config)
    if problem is not None:
        print(f"strata fsck: {problem}", file=sys.stderr)
        return 2
    if args.rebuild_index:
        rebuild = RebuildReport()
        try:
            return asyncio.run(_rebuild(config, rebuild))
        except KeyboardInterrupt:
            print(f"strata fsck: interrupted after {rebuild.summary()}", file=sys.stderr)
            raise
    report = FsckReport()
    try:
        return asyncio.run(_check(config, report))
    except KeyboardInterrupt:
        print(f"strata fsck: interrupted; so far {report.summary()}", file=sys.stderr)
        raise


def _detail(report: FsckReport) -> str:
    return (
        f"{report.chunks:,} chunks, {report.inline:,} inline, {human_bytes(report.bytes_read)} read, "
        f"{report.broken:,} broken"
    )


async def _check(config: Config, report: FsckReport) -> int:
    try:
        async with admin_stores(config) as s:
            totals = await s.meta.storage_stats()
            progress = Progress("fsck", totals.versions + totals.parts, unit="manifests")
            with tempfile.TemporaryDirectory(prefix="strata-fsck-") as scratch:
                verdicts = VerdictSet(Path(scratch) / "verdicts.sqlite")
                try:
                    checker = Checker(
                        s.meta,
                        s.backend,
                        s.kek,
                        Identities(s.meta, s.kek),
                        s.pool,
                        verdicts,
                        run_bytes=config.storage.read_run,
                        parallel=max(2, config.storage.read_ahead),
                        report=report,
                        on_progress=lambda r: progress.update(done=r.manifests, detail=_detail(r)),
                    )

                    def broken(b: Broken) -> None:
                        progress.write(str(b), file=sys.stdout)

                    await checker.run(broken)
                finally:
                    verdicts.close()
            progress.close()
    except BackendUnavailable as e:
        print(
            f"strata fsck: the backend is unavailable ({e}); nothing was checked to the end", file=sys.stderr
        )
        return 2
    print(f"strata fsck: {report.summary()}", file=sys.stderr)
    return 1 if report.broken else 0


async def _rebuild(config: Config, report: RebuildReport) -> int:
    progress = Progress("fsck --rebuild-index", unit="pack blobs")

    def on_pack(name: str, problem: str | None) -> None:
        if problem is not None:
            progress.write(f"damaged pack {name}: {problem}", file=sys.stdout)
        progress.update(1, detail=f"{len(report.damaged):,} damaged")

    try:
        async with admin_stores(config, job="fsck --rebuild-index") as s:
            await rebuild_index(s.backend, s.meta, on_pack, report)
            progress.close()
    except BackendUnavailable as e:
        print(f"strata fsck: the backend is unavailable ({e}); run again later", file=sys.stderr)
        return 2
    print(f"strata fsck: {report.summary()}", file=sys.stderr)
    return 1 if report.damaged else 0
