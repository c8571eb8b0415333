"""fsck and the index rebuild against real in-process stores (SQLite, a local blob directory,
a local keyring), tiny objects sealed inline in their manifest included, plus the maintenance
scans and aggregates of the SQLite store and the pure helpers."""

from __future__ import annotations

import io
import os
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crypto import LocalKeyring, WrappedKey
from dedup import ChunkLocation, chunk_id, new_dedup_key
from dedup.manifest import InlineRecord, Manifest
from gateway.backends.base import pack_blob_name
from gateway.backends.local import LocalBlobBackend
from gateway.commands.progress import Progress, human_bytes, render
from gateway.identity import Identities
from gateway.inline import InlineKeys
from gateway.maintenance.fsck import (
    Broken,
    Checker,
    DekCache,
    VerdictSet,
    first_problem,
    pack_id_of,
    plan_runs,
    read_pack_index,
    rebuild_index,
)
from gateway.maintenance.stats import summarize
from gateway.meta.models import Bucket, MultipartUpload, ObjectVersion, Part, StagedData
from gateway.meta.sqlite import SqliteMetadataStore
from gateway.packs import OpenPack

KiB = 1024


@dataclass
class Stores:
    root: Path
    meta: SqliteMetadataStore
    backend: LocalBlobBackend
    kek: LocalKeyring
    identities: Identities
    pool: ThreadPoolExecutor
    inline: InlineKeys  # seals tiny objects into their manifest, as the ingest does

    async def key(self, user: str) -> bytes:
        return await self.identities.dedup_key(user)

    async def write_pack(self, chunks: list[bytes], dedup_key: bytes) -> StagedData:
        """Seal ``chunks`` into one new pack, as the ingest does (gateway.packs.OpenPack)."""

        async def cpu(fn: Any, *args: Any, work: int = 0) -> Any:
            return fn(*args)

        pack = await OpenPack.create(self.backend, self.kek)
        fresh = [(chunk_id(dedup_key, c), memoryview(c)) for c in chunks]
        new = await pack.append(await pack.seal(cpu, fresh, 1))
        return StagedData([await pack.close()], new)

    async def put(self, bucket: str, key: str, chunks: list[bytes]) -> None:
        """Store an object made of ``chunks``; chunks the index already has are not stored
        again (dedup, as the ingest does)."""
        owner = (await self.meta.get_bucket(bucket)).owner  # type: ignore[union-attr]
        dedup_key = await self.key(owner)
        ids = [chunk_id(dedup_key, c) for c in chunks]
        known = await self.meta.lookup_chunks(ids)
        fresh = list({i: c for i, c in zip(ids, chunks, strict=True) if i not in known}.values())
        staged = await self.write_pack(fresh, dedup_key) if fresh else StagedData([], [])
        manifest = Manifest(tuple(ids), tuple(len(c) for c in chunks))
        version = ObjectVersion(bucket, key, "null", manifest.size, "e" * 32, 1.0, manifest)
        await self.meta.put_object(version, staged)

    async def put_inline(self, bucket: str, key: str, data: bytes, sealed_for: str | None = None) -> Manifest:
        """Store ``data`` sealed into its manifest (named with ``sealed_for``'s dedup key, by
        default the bucket owner's, as the ingest does)."""
        owner = (await self.meta.get_bucket(bucket)).owner  # type: ignore[union-attr]
        manifest = await self.inline.seal(await self.key(sealed_for or owner), data, 1)
        version = ObjectVersion(bucket, key, "null", manifest.size, "e" * 32, 1.0, manifest)
        await self.meta.put_object(version, StagedData([], []))
        return manifest

    def sql(self, statement: str, *params: Any) -> None:
        with sqlite3.connect(self.root / "meta.sqlite") as c:
            c.execute(statement, params)

    def flip_inline_byte(self, bucket: str, key: str, at: int) -> None:
        """Flip one byte of the sealed record inside the version's manifest, ``at`` bytes
        into the record."""
        with sqlite3.connect(self.root / "meta.sqlite") as c:
            ((blob,),) = c.execute("SELECT manifest FROM objects WHERE bucket=? AND key=?", (bucket, key))
            record = Manifest.decode(blob).inline.record  # type: ignore[union-attr]
            data = bytearray(blob)
            data[len(blob) - len(record) + at] ^= 0x01
            c.execute("UPDATE objects SET manifest=? WHERE bucket=? AND key=?", (bytes(data), bucket, key))


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    meta = SqliteMetadataStore(tmp_path / "meta.sqlite")
    await meta.open()
    kek = LocalKeyring.open_or_create(tmp_path / "keyring.json")
    identities = Identities(meta, kek)
    for user in ("alice", "bob"):
        await identities.ensure_user(user)
    await meta.create_bucket(Bucket("alice-b", "alice", "us-east-1", 0.0))
    await meta.create_bucket(Bucket("bob-b", "bob", "us-east-1", 0.0))
    pool = ThreadPoolExecutor(2)
    s = Stores(tmp_path, meta, LocalBlobBackend(tmp_path / "blobs"), kek, identities, pool, InlineKeys(kek))
    yield s
    pool.shutdown()
    await s.backend.close()
    await meta.close()


