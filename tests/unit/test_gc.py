"""Garbage collection and repacking against the real embedded stores (SQLite metadata, local
blob directory, local keyring), in process: the race between a dedup hit and a sweep is
forced step by step, with the upload's commit held back between its lookup and its commit."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from crypto import Sealer, new_dek
from crypto.errors import IntegrityError
from crypto.kek import KEKProvider
from dedup import CorruptPackError, chunk_id, open_record, seal_chunk
from dedup.manifest import Manifest
from dedup.pack import ChunkLocation
from gateway.backends.factory import open_backend
from gateway.backends.local import LocalBlobBackend
from gateway.config import Config, GcConfig, StorageConfig
from gateway.ingest import Ingestor, IngestResult
from gateway.maintenance import keys as keys_job
from gateway.maintenance.gc import Collector, GcReport, NullObserver
from gateway.maintenance.keys import rotate
from gateway.maintenance.repack import reseal_record, runs
from gateway.meta.models import Bucket, NewChunk, ObjectVersion, PackRecord, StagedData
from gateway.meta.store import MaintenanceStore
from gateway.packs import OpenPack
from gateway.readpath import ChunkReader
from gateway.runtime import open_metadata
from gateway.s3.errors import S3Error

BUCKET = "bkt"
KEY = bytes(range(32))  # the tenant dedup key used by these tests


@dataclass
class Env:
    config: Config
    meta: MaintenanceStore
    backend: LocalBlobBackend
    kek: KEKProvider
    pool: ThreadPoolExecutor
    ingestor: Ingestor
    reader: ChunkReader

    async def ingest(self, data: bytes) -> IngestResult:
        async def body() -> AsyncIterator[bytes]:
            yield data

        return await self.ingestor.ingest(body(), KEY)

    async def commit(self, key: str, result: IngestResult, version_id: str = "null") -> ObjectVersion:
        version = ObjectVersion(BUCKET, key, version_id, result.size, "etag", 0.0, result.manifest)
        await self.meta.put_object(version, result.staged)
        return version

    async def put(self, key: str, data: bytes, version_id: str = "null") -> ObjectVersion:
        return await self.commit(key, await self.ingest(data), version_id)

    async def read(self, key: str, version_id: str | None = None) -> bytes:
        version = await self.meta.get_object(BUCKET, key, version_id)
        assert version is not None and not version.delete_marker
        return b"".join([bytes(p) async for p in self.reader.stream(version.manifest, 0, version.size)])

    async def gc(self, grace: float, **kwargs: Any) -> GcReport:
        return await Collector(
            self.meta, self.backend, self.kek, self.pool, self.config, grace=grace, **kwargs
        ).run()

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.config.storage.data_dir / "meta.sqlite")
        try:
            return conn.execute(query, params).fetchall()
        finally:
            conn.close()

    def pack_files(self) -> set[str]:
        return {
            p.name.removesuffix(".pack") for p in (self.config.storage.data_dir / "blobs").rglob("*.pack")
        }

    def blob_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.config.storage.data_dir / "blobs").rglob("*.pack"))


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    config = Config(storage=StorageConfig(data_dir=tmp_path / "data"), gc=GcConfig(repack_threshold=0.5))
    kek, meta = await open_metadata(config)
    backend = cast(LocalBlobBackend, open_backend(config))
    pool = ThreadPoolExecutor(max_workers=2)
    await meta.create_bucket(Bucket(BUCKET, "root", "us-east-1", 0.0))
    e = Env(
        config,
        cast(MaintenanceStore, meta),
        backend,
        kek,
        pool,
        Ingestor(backend, meta, kek, pool, config.storage),
        ChunkReader(backend, meta, kek, pool),
    )
    yield e
    pool.shutdown()
    await backend.close()
    await meta.close()


def data(n: int, seed: int) -> bytes:
    """``n`` incompressible bytes, the same for the same seed."""
    import random

    return random.Random(seed).randbytes(n)


# -- pure helpers ---------------------------------------------------------------------------


def test_runs_group_adjacent_records_within_limits() -> None:
    def row(offset: int, length: int) -> NewChunk:
        return NewChunk(bytes(32), ChunkLocation("p", offset, length, length, 0))

    rows = [row(100, 50), row(150, 50), row(1000, 10), row(10**6, 10)]
    assert [[r.location.offset for r in g] for g in runs(rows, run_bytes=1000, gap=900)] == [
        [100, 150, 1000],
        [10**6],
    ]
    assert [[r.location.offset for r in g] for g in runs(rows, run_bytes=100, gap=900)] == [
        [100, 150],
        [1000],
        [10**6],
    ]
    assert [len(g) for g in runs(rows, run_bytes=10**7, gap=0)] == [2, 1, 1]


def test_reseal_moves_a_record_to_another_dek_without_changing_its_payload() -> None:
    old, new = Sealer(new_dek()), Sealer(new_dek())
    cid = bytes(range(32))
    sealed = seal_chunk(old, cid, b"hello " * 1000)
    moved = reseal_record(old, new, memoryview(sealed.record), cid)
    assert open_record(new, moved.record, cid) == b"hello " * 1000
    assert moved.record[:48] == sealed.record[:48] and len(moved.record) == len(sealed.record)
    with pytest.raises(IntegrityError):
        open_record(old, moved.record, cid)
    with pytest.raises(CorruptPackError):  # another chunk id is refused before decrypting
        reseal_record(old, new, memoryview(sealed.record), bytes(32))


# -- mark, condemn, sweep -------------------------------------------------------------------


async def test_condemn_waits_for_the_grace_then_sweeps_and_shared_chunks_survive(env: Env) -> None:
    shared = data(3 << 20, 1)
    await env.put("a", shared + data(2 << 20, 2))  # shares its first chunks with b
    await env.put("b", shared + data(2 << 20, 3))
    await env.put("gone", data(5 << 20, 4))
    await env.meta.delete_object(BUCKET, "a")
    await env.meta.delete_object(BUCKET, "gone")
    before = env.blob_bytes()

    first = await env.gc(grace=3600)
    assert first.condemned > 0 and first.swept_chunks == 0 and first.reclaimed == 0
    assert env.blob_bytes() == before
    condemned = env.sql("SELECT COUNT(*) FROM chunks WHERE condemned_at IS NOT NULL")[0][0]
    assert condemned == first.condemned

    second = await env.gc(grace=0)
    assert second.swept_chunks == condemned
    assert env.sql("SELECT COUNT(*) FROM chunks WHERE condemned_at IS NOT NULL") == [(0,)]
    assert second.reclaimed == before - env.blob_bytes() > 0
    assert await env.read("b") == shared + data(2 << 20, 3)
    # every pack file left has a row, and every row a file
    assert env.pack_files() == {r[0] for r in env.sql("SELECT pack_id FROM packs")}


async def test_dedup_lookup_treats_condemned_chunks_as_misses(env: Env) -> None:
    blob = data(2 << 20, 5)
    await env.put("a", blob)
    await env.meta.delete_object(BUCKET, "a")
    await env.gc(grace=3600)  # condemn
    again = await env.ingest(blob)
    assert again.dedup_bytes == 0 and again.staged.chunks  # stored afresh
    await env.commit("a2", again)
    await env.gc(grace=0)
    assert await env.read("a2") == blob


async def test_dedup_hit_commit_after_its_chunks_were_swept_fails_cleanly(env: Env) -> None:
    blob = data(3 << 20, 6)
    await env.put("a", blob)
    held = await env.ingest(blob)  # the dedup hit: looked up, not yet committed
    assert held.dedup_bytes == len(blob) and not held.staged.chunks
    await env.meta.delete_object(BUCKET, "a")
    report = await env.gc(grace=0)  # condemns and sweeps in one run
    assert report.swept_chunks > 0
    with pytest.raises(S3Error) as err:
        await env.commit("b", held)
    assert err.value.code == "SlowDown" and err.value.status == 503
    assert await env.meta.get_object(BUCKET, "b") is None  # nothing committed
    # a copy (an existing manifest committed with no staged data) is refused the same way
    with pytest.raises(S3Error):
        await env.meta.put_object(
            ObjectVersion(BUCKET, "c", "null", len(blob), "e", 0, held.manifest), StagedData([], [])
        )
    await env.put("b", blob)  # the client's retry stores the data again
    assert await env.read("b") == blob


async def test_dedup_hit_committed_after_condemnation_revives_its_chunks(env: Env) -> None:
    blob = data(3 << 20, 7)
    await env.put("a", blob)
    held = await env.ingest(blob)
    await env.meta.delete_object(BUCKET, "a")
    assert (await env.gc(grace=3600)).condemned > 0
    await env.commit("b", held)  # revives what it reuses
    assert env.sql("SELECT COUNT(*) FROM chunks WHERE condemned_at IS NOT NULL") == [(0,)]
    assert (await env.gc(grace=0)).swept_chunks == 0
    assert await env.read("b") == blob


async def test_commit_landing_between_the_mark_and_the_sweep_keeps_its_chunks(env: Env) -> None:
    """The sharpest race: the chunk was condemned by pass 1, pass 2's mark ran before the
    commit (so it does not see the new reference), and the commit lands just before pass 2
    sweeps. The commit's revival must make the sweep skip the chunk."""
    blob = data(3 << 20, 8)
    await env.put("a", blob)
    held = await env.ingest(blob)
    await env.meta.delete_object(BUCKET, "a")
    sweeps = 0

    class CommitBeforeSecondSweep(NullObserver):
        async def phase(self, name: str, total: int | None, unit: str) -> None:
            nonlocal sweeps
            if name == "sweep":
                sweeps += 1
                if sweeps == 2:
                    await env.commit("b", held)

    report = await env.gc(grace=0, observer=CommitBeforeSecondSweep())
    assert sweeps == 2 and report.condemned > 0 and report.swept_chunks == 0
    assert await env.read("b") == blob
    report = await env.gc(grace=0)  # and a later run leaves it alone too
    assert report.swept_chunks == 0 and report.condemned == 0
    assert await env.read("b") == blob


