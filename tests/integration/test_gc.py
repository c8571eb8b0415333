"""``strata gc`` as operators run it, next to a live ``strata serve`` on the same data dir:
reclaiming deleted data, the forced race between a held-back dedup hit and a sweep,
uploads racing gc over HTTP, interruption (SIGINT, SIGKILL) and the schedule inside serve."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from botocore.exceptions import ClientError
from support.s3 import make_client
from support.server import REPO_ROOT, StrataServer

from gateway.backends.factory import open_backend
from gateway.config import Config, StorageConfig
from gateway.identity import ROOT_USER, Identities
from gateway.ingest import Ingestor, IngestResult
from gateway.maintenance.gc import Collector, NullObserver
from gateway.meta.models import ObjectVersion
from gateway.meta.store import MaintenanceStore
from gateway.runtime import open_metadata
from gateway.s3.errors import S3Error

MiB = 1024 * 1024


def strata(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


def gc(server: StrataServer, *args: str) -> subprocess.CompletedProcess[str]:
    done = strata("gc", "--data-dir", str(server.data_dir), *args)
    assert done.returncode == 0, done.stderr
    return done


def reclaimed(out: str) -> int:
    match = re.search(r"reclaimed (-?[\d,]+) bytes", out)
    assert match, out
    return int(match.group(1).replace(",", ""))


def rows(data_dir: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "meta.sqlite") as c:
        return c.execute(sql, params).fetchall()


def pack_files(data_dir: Path) -> set[str]:
    return {p.name.removesuffix(".pack") for p in (data_dir / "blobs").rglob("*.pack")}


def assert_index_consistent(data_dir: Path) -> None:
    """Every pack blob has a row and every row a blob; every chunk row points at a pack row."""
    assert pack_files(data_dir) == {r[0] for r in rows(data_dir, "SELECT pack_id FROM packs")}
    assert rows(data_dir, "SELECT COUNT(*) FROM chunks WHERE pack_id NOT IN (SELECT pack_id FROM packs)") == [
        (0,)
    ]


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def get(s3: Any, bucket: str, key: str, **kw: Any) -> bytes:
    return cast(bytes, s3.get_object(Bucket=bucket, Key=key, **kw)["Body"].read())


@pytest.fixture
def server(strata_factory: Callable[..., StrataServer]) -> StrataServer:
    return strata_factory()


@pytest.fixture
def client(server: StrataServer) -> Any:
    return make_client(server)


# -- reclaiming -----------------------------------------------------------------------------


def test_gc_reclaims_deleted_data_while_shared_chunks_and_versions_survive(
    server: StrataServer, client: Any
) -> None:
    client.create_bucket(Bucket="plain")
    client.create_bucket(Bucket="vers")
    client.put_bucket_versioning(Bucket="vers", VersioningConfiguration={"Status": "Enabled"})
    shared = payload(4 * MiB, 1)
    live: dict[tuple[str, str, str | None], bytes] = {}
    client.put_object(Bucket="plain", Key="a", Body=shared + payload(2 * MiB, 2))  # deleted below
    live[("plain", "b", None)] = shared + payload(2 * MiB, 3)  # shares a's first chunks (dedup)
    client.put_object(Bucket="plain", Key="gone", Body=payload(6 * MiB, 4))
    for i in range(8):
        client.put_object(Bucket="plain", Key=f"small{i}", Body=payload(40_000, 10 + i))
    for i in range(8, 10):
        live[("plain", f"small{i}", None)] = payload(40_000, 10 + i)
    v1 = client.put_object(Bucket="vers", Key="v", Body=shared + payload(3 * MiB, 5))["VersionId"]
    v2_body = shared + payload(1 * MiB, 6)
    v2 = client.put_object(Bucket="vers", Key="v", Body=v2_body)["VersionId"]
    live[("vers", "v", v2)] = v2_body
    live[("plain", "copied", None)] = shared + payload(2 * MiB, 2)
    client.copy_object(Bucket="plain", Key="copied", CopySource={"Bucket": "plain", "Key": "a"})
    for (bucket, key, _), body in live.items():
        if key.startswith(("b", "small")):
            client.put_object(Bucket=bucket, Key=key, Body=body)
    client.delete_object(Bucket="plain", Key="a")  # its chunks live on through "copied" and "b"
    client.delete_object(Bucket="plain", Key="gone")
    for i in range(8):
        client.delete_object(Bucket="plain", Key=f"small{i}")
    client.delete_object(Bucket="vers", Key="v", VersionId=v1)

    before = server.backend_bytes()
    first = gc(server, "--grace", "0")
    freed = reclaimed(first.stdout)
    assert freed >= 9 * MiB  # gone (6 MiB), v1's own 3 MiB, the small objects
    assert before - server.backend_bytes() == freed
    assert "chunks swept" in first.stdout and "gc mark" in first.stderr  # progress went to stderr
    for (bucket, key, version), body in live.items():
        assert get(client, bucket, key, **({"VersionId": version} if version else {})) == body, key
    assert_index_consistent(server.data_dir)
    assert reclaimed(gc(server, "--grace", "0").stdout) == 0  # nothing left to reclaim


def test_default_grace_only_condemns(server: StrataServer, client: Any) -> None:
    client.create_bucket(Bucket="grace")
    client.put_object(Bucket="grace", Key="x", Body=payload(3 * MiB, 7))
    client.delete_object(Bucket="grace", Key="x")
    before = server.backend_bytes()
    out = gc(server).stdout  # gc.grace_seconds = 1 day
    assert reclaimed(out) == 0 and server.backend_bytes() == before
    assert rows(server.data_dir, "SELECT COUNT(*) FROM chunks WHERE condemned_at IS NULL") == [(0,)]
    bad = strata("gc", "--data-dir", str(server.data_dir), "--grace", "-1")
    assert bad.returncode == 2 and "--grace" in bad.stderr


# -- the forced race ------------------------------------------------------------------------


@dataclass
class Stores:
    """The live server's stores opened by the test process, as another gateway would."""

    config: Config
    meta: MaintenanceStore
    ingestor: Ingestor
    key: bytes
    pool: ThreadPoolExecutor

    async def ingest(self, data: bytes) -> IngestResult:
        async def body() -> AsyncIterator[bytes]:
            yield data

        return await self.ingestor.ingest(body(), self.key)

    async def commit(self, bucket: str, key: str, held: IngestResult) -> None:
        version = ObjectVersion(bucket, key, "null", held.size, "0" * 32, time.time(), held.manifest)
        await self.meta.put_object(version, held.staged)


