"""``strata keys rotate`` and ``strata keys reencrypt`` next to a live ``strata serve``:
everything keeps reading, rotation rewrites no data (the DEKs that tiny objects carry in their
manifests included), re-encryption replaces every pack and re-seals every inline object, and
both finish after being killed midway; on SQLite and on four PostgreSQL shards."""

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
from typing import Any, cast

import asyncpg
import pytest
from support.postgres import run_async
from support.s3 import make_client
from support.server import REPO_ROOT, StrataServer

from crypto import LocalKeyring
from crypto.kek import WrappedKey
from dedup.manifest import InlineRecord, Manifest
from gateway.config import Config, StorageConfig
from gateway.maintenance import gc as gc_job
from gateway.maintenance import keys as keys_job
from gateway.maintenance.gc import NullObserver
from gateway.maintenance.keys import REENCRYPT_JOB, ReencryptReport, reencrypt
from gateway.meta.store import MaintenanceStore
from gateway.runtime import admin_stores
from integration.test_gc import assert_index_consistent, get, pack_files, payload, rows, strata
from integration.test_postgres_profile import _strata_cmd, pg_databases, pg_env, pg_server

__all__ = ["pg_databases", "pg_env", "pg_server"]  # fixtures

MiB = 1024 * 1024


@pytest.fixture
def server(strata_factory: Callable[..., StrataServer]) -> StrataServer:
    return strata_factory()


TINY = 7  # objects of at most storage.inline_max bytes: sealed into their manifest


def fill(server: StrataServer) -> tuple[Any, dict[str, bytes]]:
    """Objects in several packs, some sharing chunks (dedup), and tiny objects sealed inline
    in their manifest (under the gateway's shared inline DEK)."""
    client = make_client(server)
    client.create_bucket(Bucket="keys")
    shared = payload(3 * MiB, 50)
    objects = {"a": shared + payload(1 * MiB, 51), "b": shared + payload(2 * MiB, 52)}
    objects.update({f"s{i}": payload(20_000, 60 + i) for i in range(5)})
    objects.update({f"t{i}": payload(1 + 2000 * i, 80 + i) for i in range(TINY)})
    for key, body in objects.items():
        client.put_object(Bucket="keys", Key=key, Body=body)
    assert len(inline_records(server.data_dir)) == TINY
    return client, objects


def inline_records(data_dir: Path) -> dict[tuple[str, str, str], InlineRecord]:
    """The record and wrapped DEK of every inline manifest, by (bucket, key, version id)."""
    found = {}
    for bucket, key, version_id, blob in rows(
        data_dir, "SELECT bucket, key, version_id, manifest FROM objects"
    ):
        inline = Manifest.decode(blob).inline
        if inline is not None:
            found[bucket, key, version_id] = inline
    return found


def read_all(client: Any, objects: dict[str, bytes]) -> None:
    """Every object reads back byte-exact, the latest version (which the gateway may answer
    from its cache) and by version id (always from the metadata store)."""
    for key, body in objects.items():
        assert get(client, "keys", key) == body, key
        assert get(client, "keys", key, VersionId="null") == body, key


def file_digests(data_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (data_dir / "blobs").rglob("*.pack")}


def key_versions(data_dir: Path) -> set[int]:
    """The KEK versions of every wrapped key: pack DEKs, users, access keys, inline DEKs."""
    found: set[int] = set()
    for table in ("packs", "users", "access_keys"):
        found |= {r[0] for r in rows(data_dir, f"SELECT DISTINCT kek_version FROM {table}")}
    return found | {r.wrapped_dek.kek_version for r in inline_records(data_dir).values()}


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
    alice.put_object(Bucket="alice-bkt", Key="x", Body=b"alice data" * 1000)  # 10 kB: inline too
    alice.put_object(Bucket="alice-bkt", Key="tiny", Body=b"alice's tiny object")
    before = file_digests(server.data_dir)
    inline_before = inline_records(server.data_dir)
    assert key_versions(server.data_dir) == {1}
    assert len(inline_before) == TINY + 2
    assert len({r.wrapped_dek for r in inline_before.values()}) == 1  # the gateway's one inline DEK
    read_all(client, objects)  # the gateway caches the current versions as they are now

    done = strata("keys", "rotate", "--data-dir", str(server.data_dir))
    assert done.returncode == 0, done.stderr
    assert "added KEK version 2" in done.stdout and "keys rotate rewrap packs" in done.stderr
    assert f"{len(inline_before)} inline objects (1 DEKs)" in done.stdout
    ring = keyring(server.data_dir)
    assert ring["current"] == 2 and [v["version"] for v in ring["versions"]] == [1, 2]
    assert key_versions(server.data_dir) == {2}
    assert file_digests(server.data_dir) == before  # no data rewritten
    inline_after = inline_records(server.data_dir)
    assert inline_after.keys() == inline_before.keys()
    ring_keys = LocalKeyring(server.data_dir / "keyring.json")
    for where, old in inline_before.items():  # the same DEK, wrapped anew; the record untouched
        new = inline_after[where]
        assert new.record == old.record and new.wrapped_dek != old.wrapped_dek
        assert ring_keys.unwrap_sync(new.wrapped_dek) == ring_keys.unwrap_sync(old.wrapped_dek)
    read_all(client, objects)  # the live gateway keeps reading (cached manifests still open)
    assert get(alice, "alice-bkt", "x") == b"alice data" * 1000
    assert get(alice, "alice-bkt", "tiny") == b"alice's tiny object"
    # the live gateway now wraps new DEKs with version 2 (it follows the keyring file), its
    # inline DEK included
    client.put_object(Bucket="keys", Key="after", Body=payload(100_000, 70))
    client.put_object(Bucket="keys", Key="after-tiny", Body=payload(100, 71))
    assert ("keys", "after-tiny", "null") in inline_records(server.data_dir)
    assert key_versions(server.data_dir) == {2}

    # a second gateway started afresh on the same stores unwraps every re-wrapped key and secret
    fresh = StrataServer(server.data_dir, log_path=tmp_path / "second.log")
    fresh.start()
    try:
        assert get(make_client(fresh), "keys", "a") == objects["a"]
        assert get(make_client(fresh), "keys", "t3") == objects["t3"]
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
    assert key_versions(server.data_dir) == {2}  # the inline DEKs too
    read_all(client, objects)