async def test_chunks_of_unfinished_multipart_parts_are_live(env: Env) -> None:
    from gateway.meta.models import MultipartUpload, Part

    blob = data(2 << 20, 9)
    result = await env.ingest(blob)
    upload = MultipartUpload("u1", BUCKET, "mp", 0.0, "root", "binary/octet-stream", {}, {}, None, None)
    await env.meta.create_upload(upload)
    await env.meta.put_part("u1", Part(1, result.size, "e", 0.0, result.manifest), result.staged)
    report = await env.gc(grace=0)
    assert report.condemned == 0 and report.swept_chunks == 0
    version = ObjectVersion(BUCKET, "mp", "null", result.size, "e-1", 0.0, result.manifest, parts=1)
    assert await env.meta.complete_upload("u1", version)
    assert (await env.gc(grace=0)).swept_chunks == 0
    assert await env.read("mp") == blob


# -- packs ----------------------------------------------------------------------------------


async def write_pack(env: Env, payloads: list[bytes]) -> tuple[PackRecord, list[NewChunk]]:
    """A durable pack holding ``payloads`` (as one group commit writes it), not yet indexed."""
    pack = await OpenPack.create(env.backend, env.kek)
    placed = await pack.append([seal_chunk(pack.sealer, chunk_id(KEY, p), p) for p in payloads])
    return await pack.close(), placed