@pytest.fixture
async def stores(server: StrataServer) -> AsyncIterator[Stores]:
    config = Config(storage=StorageConfig(data_dir=server.data_dir))
    kek, meta = await open_metadata(config)
    backend = open_backend(config, serving=False)
    pool = ThreadPoolExecutor(max_workers=2)
    key = await Identities(meta, kek).dedup_key(ROOT_USER)
    yield Stores(
        config, cast(MaintenanceStore, meta), Ingestor(backend, meta, kek, pool, config.storage), key, pool
    )
    pool.shutdown()
    await backend.close()
    await meta.close()


async def test_held_dedup_hit_whose_chunks_gc_swept_fails_cleanly(
    server: StrataServer, client: Any, stores: Stores
) -> None:
    client.create_bucket(Bucket="race")
    data = payload(5 * MiB, 20)
    client.put_object(Bucket="race", Key="a", Body=data)
    held = await stores.ingest(data)  # an upload paused between its dedup lookup and its commit
    assert held.dedup_bytes == len(data) and not held.staged.chunks
    client.delete_object(Bucket="race", Key="a")
    out = await asyncio.to_thread(gc, server, "--grace", "0")
    assert reclaimed(out.stdout) > 4 * MiB
    with pytest.raises(S3Error) as err:
        await stores.commit("race", "b", held)
    assert (err.value.code, err.value.status) == ("SlowDown", 503)
    with pytest.raises(ClientError):
        client.head_object(Bucket="race", Key="b")  # nothing was committed
    client.put_object(Bucket="race", Key="b", Body=data)  # the retry
    assert get(client, "race", "b") == data
    assert_index_consistent(server.data_dir)