def deks(data_dir: Path) -> set[bytes]:
    ring = LocalKeyring(data_dir / "keyring.json")
    found = rows(data_dir, "SELECT kek_id, kek_version, wrapped_dek FROM packs WHERE retired_at IS NULL")
    return {ring.unwrap_sync(WrappedKey(*r)) for r in found}


def test_reencrypt_replaces_every_pack_and_objects_still_read(server: StrataServer) -> None:
    client, objects = fill(server)
    old_packs, old_deks = pack_files(server.data_dir), deks(server.data_dir)
    old_inline = inline_records(server.data_dir)
    assert len(old_packs) >= 3
    read_all(client, objects)  # the gateway caches the current versions as they are now
    done = strata("keys", "reencrypt", "--grace", "0", "--data-dir", str(server.data_dir))
    assert done.returncode == 0, done.stderr
    assert f"re-encrypted {len(old_packs)} packs" in done.stdout
    assert f"re-sealed {TINY} inline objects under 1 fresh DEKs" in done.stdout
    new_packs = pack_files(server.data_dir)
    assert new_packs and not new_packs & old_packs  # every old pack blob is gone
    assert not deks(server.data_dir) & old_deks  # under fresh DEKs
    new_inline = inline_records(server.data_dir)
    assert new_inline.keys() == old_inline.keys()
    old_wraps = {r.wrapped_dek for r in old_inline.values()}
    assert not {r.wrapped_dek for r in new_inline.values()} & old_wraps  # no manifest keeps an old DEK
    ring = LocalKeyring(server.data_dir / "keyring.json")
    assert not {ring.unwrap_sync(r.wrapped_dek) for r in new_inline.values()} & {
        ring.unwrap_sync(w) for w in old_wraps
    }
    assert all(new_inline[k].record != old.record for k, old in old_inline.items())  # re-sealed
    read_all(client, objects)
    assert_index_consistent(server.data_dir)
    fsck = strata("fsck", "--data-dir", str(server.data_dir))
    assert fsck.returncode == 0 and f"{TINY} inline records checked: 0 broken" in fsck.stderr, fsck.stderr