def single_chunk(key: str, payload: bytes) -> ObjectVersion:
    return ObjectVersion(
        BUCKET, key, "null", len(payload), "e", 0, Manifest((chunk_id(KEY, payload),), (len(payload),))
    )


async def test_repack_rewrites_a_half_dead_pack_and_keeps_the_live_objects(env: Env) -> None:
    bodies = {f"k{i}": data(100_000, 100 + i) for i in range(10)}
    record, placed = await write_pack(env, list(bodies.values()))
    for n, (key, body) in enumerate(bodies.items()):  # the objects of one group commit
        await env.meta.put_object(single_chunk(key, body), StagedData([record], [placed[n]]))
    assert env.pack_files() == {record.pack_id}
    for key in list(bodies)[:6]:
        await env.meta.delete_object(BUCKET, key)
        del bodies[key]
    before = env.blob_bytes()

    report = await env.gc(grace=0)
    assert report.swept_chunks == 6
    assert report.repack.sources == 1 and report.repack.packs_written == 1 and report.repack.moved == 4
    assert report.packs_deleted == 1
    assert record.pack_id not in env.pack_files() and len(env.pack_files()) == 1
    assert report.reclaimed == before - env.blob_bytes() > 500_000
    for key, body in bodies.items():
        assert await env.read(key) == body
    (new_pack,) = env.pack_files()  # with its own DEK
    new_record = await env.meta.get_pack(new_pack)
    assert new_record is not None
    assert await env.kek.unwrap(record.wrapped_dek) != await env.kek.unwrap(new_record.wrapped_dek)
    assert (await env.gc(grace=0)).reclaimed == 0  # nothing left to do