async def test_held_dedup_hit_committed_after_condemnation_keeps_its_data(
    server: StrataServer, client: Any, stores: Stores
) -> None:
    client.create_bucket(Bucket="race")
    data = payload(5 * MiB, 21)
    client.put_object(Bucket="race", Key="a", Body=data)
    held = await stores.ingest(data)
    client.delete_object(Bucket="race", Key="a")
    await asyncio.to_thread(gc, server, "--grace", "3600")  # condemns a's chunks
    assert rows(server.data_dir, "SELECT COUNT(*) FROM chunks WHERE condemned_at IS NOT NULL") != [(0,)]
    await stores.commit("race", "b", held)  # acknowledged: revives what it reuses
    out = await asyncio.to_thread(gc, server, "--grace", "0")
    assert "0 chunks swept" in out.stdout
    assert get(client, "race", "b") == data


async def test_commit_between_the_sweeps_mark_and_its_deletes_keeps_its_data(
    server: StrataServer, client: Any, stores: Stores
) -> None:
    client.create_bucket(Bucket="race")
    data = payload(5 * MiB, 22)
    client.put_object(Bucket="race", Key="a", Body=data)
    held = await stores.ingest(data)
    client.delete_object(Bucket="race", Key="a")
    sweeps = 0

    class CommitBeforeSecondSweep(NullObserver):
        async def phase(self, name: str, total: int | None, unit: str) -> None:
            nonlocal sweeps
            sweeps += name == "sweep"
            if name == "sweep" and sweeps == 2:  # pass 1 condemned; pass 2 marked without "b"
                await stores.commit("race", "b", held)

    backend = open_backend(stores.config, serving=False)
    try:
        collector = Collector(
            stores.meta, backend, stores.ingestor.kek, stores.pool, stores.config, grace=0,
            observer=CommitBeforeSecondSweep(),
        )  # fmt: skip
        report = await collector.run()
    finally:
        await backend.close()
    assert sweeps == 2 and report.condemned > 0 and report.swept_chunks == 0
    assert get(client, "race", "b") == data


def test_uploads_racing_gc_never_lose_acknowledged_objects(server: StrataServer, client: Any) -> None:
    """Dedup-heavy PUTs and deletes over HTTP while ``gc --grace 0`` runs again and again: a
    PUT either fails with a retryable 503 or its object reads back byte-exact at the end."""
    client.create_bucket(Bucket="busy")
    bodies = [payload(1 * MiB + 1000 * i, 30 + i) for i in range(4)]  # few bodies: many dedup hits
    acknowledged: dict[str, bytes] = {}
    refused: list[str] = []
    stop = threading.Event()

    def writer(worker: int) -> None:
        n = 0
        while not stop.is_set():
            key = f"w{worker}-{n}"
            body = bodies[(worker + n) % len(bodies)]
            try:
                client.put_object(Bucket="busy", Key=key, Body=body)
                acknowledged[key] = body
            except ClientError as e:
                assert e.response["ResponseMetadata"]["HTTPStatusCode"] in (500, 503), e
                refused.append(key)
            if n % 3 == 2:  # delete an older one: its chunks become garbage unless shared
                old = f"w{worker}-{n - 2}"
                if acknowledged.pop(old, None) is not None:
                    client.delete_object(Bucket="busy", Key=old)
            n += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            gc(server, "--grace", "0")
    finally:
        stop.set()
        for t in threads:
            t.join()
    gc(server, "--grace", "0")
    assert acknowledged
    for key, body in acknowledged.items():
        assert get(client, "busy", key) == body, key
    assert_index_consistent(server.data_dir)


# -- interruption ---------------------------------------------------------------------------


