"""Exclusive maintenance jobs across processes: gc, key rotation, re-encryption and index
rebuilds must not run twice at once on one set of stores (two gc runs can race each other's
marks and sweeps; a rebuild racing a sweep can index deleted packs). They share one lease in
the metadata store, renewed while the job runs; a holder that dies loses it after its TTL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Protocol

log = logging.getLogger("strata.maintenance")

MAINTENANCE = "maintenance"  # the one lease the exclusive jobs share
TTL_SECONDS = 60.0


class LeaseStore(Protocol):
    async def claim_lease(self, name: str, owner: str, ttl_seconds: float) -> bool: ...
    async def release_lease(self, name: str, owner: str) -> None: ...
    async def lease_holder(self, name: str) -> str | None: ...


class LeaseBusy(RuntimeError):
    """Another process holds the lease: its job is running (or died less than a TTL ago)."""


def new_owner(job: str) -> str:
    return f"{job}@{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def dead_local_holder(owner: str) -> bool:
    """Whether ``owner`` (a :func:`new_owner` string) was a process on this host that has
    exited: a job killed with SIGKILL leaves its lease behind until the TTL runs out, and a
    re-run on the same host need not wait for that."""
    _, _, where = owner.rpartition("@")
    host, _, rest = where.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, under another user
        return False
    return False


async def claim(meta: LeaseStore, name: str, owner: str, ttl: float) -> bool:
    """Claim lease ``name``, taking it over from a dead process of this host."""
    if await meta.claim_lease(name, owner, ttl):
        return True
    holder = await meta.lease_holder(name)
    if holder is None or not dead_local_holder(holder):
        return await meta.claim_lease(name, owner, ttl) if holder is None else False
    log.warning("taking over the %r lease of %s, which has exited", name, holder)
    await meta.release_lease(name, holder)
    return await meta.claim_lease(name, owner, ttl)


@asynccontextmanager
async def exclusive(
    meta: LeaseStore, job: str, name: str = MAINTENANCE, ttl: float = TTL_SECONDS
) -> AsyncIterator[str]:
    """Hold lease ``name`` for the duration of the block, renewing it every ``ttl / 3``.

    Raises :class:`LeaseBusy` when another process holds it. If a renewal finds the lease
    taken over (this process stalled past the TTL), the block is cancelled: the jobs are
    built to stop anywhere and resume.
    """
    owner = new_owner(job)
    if not await claim(meta, name, owner, ttl):
        raise LeaseBusy(f"another maintenance job holds the {name!r} lease; try again later")
    job_task = asyncio.current_task()
    lost = False

    async def renew() -> None:
        nonlocal lost
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                held = await meta.claim_lease(name, owner, ttl)
            except Exception:  # the store is briefly unreachable: try again at the next tick
                log.warning("%s: could not renew the %r lease", job, name, exc_info=True)
                continue
            if not held:
                log.error("%s: lost the %r lease to another process; stopping", job, name)
                lost = True
                if job_task is not None:
                    job_task.cancel()
                return

    renewer = asyncio.ensure_future(renew())
    try:
        yield owner
    except asyncio.CancelledError:
        if lost:
            raise LeaseBusy(f"{job} lost the {name!r} lease to another process and stopped") from None
        raise
    finally:
        renewer.cancel()
        with suppress(asyncio.CancelledError):
            await renewer
        await meta.release_lease(name, owner)