async def test_reencrypt_interrupted_in_the_inline_phase_resumes_after_the_last_page(
    server: StrataServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, objects = fill(server)
    old_wraps = {r.wrapped_dek for r in inline_records(server.data_dir).values()}
    monkeypatch.setattr(keys_job, "KEY_PAGE", 2)
    config = Config(storage=StorageConfig(data_dir=server.data_dir))

    class Crash(Exception):
        pass

    class CrashAfterTwoInlinePages(NullObserver):
        phase_name = ""
        pages = 0

        async def phase(self, name: str, total: int | None, unit: str) -> None:
            self.phase_name = name

        def advance(self, n: int, detail: str) -> None:
            if self.phase_name == "reencrypt inline objects":
                self.pages += 1
                if self.pages == 2:
                    raise Crash

    def resealed() -> int:
        return sum(r.wrapped_dek not in old_wraps for r in inline_records(server.data_dir).values())

    async with admin_stores(config) as stores:
        store = cast(MaintenanceStore, stores.meta)
        backend, kek, pool = stores.backend, stores.kek, stores.pool
        with pytest.raises(Crash):
            await reencrypt(store, backend, kek, pool, config, grace=0, observer=CrashAfterTwoInlinePages())
        job = await store.get_job(REENCRYPT_JOB)
        assert job is not None and job["inline_after"] == ["keys", "t3", "null"] and "inline_done" not in job
        assert resealed() == 4  # two pages of two
        read_all(client, objects)  # consistent while half done
        report = await reencrypt(store, backend, kek, pool, config, grace=0)
        assert report.resumed and report.inline == TINY - 4  # resumed after the last page done
        assert await store.get_job(REENCRYPT_JOB) is None
    assert resealed() == TINY
    read_all(client, objects)


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

    async with admin_stores(config) as stores:
        store = cast(MaintenanceStore, stores.meta)
        backend, kek, pool = stores.backend, stores.kek, stores.pool
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
    assert not pack_files(server.data_dir) & old_packs
    for key, body in objects.items():
        assert get(client, "keys", key) == body
    assert_index_consistent(server.data_dir)


async def _pg_inline(dsns: list[str]) -> dict[tuple[str, str, str], InlineRecord]:
    """:func:`inline_records` over every shard."""
    found = {}
    for dsn in dsns:
        conn = await asyncpg.connect(dsn)
        try:
            for r in await conn.fetch("SELECT bucket, key, version_id, manifest FROM objects"):
                inline = Manifest.decode(r["manifest"]).inline
                if inline is not None:
                    found[r["bucket"], r["key"], r["version_id"]] = inline
        finally:
            await conn.close()
    return found


async def _pg_flip_record_byte(dsns: list[str], bucket: str, key: str, version_id: str) -> None:
    """Flip a ciphertext byte of the record inside a version's inline manifest, on its shard."""
    for dsn in dsns:
        conn = await asyncpg.connect(dsn)
        try:
            where = "bucket = $1 AND key = $2 AND version_id = $3"
            blob = await conn.fetchval(f"SELECT manifest FROM objects WHERE {where}", bucket, key, version_id)
            if blob is not None:
                inline = Manifest.decode(blob).inline
                assert inline is not None
                data = bytearray(blob)
                data[len(blob) - len(inline.record) + 48 + 12 + 1] ^= 0x01
                await conn.execute(
                    f"UPDATE objects SET manifest = $4 WHERE {where}", bucket, key, version_id, data
                )
        finally:
            await conn.close()


def test_inline_objects_through_rotate_reencrypt_fsck_and_stats_on_four_shards(
    strata_factory: Callable[..., StrataServer], pg_env: dict[str, str]
) -> None:
    server = strata_factory(extra_env=pg_env)
    dsns = pg_env["STRATA_META_DSNS"].split(",")
    s3 = make_client(server)
    bodies: dict[tuple[str, str, str], bytes] = {}
    for b in ("in-a", "in-b", "in-c", "in-d"):  # buckets on several shards
        s3.create_bucket(Bucket=b)
        s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
        for i in range(3):
            for n in range(2):  # two versions of each key
                body = payload(1 + 3000 * i + n, 1000 + 100 * ord(b[-1]) + 10 * i + n)
                version = s3.put_object(Bucket=b, Key=f"k{i}", Body=body)["VersionId"]
                bodies[b, f"k{i}", version] = body
    s3.put_object(Bucket="in-a", Key="big", Body=payload(2 * MiB, 7))  # in a pack

    def read_all() -> None:
        for (b, k, v), body in bodies.items():
            assert get(s3, b, k, VersionId=v) == body, (b, k, v)

    before = run_async(_pg_inline(dsns))
    assert before.keys() == bodies.keys() and {r.wrapped_dek.kek_version for r in before.values()} == {1}

    rotate = _strata_cmd(server, pg_env, "keys", "rotate")
    assert rotate.returncode == 0, rotate.stderr
    assert f"{len(bodies)} inline objects (1 DEKs)" in rotate.stdout
    rotated = run_async(_pg_inline(dsns))
    assert {r.wrapped_dek.kek_version for r in rotated.values()} == {2}
    assert all(rotated[k].record == old.record for k, old in before.items())  # no data re-sealed
    read_all()

    reencrypt = _strata_cmd(server, pg_env, "keys", "reencrypt", "--grace", "0")
    assert reencrypt.returncode == 0, reencrypt.stderr
    assert f"re-sealed {len(bodies)} inline objects" in reencrypt.stdout
    resealed = run_async(_pg_inline(dsns))
    old_wraps = {r.wrapped_dek for r in (*before.values(), *rotated.values())}
    assert not {r.wrapped_dek for r in resealed.values()} & old_wraps
    assert all(resealed[k].record != old.record for k, old in rotated.items())
    read_all()

    clean = _strata_cmd(server, pg_env, "fsck")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"{len(bodies)} inline records checked: 0 broken" in clean.stderr
    stats = json.loads(_strata_cmd(server, pg_env, "stats", "--json").stdout)
    assert stats["inline_versions"] == len(bodies)
    assert stats["inline_bytes"] == sum(
        len(Manifest((b"x" * 32,), (0,), r).encode()) for r in resealed.values()
    )

    (bucket, key, version), _ = next(iter(bodies.items()))
    run_async(_pg_flip_record_byte(dsns, bucket, key, version))
    damaged = _strata_cmd(server, pg_env, "fsck")
    assert damaged.returncode == 1, damaged.stdout + damaged.stderr
    assert (
        damaged.stdout.startswith(f"{bucket}/{key} ({version}): chunk ")
        and len(damaged.stdout.splitlines()) == 1
    )
    assert "(inline): record failed authentication" in damaged.stdout