async def test_a_pack_above_the_threshold_is_not_repacked(env: Env) -> None:
    bodies = [data(100_000, 300 + i) for i in range(4)]
    record, placed = await write_pack(env, bodies)
    for n, body in enumerate(bodies):
        await env.meta.put_object(single_chunk(f"k{n}", body), StagedData([record], [placed[n]]))
    await env.meta.delete_object(BUCKET, "k0")  # 75% still live
    report = await env.gc(grace=0)
    assert report.swept_chunks == 1 and report.repack.sources == 0 and env.pack_files() == {record.pack_id}


async def test_orphan_blobs_are_deleted_and_their_late_commit_is_refused(env: Env) -> None:
    payload = data(50_000, 11)
    record, placed = await write_pack(env, [payload])  # durable, but its upload never committed
    report = await env.gc(grace=3600)
    assert report.orphans_deleted == 0 and record.pack_id in env.pack_files()
    report = await env.gc(grace=0)
    assert report.orphans_deleted == 1 and report.deleted_bytes == record.size
    assert record.pack_id not in env.pack_files()
    with pytest.raises(S3Error) as err:
        await env.meta.put_object(single_chunk("late", payload), StagedData([record], placed))
    assert err.value.code == "SlowDown"
    assert await env.meta.get_object(BUCKET, "late") is None


async def test_a_late_commit_into_a_retired_shared_pack_revives_it(env: Env) -> None:
    payload = data(60_000, 12)
    record, placed = await write_pack(env, [payload])
    # the first request of the group commits the pack with none of its chunks (an empty object)
    empty = ObjectVersion(BUCKET, "empty", "null", 0, "e", 0, Manifest((), ()))
    await env.meta.put_object(empty, StagedData([record], []))
    assert (await env.gc(grace=3600)).packs_retired == 1
    # the second request of the group commits its chunk in that pack: the pack comes back
    await env.meta.put_object(single_chunk("late", payload), StagedData([record], placed))
    assert env.sql("SELECT retired_at FROM packs WHERE pack_id=?", record.pack_id) == [(None,)]
    await env.gc(grace=0)
    assert record.pack_id in env.pack_files()
    assert await env.read("late") == payload


# -- keys -----------------------------------------------------------------------------------


async def test_rotate_interrupted_then_resumed_adds_one_version(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys_job, "KEY_PAGE", 2)  # 5 packs: 3 pages, the crash comes after the first
    for i in range(5):
        await env.put(f"k{i}", data(300_000, 200 + i))
    files = {p: p.read_bytes() for p in (env.config.storage.data_dir / "blobs").rglob("*.pack")}

    class Crash(Exception):
        pass

    class CrashAfterFirstPage(NullObserver):
        def advance(self, n: int, detail: str) -> None:
            raise Crash

    with pytest.raises(Crash):
        await rotate(env.meta, env.kek, CrashAfterFirstPage(), settle=0)
    assert env.kek.versions() == [1, 2]
    assert await env.meta.get_job("keys-rotate") is not None
    assert env.sql("SELECT kek_version, COUNT(*) FROM packs GROUP BY kek_version") == [(1, 3), (2, 2)]
    report = await rotate(env.meta, env.kek, settle=0)
    assert not report.added and report.version == 2 and report.rewrapped["pack"] == 3
    assert env.kek.versions() == [1, 2]  # no second version
    assert await env.meta.get_job("keys-rotate") is None
    assert env.sql("SELECT DISTINCT kek_version FROM packs") == [(2,)]
    assert {p: p.read_bytes() for p in files} == files  # no data rewritten
    for i in range(5):
        assert await env.read(f"k{i}") == data(300_000, 200 + i)