async def fsck(s: Stores, **kwargs: Any) -> tuple[dict[str, str], Checker]:
    """Run the checker; return {"bucket/key (ref)": reason} for every broken manifest."""
    found: dict[str, str] = {}
    with VerdictSet(Path(tempfile.mkdtemp(dir=s.root)) / "verdicts.sqlite") as verdicts:  # fresh per run
        checker = Checker(s.meta, s.backend, s.kek, s.identities, s.pool, verdicts, **kwargs)

        def on_broken(b: Broken) -> None:
            assert str(b.subject) not in found
            found[str(b.subject)] = b.reason

        await checker.run(on_broken)
    return found, checker


def blocks(n: int, size: int = 8 * KiB) -> list[bytes]:
    return [os.urandom(size) for _ in range(n)]


def flip_byte(s: Stores, loc: ChunkLocation, at: int) -> None:
    path = s.backend.root / pack_blob_name(loc.pack_id)
    with open(path, "r+b") as fh:
        fh.seek(loc.offset + at)
        byte = fh.read(1)
        fh.seek(loc.offset + at)
        fh.write(bytes([byte[0] ^ 0x01]))


# -- the checker ---------------------------------------------------------------------------


async def test_clean_store_verifies_each_shared_chunk_once(stores: Stores) -> None:
    shared = blocks(3)
    await stores.put("alice-b", "one", shared)
    await stores.put("alice-b", "two", shared)  # dedups: the same chunks
    await stores.put("alice-b", "three", [*shared, *blocks(1)])
    found, checker = await fsck(stores)
    assert found == {}
    assert checker.report.manifests == 3 and checker.report.broken == 0
    assert checker.report.chunks == 4  # 3 shared + 1 own, each read once


async def test_flipped_byte_names_every_object_sharing_the_chunk(stores: Stores) -> None:
    shared = blocks(2)
    await stores.put("alice-b", "a", shared)
    await stores.put("alice-b", "b", [*blocks(1), shared[1]])  # shares one chunk with "a"
    await stores.put("alice-b", "c", [shared[0], *blocks(1)])  # shares the other one
    bad_id = chunk_id(await stores.key("alice"), shared[1])
    await stores.put("bob-b", "a", shared)  # bob's chunks have other ids, in other packs
    loc = (await stores.meta.lookup_chunks([bad_id]))[bad_id]
    flip_byte(stores, loc, 48 + 12 + 5)  # inside the ciphertext, past the record header and nonce
    found, checker = await fsck(stores)
    assert set(found) == {"alice-b/a (null)", "alice-b/b (null)"}
    assert all(bad_id.hex() in r and "authentication" in r for r in found.values())
    assert checker.report.bad_chunks == 1


async def test_unfinished_multipart_parts_are_checked(stores: Stores) -> None:
    data = blocks(2)
    key = await stores.key("alice")
    staged = await stores.write_pack(data, key)
    upload = MultipartUpload("up1", "alice-b", "big", 1.0, "alice", "x/y", {}, {}, None, None)
    await stores.meta.create_upload(upload)
    manifest = Manifest(tuple(chunk_id(key, c) for c in data), tuple(len(c) for c in data))
    await stores.meta.put_part("up1", Part(3, manifest.size, "e" * 32, 1.0, manifest), staged)
    assert (await fsck(stores))[0] == {}
    os.remove(stores.backend.root / pack_blob_name(staged.packs[0].pack_id))
    found, _ = await fsck(stores)
    assert list(found) == ["alice-b/big (upload up1 part 3)"]
    assert "missing from the backend" in found["alice-b/big (upload up1 part 3)"]


