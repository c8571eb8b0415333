"""``strata keys rotate`` and ``strata keys reencrypt`` next to a live ``strata serve``:
everything keeps reading, rotation rewrites no data, re-encryption replaces every pack, and
both finish after being killed midway."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.s3 import make_client
from support.server import REPO_ROOT, StrataServer

from crypto import LocalKeyring
from crypto.kek import WrappedKey
from gateway.backends.factory import open_backend
from gateway.config import Config, StorageConfig
from gateway.maintenance import gc as gc_job
from gateway.maintenance.gc import NullObserver
from gateway.maintenance.keys import REENCRYPT_JOB, ReencryptReport, reencrypt
from gateway.meta.store import MaintenanceStore
from gateway.runtime import open_metadata
from integration.test_gc import assert_index_consistent, get, pack_files, payload, rows, strata

MiB = 1024 * 1024


@pytest.fixture
def server(strata_factory: Callable[..., StrataServer]) -> StrataServer:
    return strata_factory()


def fill(server: StrataServer) -> tuple[Any, dict[str, bytes]]:
    """Objects in several packs, some sharing chunks (dedup), plus a second user with a key."""
    client = make_client(server)
    client.create_bucket(Bucket="keys")
    shared = payload(3 * MiB, 50)
    objects = {"a": shared + payload(1 * MiB, 51), "b": shared + payload(2 * MiB, 52)}
    objects.update({f"s{i}": payload(20_000, 60 + i) for i in range(5)})
    for key, body in objects.items():
        client.put_object(Bucket="keys", Key=key, Body=body)
    return client, objects


def file_digests(data_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (data_dir / "blobs").rglob("*.pack")}


def key_versions(data_dir: Path) -> set[int]:
    found: set[int] = set()
    for table in ("packs", "users", "access_keys"):
        found |= {r[0] for r in rows(data_dir, f"SELECT DISTINCT kek_version FROM {table}")}
    return found


def keyring(data_dir: Path) -> dict[str, Any]:
    return json.loads((data_dir / "keyring.json").read_text())


def test_rotate_rewraps_every_key_without_rewriting_data(server: StrataServer, tmp_path: Path) -> None:
    client, objects = fill(server)
    added = strata("admin", "user", "add", "alice", "--data-dir", str(server.data_dir))
    assert added.returncode == 0, added.stderr
    ak = re.search(r"access key: (\S+)", added.stdout)
    sk = re.search(r"secret key: (\S+)", added.stdout)
    assert ak and sk
    alice = make_client(server, access_key=ak.group(1), secret_key=sk.group(1))
    alice.create_bucket(Bucket="alice-bkt")
    alice.put_object(Bucket="alice-bkt", Key="x", Body=b"alice data" * 1000)
    before = file_digests(server.data_dir)
    assert key_versions(server.data_dir) == {1}

    done = strata("keys", "rotate", "--data-dir", str(server.data_dir))
    assert done.returncode == 0, done.stderr
    assert "added KEK version 2" in done.stdout and "keys rotate rewrap packs" in done.stderr
    ring = keyring(server.data_dir)
    assert ring["current"] == 2 and [v["version"] for v in ring["versions"]] == [1, 2]
    assert key_versions(server.data_dir) == {2}
    assert file_digests(server.data_dir) == before  # no data rewritten
    for key, body in objects.items():  # the live gateway keeps reading
        assert get(client, "keys", key) == body
    assert get(alice, "alice-bkt", "x") == b"alice data" * 1000
    # the live gateway now wraps new DEKs with version 2 (it follows the keyring file)
    client.put_object(Bucket="keys", Key="after", Body=payload(100_000, 70))
    assert key_versions(server.data_dir) == {2}

    # a second gateway started afresh on the same stores unwraps every re-wrapped key and secret
    fresh = StrataServer(server.data_dir, log_path=tmp_path / "second.log")
    fresh.start()
    try:
        assert get(make_client(fresh), "keys", "a") == objects["a"]
        assert get(make_client(fresh, access_key=ak.group(1), secret_key=sk.group(1)), "alice-bkt", "x")
    finally:
        fresh.stop()


def test_rotate_killed_midway_resumes_the_same_rotation(server: StrataServer) -> None:
    client, objects = fill(server)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "keys", "rotate", "--data-dir", str(server.data_dir)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:  # the first pass is done; it waits for gateways to follow the keyring
        if line.startswith("keys rotate rewrap users"):
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert rows(server.data_dir, "SELECT name FROM maintenance_jobs") == [("keys-rotate",)]

    done = strata("keys", "rotate", "--data-dir", str(server.data_dir))
    assert done.returncode == 0, done.stderr
    assert "resumed rotation to KEK version 2" in done.stdout
    assert [v["version"] for v in keyring(server.data_dir)["versions"]] == [1, 2]  # no third
    assert rows(server.data_dir, "SELECT name FROM maintenance_jobs") == []
    assert key_versions(server.data_dir) == {2}
    for key, body in objects.items():
        assert get(client, "keys", key) == body


def deks(data_dir: Path) -> set[bytes]:
    ring = LocalKeyring(data_dir / "keyring.json")
    found = rows(data_dir, "SELECT kek_id, kek_version, wrapped_dek FROM packs WHERE retired_at IS NULL")
    return {ring.unwrap_sync(WrappedKey(*r)) for r in found}


def test_reencrypt_replaces_every_pack_and_objects_still_read(server: StrataServer) -> None:
    client, objects = fill(server)
    old_packs, old_deks = pack_files(server.data_dir), deks(server.data_dir)
    assert len(old_packs) >= 3
    done = strata("keys", "reencrypt", "--grace", "0", "--data-dir", str(server.data_dir))
    assert done.returncode == 0, done.stderr
    assert f"re-encrypted {len(old_packs)} packs" in done.stdout
    new_packs = pack_files(server.data_dir)
    assert new_packs and not new_packs & old_packs  # every old pack blob is gone
    assert not deks(server.data_dir) & old_deks  # under fresh DEKs
    for key, body in objects.items():
        assert get(client, "keys", key) == body
    assert_index_consistent(server.data_dir)


async def test_reencrypt_interrupted_midway_resumes(
    server: StrataServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, objects = fill(server)
    old_packs = pack_files(server.data_dir)
    # one output pack per source pack, one source per page: a crash leaves some packs done
    config = Config(storage=StorageConfig(data_dir=server.data_dir, pack_target=1))
    monkeypatch.setattr(gc_job, "PACK_PAGE", 1)
    monkeypatch.setattr("gateway.maintenance.keys.PACK_PAGE", 1)

    class Crash(Exception):
        pass

    progress = ReencryptReport()

    class CrashAfterTwoSources(NullObserver):
        """Crash once two source packs are rewritten: the first is retired by then, the second
        is not. (Counting pages would not do: an output pack written during the run sorts
        among the sources and is skipped, so a page can pass with no work done.)"""

        def advance(self, n: int, detail: str) -> None:
            if progress.rewrite.sources == 2:
                raise Crash

    kek, meta = await open_metadata(config)
    backend = open_backend(config, serving=False)
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=2)
    try:
        store: MaintenanceStore = meta  # type: ignore[assignment]
        with pytest.raises(Crash):
            await reencrypt(
                store, backend, kek, pool, config, grace=0, observer=CrashAfterTwoSources(), report=progress
            )
        assert await store.get_job(REENCRYPT_JOB) is not None
        retired = rows(server.data_dir, "SELECT COUNT(*) FROM packs WHERE retired_at IS NOT NULL")[0][0]
        assert 0 < retired < len(old_packs)  # midway
        for key, body in objects.items():  # consistent while half done
            assert get(client, "keys", key) == body
        report = await reencrypt(store, backend, kek, pool, config, grace=0)
        assert report.resumed and await store.get_job(REENCRYPT_JOB) is None
    finally:
        pool.shutdown()
        await backend.close()
        await meta.close()
    assert not pack_files(server.data_dir) & old_packs
    for key, body in objects.items():
        assert get(client, "keys", key) == body
    assert_index_consistent(server.data_dir)