def garbage(client: Any, bucket: str, n: int) -> dict[str, bytes]:
    """``n`` objects of which every other one is deleted; returns the live ones."""
    client.create_bucket(Bucket=bucket)
    live = {}
    for i in range(n):
        body = payload(30_000 + i, 1000 + i)
        client.put_object(Bucket=bucket, Key=f"o{i}", Body=body)
        live[f"o{i}"] = body
    for i in range(0, n, 2):
        client.delete_object(Bucket=bucket, Key=f"o{i}")
        del live[f"o{i}"]
    return live


def interrupt_gc(server: StrataServer, after_line: str, sig: int) -> tuple[int, str]:
    """Start ``gc --grace 0``, send ``sig`` once stderr shows ``after_line``; (rc, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "gc", "--grace", "0", "--data-dir", str(server.data_dir)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith(after_line):
            proc.send_signal(sig)
            break
    _, rest = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + rest


@pytest.mark.parametrize(("after_line", "sig"), [("gc mark", signal.SIGINT), ("gc sweep", signal.SIGKILL)])
def test_gc_interrupted_then_run_again_completes(
    server: StrataServer, client: Any, after_line: str, sig: int
) -> None:
    live = garbage(client, "intr", 120)
    rc, err = interrupt_gc(server, after_line, sig)
    if sig == signal.SIGINT:
        assert rc in (130, 0), err  # 0: it had finished when the signal came
        if rc == 130:
            assert "interrupted at a safe point" in err
    else:
        assert rc in (-signal.SIGKILL, 0), err
    for key, body in live.items():  # consistent at once
        assert get(client, "intr", key) == body
    gc(server, "--grace", "0")
    gc(server, "--grace", "0")
    assert_index_consistent(server.data_dir)
    assert rows(server.data_dir, "SELECT COUNT(*) FROM chunks") == [(len(live),)]
    for key, body in live.items():
        assert get(client, "intr", key) == body


# -- the schedule inside serve ---------------------------------------------------------------


def test_serve_runs_gc_on_its_interval(strata_factory: Callable[..., StrataServer]) -> None:
    server = strata_factory(extra_env={"STRATA_GC_INTERVAL_SECONDS": "0.5", "STRATA_GC_GRACE_SECONDS": "0"})
    client = make_client(server)
    client.create_bucket(Bucket="sched")
    keep = payload(2 * MiB, 40)
    client.put_object(Bucket="sched", Key="keep", Body=keep)
    client.put_object(Bucket="sched", Key="drop", Body=payload(6 * MiB, 41))
    peak = server.backend_bytes()
    client.delete_object(Bucket="sched", Key="drop")
    deadline = time.monotonic() + 60
    while server.backend_bytes() > peak - 5 * MiB:
        assert time.monotonic() < deadline, "the scheduled gc did not reclaim the deleted object"
        time.sleep(0.5)
    assert get(client, "sched", "keep") == keep


def test_maintenance_jobs_are_exclusive_across_processes(server: StrataServer) -> None:
    """While one process holds the maintenance lease (a gc inside a gateway, say), gc, key
    jobs and index rebuilds from another process refuse to start and change nothing."""
    expires = time.time() + 300
    with sqlite3.connect(server.data_dir / "meta.sqlite") as c:
        c.execute(
            "INSERT INTO leases (name, owner, expires) VALUES ('maintenance', 'elsewhere', ?)", (expires,)
        )
    for args in (
        ["gc", "--grace", "0"],
        ["keys", "rotate"],
        ["keys", "reencrypt"],
        ["fsck", "--rebuild-index"],
    ):
        busy = strata(*args, "--data-dir", str(server.data_dir))
        assert busy.returncode == 2, (args, busy.stderr)
        assert "lease" in busy.stderr
    assert rows(server.data_dir, "SELECT COUNT(*) FROM maintenance_jobs") == [(0,)]
    with sqlite3.connect(server.data_dir / "meta.sqlite") as c:
        c.execute("DELETE FROM leases")
    gc(server, "--grace", "0")
    assert rows(server.data_dir, "SELECT COUNT(*) FROM leases") == [(0,)]  # released at the end