async def test_each_kind_of_damage_has_its_reason(stores: Stores) -> None:
    for name in ("no-row", "no-pack-row", "no-blob", "foreign", "fine"):
        await stores.put("alice-b", name, blocks(1))
    alice = await stores.key("alice")

    async def first_chunk(name: str) -> bytes:
        return (await stores.meta.get_object("alice-b", name)).manifest.chunk_ids[0]  # type: ignore[union-attr]

    stores.sql("DELETE FROM chunks WHERE chunk_id=?", await first_chunk("no-row"))
    cid = await first_chunk("no-pack-row")
    stores.sql("DELETE FROM packs WHERE pack_id=?", (await stores.meta.lookup_chunks([cid]))[cid].pack_id)
    cid = await first_chunk("no-blob")
    os.remove(stores.backend.root / pack_blob_name((await stores.meta.lookup_chunks([cid]))[cid].pack_id))
    # A writer bug: a chunk named with another tenant's key, listed in alice's bucket.
    data = os.urandom(4 * KiB)
    bob_staged = await stores.write_pack([data], await stores.key("bob"))
    bob_id = bob_staged.chunks[0].chunk_id
    assert bob_id != chunk_id(alice, data)
    version = ObjectVersion(
        "alice-b", "foreign", "null", len(data), "e" * 32, 1.0, Manifest((bob_id,), (len(data),))
    )
    await stores.meta.put_object(version, bob_staged)
    found, _ = await fsck(stores)
    assert set(found) == {f"alice-b/{n} (null)" for n in ("no-row", "no-pack-row", "no-blob", "foreign")}
    assert "not in the chunk index" in found["alice-b/no-row (null)"]
    assert "not in the metadata store" in found["alice-b/no-pack-row (null)"]
    assert "missing from the backend" in found["alice-b/no-blob (null)"]
    assert "does not hash to the chunk id" in found["alice-b/foreign (null)"]


async def test_small_runs_still_read_every_record(stores: Stores) -> None:
    await stores.put("alice-b", "many", blocks(20, 2 * KiB))
    found, checker = await fsck(stores, run_bytes=5 * KiB)  # two records per ranged read
    assert found == {} and checker.report.chunks == 20


# -- inline manifests ----------------------------------------------------------------------


async def test_inline_records_are_checked_and_a_flipped_byte_names_that_object(stores: Stores) -> None:
    for i in range(3):
        await stores.put_inline("alice-b", f"tiny-{i}", os.urandom(100 + i))
    await stores.put_inline("alice-b", "text", b"compressible " * 300)
    await stores.put_inline("bob-b", "tiny", os.urandom(16 * KiB))
    await stores.put("alice-b", "packed", blocks(2))
    found, checker = await fsck(stores)
    assert found == {}
    assert checker.report.inline == 5 and checker.report.chunks == 2  # inline chunks are in no pack
    assert checker.inline_deks.unwrapped == 1  # one shared DEK, unwrapped once
    assert await stores.meta.lookup_chunks([(await _ids(stores, "alice-b", "tiny-1"))[0]]) == {}

    stores.flip_inline_byte("alice-b", "tiny-1", 48 + 12 + 3)  # inside the ciphertext
    found, checker = await fsck(stores)
    cid = (await _ids(stores, "alice-b", "tiny-1"))[0]
    assert found == {
        "alice-b/tiny-1 (null)": f"chunk {cid.hex()} (inline): record failed authentication (AES-GCM tag)"
    }
    assert (checker.report.broken, checker.report.bad_chunks) == (1, 1)


