"""``strata gc``: reclaim the space of chunks no object references any more, repack sparse
packs and delete pack blobs nothing points at (gateway/maintenance/gc.py has the design).

Progress goes to stderr (one line per phase, redrawn in place on a terminal); the summary of
what was reclaimed goes to stdout. Safe next to a live gateway. Ctrl-C stops at a safe point
and prints what was done; running the command again carries on. Exit status: 0 done,
1 done but some records could not be copied (left in place), 2 the stores could not be used,
130 interrupted.

This module also holds what the key commands share with it: :class:`ProgressObserver` (a
job's phases drawn as progress lines).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any, cast

from gateway.backends.base import BackendUnavailable
from gateway.commands.fsck import missing_store
from gateway.commands.progress import Progress
from gateway.config import Config
from gateway.maintenance.gc import Collector, GcReport
from gateway.meta.store import MaintenanceStore
from gateway.runtime import admin_stores


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "gc",
        help="reclaim unreferenced chunks, repack sparse packs, delete unused pack blobs",
        description=(
            "Mark every chunk that an object version or an unfinished multipart part references; "
            "condemn the others, and delete them on a later run once the grace period "
            "(gc.grace_seconds) has passed and they are still unreferenced. Packs whose live share "
            "is below gc.repack_threshold are rewritten; pack blobs nothing points at are deleted "
            "after the grace period. Safe while 'strata serve' runs on the same stores; Ctrl-C "
            "stops at a safe point and the next run carries on."
        ),
    )
    common(p)
    p.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help="override gc.grace_seconds; 0 condemns and sweeps in one run (uploads racing it may "
        "have to be retried, downloads that started before it may fail)",
    )
    p.set_defaults(run=run)


class ProgressObserver:
    """Draws each phase of a job as a :class:`Progress` line labelled ``<job> <phase>``."""

    def __init__(self, job: str) -> None:
        self.job = job
        self._bar: Progress | None = None

    async def phase(self, name: str, total: int | None, unit: str) -> None:
        self.close()
        self._bar = Progress(f"{self.job} {name}", total, unit=unit)

    def advance(self, n: int, detail: str) -> None:
        if self._bar is not None:
            self._bar.update(n, detail=detail or None)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def check_grace(grace: float | None) -> str | None:
    """Why ``--grace`` is unusable, or None."""
    if grace is not None and not grace >= 0:  # also rejects NaN
        return f"--grace must be a number of seconds >= 0, got {grace}"
    return None


def run(args: argparse.Namespace, config: Config) -> int:
    problem = missing_store(config) or check_grace(args.grace)
    if problem is not None:
        print(f"strata gc: {problem}", file=sys.stderr)
        return 2
    report = GcReport()
    try:
        return asyncio.run(_gc(config, args.grace, report))
    except KeyboardInterrupt:
        print(f"strata gc: interrupted at a safe point; so far {report.summary()}", file=sys.stderr)
        raise


async def _gc(config: Config, grace: float | None, report: GcReport) -> int:
    observer = ProgressObserver("gc")
    try:
        async with admin_stores(config, job="gc") as s:
            collector = Collector(
                cast(MaintenanceStore, s.meta),
                s.backend,
                s.kek,
                s.pool,
                config,
                grace=grace,
                observer=observer,
                report=report,
            )
            await collector.run()
    except BackendUnavailable as e:
        observer.close()
        print(f"strata gc: the backend is unavailable ({e}); so far {report.summary()}", file=sys.stderr)
        return 2
    finally:
        observer.close()  # also when interrupted: end the progress line before the message
    print(f"strata gc: {report.summary()}")
    return 1 if report.repack.damaged else 0
