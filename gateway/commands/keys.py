"""``strata keys rotate``: add a KEK version and re-wrap every wrapped key, the DEKs inside
inline manifests included (no data is rewritten); ``strata keys reencrypt``: re-seal every
inline object and rewrite every pack under fresh DEKs (after a suspected DEK leak).
gateway/maintenance/keys.py has the design.

Both are safe next to a live gateway, show progress on stderr and print a summary on stdout.
Both record their progress durably: after Ctrl-C or a crash, running the same command again
resumes the interrupted job (``rotate`` then adds no second version). Exit status: 0 done,
1 not finished (see the message; run again), 2 the stores could not be used, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any, cast

from gateway.backends.base import BackendUnavailable
from gateway.commands.fsck import missing_store
from gateway.commands.gc import ProgressObserver, check_grace
from gateway.config import Config
from gateway.maintenance.keys import KeyJobError, ReencryptReport, reencrypt, rotate
from gateway.meta.store import MaintenanceStore
from gateway.runtime import admin_stores


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    keys = sub.add_parser("keys", help="rotate the master key (KEK) or re-encrypt the data")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    rot = keys_sub.add_parser(
        "rotate",
        help="add a KEK version and re-wrap every DEK and secret (no data rewritten)",
        description=(
            "Add a version to the local keyring and re-wrap every pack DEK, user dedup key, "
            "access key secret and inline object DEK (kept in the object's manifest) still "
            "wrapped by an older version. No data is rewritten; old "
            "versions stay in the keyring, so everything keeps reading, also in a running "
            "gateway. Run it again after an interruption to finish the same rotation."
        ),
    )
    common(rot)
    rot.set_defaults(run=run_rotate)
    enc = keys_sub.add_parser(
        "reencrypt",
        help="rewrite every inline object and pack under fresh DEKs (for a suspected DEK leak)",
        description=(
            "Re-seal every tiny object kept inline in its manifest under fresh DEKs, then "
            "copy every live record into new packs sealed under fresh DEKs, repoint the chunk "
            "index and retire the old packs; their blobs are deleted once the grace period "
            "(gc.grace_seconds, or --grace) has passed, here or by a later 'strata gc'. Run it "
            "again after an interruption to finish the same job."
        ),
    )
    common(enc)
    enc.add_argument(
        "--grace", type=float, metavar="SECONDS", help="override gc.grace_seconds for deleting the old packs"
    )
    enc.set_defaults(run=run_reencrypt)


def _usable(config: Config, command: str, grace: float | None = None) -> bool:
    problem = missing_store(config) or check_grace(grace)
    if problem is not None:
        print(f"strata keys {command}: {problem}", file=sys.stderr)
    return problem is None


def run_rotate(args: argparse.Namespace, config: Config) -> int:
    if not _usable(config, "rotate"):
        return 2
    try:
        return asyncio.run(_rotate(config))
    except KeyboardInterrupt:
        print("strata keys rotate: interrupted; run it again to finish this rotation", file=sys.stderr)
        raise


async def _rotate(config: Config) -> int:
    observer = ProgressObserver("keys rotate")
    try:
        async with admin_stores(config, job="keys rotate") as s:
            done = await rotate(cast(MaintenanceStore, s.meta), s.kek, observer)
    except KeyJobError as e:
        observer.close()
        print(f"strata keys rotate: {e}", file=sys.stderr)
        return 1
    finally:
        observer.close()
    print(f"strata keys rotate: {done.summary()}")
    return 1 if done.left else 0


def run_reencrypt(args: argparse.Namespace, config: Config) -> int:
    if not _usable(config, "reencrypt", args.grace):
        return 2
    report = ReencryptReport()
    try:
        return asyncio.run(_reencrypt(config, args.grace, report))
    except KeyboardInterrupt:
        print(
            f"strata keys reencrypt: interrupted; so far {report.summary()}; run it again to finish",
            file=sys.stderr,
        )
        raise


async def _reencrypt(config: Config, grace: float | None, report: ReencryptReport) -> int:
    observer = ProgressObserver("keys reencrypt")
    try:
        async with admin_stores(config, job="keys reencrypt") as s:
            await reencrypt(
                cast(MaintenanceStore, s.meta), s.backend, s.kek, s.pool, config, grace, observer, report
            )
    except BackendUnavailable as e:
        observer.close()
        print(f"strata keys reencrypt: the backend is unavailable ({e}); run it again", file=sys.stderr)
        return 2
    finally:
        observer.close()
    print(f"strata keys reencrypt: {report.summary()}")
    return 1 if report.damaged else 0