async def test_each_kind_of_inline_damage_has_its_reason(stores: Stores) -> None:
    good = await stores.put_inline("alice-b", "good", os.urandom(3000))
    await stores.put_inline("bob-b", "foreign", os.urandom(500), sealed_for="alice")  # a writer bug
    assert good.inline is not None
    lost_kek = WrappedKey(stores.kek.kek_id, 9, good.inline.wrapped_dek.blob)  # no such KEK version
    manifest = Manifest(good.chunk_ids, good.lengths, InlineRecord(lost_kek, good.inline.record))
    version = ObjectVersion("alice-b", "lost-dek", "null", manifest.size, "e" * 32, 1.0, manifest)
    await stores.meta.put_object(version, StagedData([], []))
    stores.flip_inline_byte("alice-b", "good", 0)  # the record magic: malformed
    # The same plaintext stored inline and in a pack has one chunk id; damage in the pack
    # names only the object stored there.
    twin = os.urandom(2000)
    await stores.put_inline("alice-b", "twin-inline", twin)
    await stores.put("alice-b", "twin-packed", [twin])
    cid = chunk_id(await stores.key("alice"), twin)
    flip_byte(stores, (await stores.meta.lookup_chunks([cid]))[cid], 48 + 12 + 5)
    found, _ = await fsck(stores)
    broken = {f"alice-b/{k} (null)" for k in ("good", "lost-dek", "twin-packed")} | {"bob-b/foreign (null)"}
    assert set(found) == broken
    assert "(inline): record is malformed" in found["alice-b/good (null)"]
    assert "(inline): the inline DEK (KEK version 9) does not unwrap" in found["alice-b/lost-dek (null)"]
    assert "(inline): plaintext does not hash to the chunk id" in found["bob-b/foreign (null)"]
    assert (
        found["alice-b/twin-packed (null)"]
        == f"chunk {cid.hex()}: record failed authentication (AES-GCM tag)"
    )


async def test_dek_cache_unwraps_each_dek_once_while_it_is_kept(stores: Stores) -> None:
    wraps = [await stores.kek.wrap(os.urandom(32)) for _ in range(3)]
    cache = DekCache(stores.kek, size=2)
    for w in [wraps[0], wraps[1], wraps[0], wraps[1]]:
        assert not isinstance(await cache.sealer(w), str)
    assert cache.unwrapped == 2
    await cache.sealer(wraps[2])  # evicts wraps[0], the least recently used
    await cache.sealer(wraps[1])
    await cache.sealer(wraps[0])
    assert cache.unwrapped == 4
    bad = WrappedKey(stores.kek.kek_id, 1, b"\x01" + bytes(60))
    assert "does not unwrap" in str(await cache.sealer(bad)) and "does not unwrap" in str(
        await cache.sealer(bad)
    )
    assert cache.unwrapped == 5  # a failure is remembered too


# -- the index rebuild ---------------------------------------------------------------------


async def test_rebuild_restores_deleted_rows_exactly_and_is_idempotent(stores: Stores) -> None:
    await stores.put("alice-b", "x", blocks(5))
    await stores.put("bob-b", "y", blocks(3))
    ids = [*await _ids(stores, "alice-b", "x"), *await _ids(stores, "bob-b", "y")]
    before = await stores.meta.lookup_chunks(ids)
    packs_before = {p: await stores.meta.get_pack(p) for p in {loc.pack_id for loc in before.values()}}
    stores.sql("DELETE FROM chunks")
    stores.sql("DELETE FROM packs")
    found, _ = await fsck(stores)
    assert len(found) == 2
    report = await rebuild_index(stores.backend, stores.meta)
    assert (report.packs_seen, report.packs_added, report.chunks_added, report.damaged) == (2, 2, 8, [])
    assert await stores.meta.lookup_chunks(ids) == before
    assert {p: await stores.meta.get_pack(p) for p in packs_before} == packs_before
    again = await rebuild_index(stores.backend, stores.meta)
    assert (again.packs_added, again.chunks_added) == (0, 0)
    assert (await fsck(stores))[0] == {}


async def test_rebuild_reports_a_damaged_trailer_and_goes_on(stores: Stores) -> None:
    await stores.put("alice-b", "x", blocks(2))
    await stores.put("alice-b", "y", blocks(2))
    x_locs = await stores.meta.lookup_chunks(await _ids(stores, "alice-b", "x"))
    (damaged,) = {loc.pack_id for loc in x_locs.values()}
    path = stores.backend.root / pack_blob_name(damaged)
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF  # inside the trailer's entry table: its checksum no longer matches
    path.write_bytes(bytes(data))
    (stores.backend.root / "packs" / "README").write_text("not a pack")  # ignored
    stores.sql("DELETE FROM chunks")
    report = await rebuild_index(stores.backend, stores.meta)
    assert [name for name, _ in report.damaged] == [pack_blob_name(damaged)]
    assert "checksum" in report.damaged[0][1]
    assert report.chunks_added == 2  # y's
    assert len(await stores.meta.lookup_chunks(await _ids(stores, "alice-b", "y"))) == 2


