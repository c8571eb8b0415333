"""The maintenance lease: exclusive jobs across processes, renewed while they run, and a
job that loses its lease stops (with a clear error, not a bare cancellation)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.maintenance.lease import LeaseBusy, exclusive, new_owner
from gateway.meta.sqlite import SqliteMetadataStore


@pytest.fixture
async def meta(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = SqliteMetadataStore(tmp_path / "meta.sqlite")
    await store.open()
    yield store
    await store.close()


async def test_a_second_job_is_refused_while_the_first_runs(meta: SqliteMetadataStore) -> None:
    async with exclusive(meta, "gc", ttl=0.3):
        with pytest.raises(LeaseBusy):
            async with exclusive(meta, "keys rotate"):
                pass
        await asyncio.sleep(0.5)  # longer than the TTL: renewals keep it held
        with pytest.raises(LeaseBusy):
            async with exclusive(meta, "keys rotate"):
                pass
    async with exclusive(meta, "keys rotate"):  # released on exit
        pass


async def test_a_job_that_loses_its_lease_stops(meta: SqliteMetadataStore) -> None:
    with pytest.raises(LeaseBusy, match="lost"):
        async with exclusive(meta, "gc", ttl=0.3) as owner:
            await meta.release_lease("maintenance", owner)  # as if it had expired...
            assert await meta.claim_lease("maintenance", "someone else", 30)  # ...and been taken
            await asyncio.sleep(5)  # the next renewal notices and stops the job
    assert not await meta.claim_lease("maintenance", "third", 30)  # the other holder keeps it


async def test_a_killed_job_on_this_host_does_not_block_the_rerun(meta: SqliteMetadataStore) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    owner = new_owner("gc").rsplit(":", 2)[0] + f":{pid}:0000"  # this host, an exited pid
    assert await meta.claim_lease("maintenance", owner, 300)
    async with exclusive(meta, "gc"):  # taken over at once, not after 300 s
        assert await meta.lease_holder("maintenance") != owner
    assert await meta.claim_lease("maintenance", "alive-elsewhere@otherhost:1:x", 300)
    with pytest.raises(LeaseBusy):  # a holder on another host is never presumed dead
        async with exclusive(meta, "gc"):
            pass