async def test_read_pack_index_handles_trailers_longer_than_the_first_tail_read(stores: Stores) -> None:
    staged = await stores.write_pack(blocks(1400, 100), await stores.key("alice"))  # 73 KB trailer
    got = await read_pack_index(stores.backend, staged.packs[0].pack_id)
    assert got.packs == staged.packs
    assert [(c.chunk_id, c.location) for c in got.chunks] == [(c.chunk_id, c.location) for c in staged.chunks]


async def _ids(s: Stores, bucket: str, key: str) -> list[bytes]:
    version = await s.meta.get_object(bucket, key)
    assert version is not None
    return list(version.manifest.chunk_ids)


# -- store scans and aggregates ------------------------------------------------------------


async def test_scans_page_through_everything_in_order(stores: Stores) -> None:
    m = Manifest((), ())
    for key in ("k3", "k1", "k2"):
        await stores.meta.put_object(ObjectVersion("bob-b", key, "null", 0, "e", 1.0, m), StagedData([], []))
    await stores.meta.put_object(
        ObjectVersion("alice-b", "k1", "v2", 0, "e", 1.0, m, delete_marker=True), StagedData([], [])
    )
    got: list[tuple[str, str, str]] = []
    after = None
    while page := await stores.meta.scan_versions(after, 2):
        got += [(v.bucket, v.key, v.version_id) for v in page]
        after = got[-1]
    assert got == [
        ("alice-b", "k1", "v2"),
        ("bob-b", "k1", "null"),
        ("bob-b", "k2", "null"),
        ("bob-b", "k3", "null"),
    ]
    for uid in ("u2", "u1"):
        await stores.meta.create_upload(
            MultipartUpload(uid, "bob-b", "mp", 1.0, "bob", "x", {}, {}, None, None)
        )
        for n in (2, 1):
            await stores.meta.put_part(uid, Part(n, 5, "e", 1.0, m), StagedData([], []))
    parts = await stores.meta.scan_parts(None, 3)
    assert [(u.upload_id, p.part_number) for u, p in parts] == [("u1", 1), ("u1", 2), ("u2", 1)]
    rest = await stores.meta.scan_parts(("u1", 2), 3)
    assert [(u.upload_id, u.owner, p.part_number) for u, p in rest] == [("u2", "bob", 1), ("u2", "bob", 2)]


async def test_storage_stats_counts_logical_unique_and_stored_bytes(stores: Stores) -> None:
    shared = [b"a" * 50_000, os.urandom(20_000)]
    await stores.put("alice-b", "one", shared)
    await stores.put("alice-b", "two", shared)
    await stores.meta.put_object(
        ObjectVersion("alice-b", "two", "dm", 0, "", 2.0, Manifest((), ()), delete_marker=True),
        StagedData([], []),
    )
    s = summarize(await stores.meta.storage_stats())
    assert (s["objects"], s["versions"], s["delete_markers"]) == (1, 2, 1)
    assert s["logical_bytes"] == 140_000 and s["unique_bytes"] == 70_000 and s["unique_chunks"] == 2
    assert s["dedup_ratio"] == 2.0
    assert s["stored_bytes"] < 70_000 and s["compression_ratio"] > 2  # the "a" run compresses
    assert s["physical_bytes"] > s["stored_bytes"] and s["packs"] == 1
    assert s["bytes_by_tier"] == {"STANDARD": 140_000}
    assert (s["inline_versions"], s["inline_bytes"]) == (0, 0) and s["physical_bytes"] == s["pack_bytes"]


async def test_storage_stats_count_inline_objects_in_unique_stored_and_physical_bytes(stores: Stores) -> None:
    await stores.put("alice-b", "packed", [os.urandom(20_000)])
    tiny = [await stores.put_inline("alice-b", f"t{i}", os.urandom(1000)) for i in range(3)]
    await stores.put_inline("alice-b", "text", b"a" * 10_000)  # compresses
    raw = await stores.meta.storage_stats()
    inline_bytes = sum(len(m.encode()) for m in tiny) + len(
        (await stores.meta.get_object("alice-b", "text")).manifest.encode()  # type: ignore[union-attr]
    )
    assert (raw.inline_versions, raw.inline_plain_bytes, raw.inline_bytes) == (4, 13_000, inline_bytes)
    s = summarize(raw)
    assert s["logical_bytes"] == 33_000 and s["unique_chunks"] == 1
    assert s["unique_bytes"] == 33_000 and s["dedup_ratio"] == 1.0  # inline data is not deduplicated
    assert s["inline_versions"] == 4 and s["inline_bytes"] == inline_bytes
    assert s["stored_bytes"] == raw.chunk_stored_bytes + inline_bytes
    assert s["physical_bytes"] == raw.pack_bytes + inline_bytes == s["pack_bytes"] + s["inline_bytes"]
    assert inline_bytes < 3 * 1000 + 10_000  # the text compressed more than the overheads cost


# -- pure helpers --------------------------------------------------------------------------


def _loc(offset: int, length: int, pack: str = "p") -> tuple[bytes, ChunkLocation]:
    return bytes([offset % 256]) * 32, ChunkLocation(pack, offset, length, length, 0)


def test_plan_runs_groups_back_to_back_records_up_to_the_limit() -> None:
    items = [_loc(300, 100), _loc(100, 100), _loc(200, 100), _loc(600, 50), _loc(650, 500)]
    runs = plan_runs(items, run_bytes=250)
    assert [[loc.offset for _, loc in run] for run in runs] == [[100, 200], [300], [600], [650]]
    assert plan_runs([], 10) == []


def test_first_problem_counts_bad_references() -> None:
    a, b = b"a" * 32, b"b" * 32
    m = Manifest((a, b, a), (1, 1, 1))
    assert first_problem(m, {}) is None
    assert first_problem(m, {a: "gone"}) == (2, f"chunk {a.hex()}: gone")


def test_pack_id_of_accepts_only_pack_blob_names() -> None:
    assert pack_id_of(pack_blob_name("ab12cd")) == "ab12cd"
    for name in ("packs/ab/ab12.tmp", "packs/zz/ab12cd.pack", "other/ab12cd.pack", "packs/ab/.pack"):
        assert pack_id_of(name) is None


def test_verdict_set_remembers_per_tenant(tmp_path: Path) -> None:
    with VerdictSet(tmp_path / "v.sqlite") as v:
        ids = [i.to_bytes(32, "big") for i in range(700)]  # more than one IN (...) batch
        v.add("alice", {c: (None if i % 2 else "bad") for i, c in enumerate(ids)})
        known = v.known("alice", [*ids, b"z" * 32])
        assert len(known) == 700 and known[ids[0]] == "bad" and known[ids[1]] is None
        assert v.known("bob", ids) == {}


def test_progress_lines() -> None:
    assert (
        render("fsck", 5, 20, "manifests", "1 broken", 65.0) == "fsck: 5/20 manifests (25%), 1 broken [1:05]"
    )
    assert render("gc", 1234, None, "", "", 0.0) == "gc: 1,234 [0:00]"
    assert (human_bytes(512), human_bytes(1536), human_bytes(3 * 1024**3)) == ("512 B", "1.5 KiB", "3.0 GiB")
    out = io.StringIO()  # not a terminal: plain lines, rate-limited
    clock = iter([0.0, 1.0, 11.0, 11.0, 12.0]).__next__  # start, update, update + draw, close
    p = Progress("job", 10, stream=out, clock=clock)
    p.update(1)  # t=1: too soon
    p.update(2)  # t=11: drawn
    p.write("a message")
    p.close()  # t=12
    assert out.getvalue().splitlines() == ["job: 3/10 (30%) [0:11]", "a message", "job: 3/10 (30%) [0:12]"]


def test_new_dedup_keys_name_the_same_data_differently() -> None:
    data = b"x" * 100
    assert chunk_id(new_dedup_key(), data) != chunk_id(new_dedup_key(), data)
