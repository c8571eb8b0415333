"""The MaintenanceStore contract (what gc, repack and the key jobs need), for every
implementation (``sqlite``, ``pg4``): keyset scans of the chunk index and of packs,
condemn / revive / sweep, retiring, deleting and tombstoning packs, repointing chunk rows,
re-wrapping keys, scanning inline manifests and replacing a manifest by compare-and-set,
resumable job state; and the commit-time check of every commit that makes
a manifest visible: a swept chunk or a deleted pack fails it with a retryable ``SlowDown``
and nothing is committed, a condemned chunk and a retired pack are revived by it, and dedup
lookups (``live_only``) treat condemned chunks as misses."""

from __future__ import annotations

import math
import os
import time
from typing import cast

import pytest

from crypto.kek import WrappedKey
from dedup.manifest import InlineRecord, Manifest
from dedup.pack import ChunkLocation
from gateway.meta.models import (
    AccessKey,
    Bucket,
    ChunkMove,
    NewChunk,
    ObjectVersion,
    PackRecord,
    Part,
    StagedData,
)
from gateway.meta.store import MaintenanceStore, MetadataStore
from gateway.s3.errors import S3Error

from .test_metadata_store import EMPTY, _upload

LENGTH = 50  # record bytes of every chunk row these tests write


@pytest.fixture
def meta(store: MetadataStore) -> MaintenanceStore:
    return cast(MaintenanceStore, store)


def _ids(n: int) -> list[bytes]:
    return [os.urandom(32) for _ in range(n)]


def _pack(pack_id: str, size: int = 1000, version: int = 1) -> PackRecord:
    return PackRecord(pack_id, WrappedKey("local", version, pack_id.encode() * 4), size)


def _rows(pack_id: str, ids: list[bytes]) -> list[NewChunk]:
    """Chunk rows in ``pack_id``, one record after the other."""
    return [NewChunk(c, ChunkLocation(pack_id, 10 + i * LENGTH, LENGTH, 40, 1)) for i, c in enumerate(ids)]


def _object(key: str, ids: list[bytes]) -> ObjectVersion:
    manifest = Manifest(tuple(ids), tuple(40 for _ in ids))
    return ObjectVersion("bkt", key, "null", 40 * len(ids), "e" * 32, 1.0, manifest)


def _part(ids: list[bytes]) -> Part:
    return Part(1, 40 * len(ids), "p" * 32, 2.0, Manifest(tuple(ids), tuple(40 for _ in ids)))


async def _chunks(meta: MaintenanceStore) -> dict[bytes, float | None]:
    """Every chunk row's condemned_at, paging through scan_chunks."""
    found: dict[bytes, float | None] = {}
    after: bytes | None = None
    while page := await meta.scan_chunks(after, 3):
        found.update((c.chunk_id, c.condemned_at) for c in page)
        after = page[-1].chunk_id
    return found


async def _events(meta: MaintenanceStore) -> list[str]:
    events = [e for s in range(await meta.outbox_shards()) for e in await meta.read_outbox(0, 1000, s)]
    return [f"{e.body['eventName']} {e.body['key']}" for e in events]


# -- the chunk index -------------------------------------------------------------------------
async def test_scan_chunks_pages_every_row_in_chunk_id_order(meta: MaintenanceStore) -> None:
    ids = _ids(40)
    before = time.time()
    await meta.restore_index(
        StagedData([_pack("pa"), _pack("pb")], _rows("pa", ids[:20]) + _rows("pb", ids[20:]))
    )
    pages, after = [], None
    while page := await meta.scan_chunks(after, 7):
        assert len(page) <= 7
        pages.append(page)
        after = page[-1].chunk_id
    rows = [c for page in pages for c in page]
    assert [c.chunk_id for c in rows] == sorted(ids)
    assert len(pages) == math.ceil(40 / 7)
    by_id = {c.chunk_id: c for c in rows}
    assert by_id[ids[0]].pack_id == "pa" and by_id[ids[39]].pack_id == "pb"
    assert all(c.length == LENGTH and c.condemned_at is None and c.created >= before - 1 for c in rows)
    assert await meta.scan_chunks(max(ids), 10) == []


async def test_condemn_revive_and_sweep(meta: MaintenanceStore) -> None:
    ids = sorted(_ids(6))
    await meta.restore_index(StagedData([_pack("pc")], _rows("pc", ids)))
    assert await meta.condemn_chunks(ids[:4], 100.0) == 4
    assert await meta.condemn_chunks(ids[:4], 200.0) == 0  # the first condemnation counts
    assert await _chunks(meta) == {**dict.fromkeys(ids[:4], 100.0), **dict.fromkeys(ids[4:])}
    assert await meta.revive_chunks([ids[0], ids[5]]) == 1
    # dedup lookups miss condemned chunks; reads (and fsck) still find them
    live = await meta.lookup_chunks(ids, live_only=True)
    assert set(live) == {ids[0], ids[4], ids[5]}
    assert set(await meta.lookup_chunks(ids)) == set(ids)
    assert await meta.sweep_chunks(ids, condemned_before=100.0) == (0, 0)  # not condemned before 100
    assert await meta.sweep_chunks(ids, condemned_before=150.0) == (3, 3 * LENGTH)
    assert set(await _chunks(meta)) == {ids[0], ids[4], ids[5]}
    assert await meta.sweep_chunks(ids, condemned_before=math.inf) == (0, 0)  # live rows stay
    assert await meta.condemn_chunks([], 1.0) == 0 and await meta.sweep_chunks([], 1.0) == (0, 0)


# -- the commit-time check -------------------------------------------------------------------
async def test_a_commit_naming_a_swept_chunk_fails_and_commits_nothing(meta: MaintenanceStore) -> None:
    gone, kept = _ids(1), _ids(8)  # several live chunks, on several shards
    await meta.restore_index(StagedData([_pack("ps")], _rows("ps", gone + kept)))
    await meta.condemn_chunks(gone, 1.0)
    assert await meta.sweep_chunks(gone, 2.0) == (1, LENGTH)
    for key in ("put", "copy"):  # a copy commits an existing manifest with no staged data
        with pytest.raises(S3Error) as err:
            await meta.put_object(_object(key, kept + gone), EMPTY)
        assert (err.value.code, err.value.status) == ("SlowDown", 503)
        assert await meta.get_object("bkt", key) is None
    await meta.create_upload(_upload("u1", "mp"))
    with pytest.raises(S3Error) as err:
        await meta.put_part("u1", _part(gone + kept), EMPTY)
    assert err.value.code == "SlowDown"
    assert await meta.list_parts("u1", 0, 10) == []
    assert await _events(meta) == []
    assert set(await meta.lookup_chunks(kept, live_only=True)) == set(kept)  # untouched
    await meta.put_object(_object("fine", kept), EMPTY)  # the live chunks alone commit
    assert (await meta.get_object("bkt", "fine")) == _object("fine", kept)


async def test_a_commit_revives_the_condemned_chunks_it_names(meta: MaintenanceStore) -> None:
    reused, stored_again, parted = _ids(3), _ids(2), _ids(2)
    await meta.restore_index(StagedData([_pack("pr")], _rows("pr", reused + stored_again + parted)))
    every = reused + stored_again + parted
    assert await meta.condemn_chunks(every, 5.0) == 7
    await meta.put_object(_object("dedup", reused), EMPTY)
    # an upload whose lookup missed the condemned rows stores the chunks again (staged)
    again = StagedData([_pack("pn")], _rows("pn", stored_again))
    await meta.put_object(_object("again", stored_again), again)
    await meta.create_upload(_upload("u2", "mp"))
    await meta.put_part("u2", _part(parted), EMPTY)
    assert await _chunks(meta) == dict.fromkeys(every)
    assert await meta.sweep_chunks(every, math.inf) == (0, 0)
    assert set(await meta.lookup_chunks(every, live_only=True)) == set(every)


async def test_commits_into_retired_deleted_and_orphaned_packs(meta: MaintenanceStore) -> None:
    # a pack committed first with none of its chunks (the first request of a group commit)
    await meta.put_object(_object("empty", []), StagedData([_pack("pk-retired")], []))
    assert await meta.retire_packs(["pk-retired"], 10.0) == ["pk-retired"]
    late = _ids(1)
    await meta.put_object(_object("late", late), StagedData([_pack("pk-retired")], _rows("pk-retired", late)))
    (usage,) = [u for u in await meta.scan_pack_usage(None, 10) if u.pack.pack_id == "pk-retired"]
    assert usage.retired_at is None and (usage.live_chunks, usage.live_bytes) == (1, LENGTH)

    await meta.put_object(_object("empty2", []), StagedData([_pack("pk-deleted", 777)], []))
    assert await meta.retire_packs(["pk-deleted"], 10.0) == ["pk-deleted"]
    assert await meta.delete_retired_packs(11.0, 10) == [_pack("pk-deleted", 777)]
    assert await meta.get_pack("pk-deleted") is None
    assert await meta.tombstone_orphans(["pk-orphan", "pk-retired"], 20.0) == ["pk-orphan"]
    for pack_id in ("pk-deleted", "pk-orphan"):
        ids = _ids(2)
        with pytest.raises(S3Error) as err:
            await meta.put_object(_object(pack_id, ids), StagedData([_pack(pack_id)], _rows(pack_id, ids)))
        assert err.value.code == "SlowDown"
        assert await meta.get_object("bkt", pack_id) is None
        assert await meta.lookup_chunks(ids) == {}  # nothing indexed into the deleted pack
        assert await meta.get_pack(pack_id) is None
    assert await meta.prune_tombstones(15.0) == 0  # both tombstoned after 15
    assert await meta.prune_tombstones(time.time() + 1) == 2


# -- packs -----------------------------------------------------------------------------------
async def test_pack_usage_pack_chunks_retire_and_delete(meta: MaintenanceStore) -> None:
    ids = _ids(5)
    await meta.restore_index(StagedData([_pack("p1"), _pack("p2", 500)], _rows("p1", ids)))
    usage = await meta.scan_pack_usage(None, 10)
    assert [(u.pack, u.live_chunks, u.live_bytes, u.retired_at) for u in usage] == [
        (_pack("p1"), 5, 5 * LENGTH, None),
        (_pack("p2", 500), 0, 0, None),
    ]
    assert [u.pack.pack_id for u in await meta.scan_pack_usage("p1", 1)] == ["p2"]
    rows = await meta.pack_chunks("p1", -1, 3)
    assert rows == _rows("p1", ids)[:3]  # by offset, over every shard
    assert await meta.pack_chunks("p1", rows[-1].location.offset, 10) == _rows("p1", ids)[3:]
    assert await meta.retire_packs(["p1", "p2"], 5.0) == ["p2"]  # p1 has chunk rows
    assert await meta.retire_packs(["p2"], 6.0) == []  # already retired
    assert await meta.delete_retired_packs(4.0, 10) == []  # retired at 5, not before 4
    assert await meta.delete_retired_packs(6.0, 10) == [_pack("p2", 500)]
    assert await meta.delete_retired_packs(math.inf, 10) == []
    assert [u.pack.pack_id for u in await meta.scan_pack_usage(None, 10)] == ["p1"]


async def test_a_retired_pack_that_has_chunk_rows_is_never_deleted(meta: MaintenanceStore) -> None:
    await meta.restore_index(StagedData([_pack("px")], []))
    assert await meta.retire_packs(["px"], 1.0) == ["px"]
    ids = _ids(3)
    await meta.restore_index(StagedData([], _rows("px", ids)))  # rows arrive after the retirement
    assert await meta.delete_retired_packs(math.inf, 10) == []
    assert await meta.get_pack("px") == _pack("px")
    assert set(await meta.lookup_chunks(ids)) == set(ids)


async def test_repoint_moves_only_rows_still_at_the_copied_place(meta: MaintenanceStore) -> None:
    ids = _ids(4)
    await meta.restore_index(StagedData([_pack("old")], _rows("old", ids)))
    new = [ChunkLocation("new", 100 + i, LENGTH, 40, 0) for i in range(4)]
    moves = [ChunkMove(c, "old", loc.offset, new[i]) for i, (c, loc) in enumerate(
        (r.chunk_id, r.location) for r in _rows("old", ids))]  # fmt: skip
    stale = ChunkMove(ids[3], "old", 9999, new[3])  # the row is not there any more
    assert await meta.repoint_chunks(_pack("new"), [*moves[:3], stale]) == 3
    assert await meta.get_pack("new") == _pack("new")
    found = await meta.lookup_chunks(ids)
    assert [found[c] for c in ids[:3]] == new[:3]
    assert found[ids[3]] == _rows("old", ids)[3].location
    assert await meta.retire_packs(["old"], 1.0) == []  # still holds ids[3]


# -- keys and jobs ---------------------------------------------------------------------------
async def test_wrapped_keys_scan_and_rewrap(meta: MaintenanceStore) -> None:
    packs = [_pack(f"w{i:02d}") for i in range(10)]
    await meta.restore_index(StagedData([*packs, _pack("w-new", version=2)], []))
    for name in ("alice", "bob"):
        await meta.create_user(name, WrappedKey("local", 1, name.encode() * 8))
        await meta.put_access_key(AccessKey(f"AK{name}", name, WrappedKey("local", 1, b"s" * 40)))
    found, after = [], None
    while page := await meta.scan_wrapped_keys("pack", "local", 2, after, 4):
        found += page
        after = page[-1][0]
    assert found == [(p.pack_id, p.wrapped_dek) for p in packs]  # by id, every shard, not w-new
    assert await meta.scan_wrapped_keys("pack", "other-kek", 2, None, 10) == []
    new = WrappedKey("local", 2, b"n" * 60)
    changes = [(pid, old, new) for pid, old in found]
    changes[0] = (found[0][0], WrappedKey("local", 1, b"stale"), new)  # someone changed it meanwhile
    assert await meta.rewrap_keys("pack", changes) == 9
    assert [pid for pid, _ in await meta.scan_wrapped_keys("pack", "local", 2, None, 20)] == ["w00"]
    assert (await meta.get_pack("w05")) == PackRecord("w05", new, 1000)
    users = await meta.scan_wrapped_keys("user", "local", 2, None, 10)
    assert [u for u, _ in users] == ["alice", "bob"]
    assert await meta.rewrap_keys("user", [(u, old, new) for u, old in users]) == 2
    bob = await meta.get_user("bob")
    assert bob is not None and bob.wrapped_dedup_key == new
    keys = await meta.scan_wrapped_keys("access_key", "local", 2, "AKalice", 10)
    assert [k for k, _ in keys] == ["AKbob"]
    assert await meta.rewrap_keys("access_key", [(k, old, new) for k, old in keys]) == 1
    assert (await meta.get_access_key("AKbob")) == AccessKey("AKbob", "bob", new)
    assert await meta.rewrap_keys("access_key", []) == 0


async def test_job_state_roundtrip(meta: MaintenanceStore) -> None:
    assert await meta.get_job("keys-rotate") is None
    await meta.put_job("keys-rotate", {"version": 2, "added": 1.5})
    await meta.put_job("keys-reencrypt", {"started": 3.0})
    await meta.put_job("keys-rotate", {"version": 3, "added": 2.5})
    assert await meta.get_job("keys-rotate") == {"version": 3, "added": 2.5}
    await meta.put_job("keys-rotate", None)
    assert await meta.get_job("keys-rotate") is None
    assert await meta.get_job("keys-reencrypt") == {"started": 3.0}


async def test_settle_commits_returns_when_nothing_is_in_flight(meta: MaintenanceStore) -> None:
    await meta.put_object(_object("k", []), EMPTY)
    await meta.settle_commits()


async def test_leases_have_one_holder_until_released_or_expired(meta: MaintenanceStore) -> None:
    assert await meta.claim_lease("maintenance", "a", 30)
    assert not await meta.claim_lease("maintenance", "b", 30)  # held by a
    assert await meta.claim_lease("maintenance", "a", 30)  # a renews
    assert await meta.claim_lease("other", "b", 30)  # leases are independent
    await meta.release_lease("maintenance", "b")  # not b's to release
    assert not await meta.claim_lease("maintenance", "b", 30)
    await meta.release_lease("maintenance", "a")
    assert await meta.claim_lease("maintenance", "b", 0.2)
    time.sleep(0.4)  # b stops renewing: its lease expires
    assert await meta.claim_lease("maintenance", "c", 30)
    assert not await meta.claim_lease("maintenance", "b", 30)


# -- inline manifests ------------------------------------------------------------------------
def _inline(bucket: str, key: str, version_id: str, wrapped: WrappedKey, record: bytes) -> ObjectVersion:
    manifest = Manifest((os.urandom(32),), (len(record) - 20,), InlineRecord(wrapped, record))
    return ObjectVersion(bucket, key, version_id, manifest.size, "e" * 32, 1.0, manifest)


async def _scan_inline(meta: MaintenanceStore, limit: int) -> list[ObjectVersion]:
    found: list[ObjectVersion] = []
    after: tuple[str, str, str] | None = None
    while page := await meta.scan_inline_versions(after, limit):
        assert len(page) <= limit
        found += page
        after = (page[-1].bucket, page[-1].key, page[-1].version_id)
    return found


async def test_inline_versions_scan_replace_and_stats(meta: MaintenanceStore) -> None:
    w1, w2 = WrappedKey("local", 1, b"1" * 61), WrappedKey("local", 2, b"2" * 61)
    buckets = [f"in-{i}" for i in range(6)]  # spread over the shards
    for b in buckets:
        assert await meta.create_bucket(Bucket(b, "root", "us-east-1", 0.0))
    inline = [_inline(b, f"k{j}", "null", w1, os.urandom(60 + j)) for b in buckets for j in range(2)]
    for v in inline:
        await meta.put_object(v, EMPTY)
    ids = _ids(2)
    await meta.restore_index(StagedData([_pack("pi")], _rows("pi", ids)))
    await meta.put_object(_object("packed", ids), EMPTY)  # not inline: never scanned
    marker = ObjectVersion("in-0", "k0", "dm", 0, "", 2.0, Manifest((), ()), delete_marker=True)
    await meta.put_object(marker, EMPTY)  # the inline null version becomes noncurrent: still scanned
    got = await _scan_inline(meta, 5)  # pages over every shard
    assert [(v.bucket, v.key, v.version_id, v.manifest) for v in got] == [
        (v.bucket, v.key, v.version_id, v.manifest) for v in inline
    ]
    stats = await meta.storage_stats()
    assert stats.inline_versions == len(inline)
    assert stats.inline_plain_bytes == sum(v.size for v in inline)
    assert stats.inline_bytes == sum(len(v.manifest.encode()) for v in inline)

    first = inline[1]
    rewrapped = Manifest(first.manifest.chunk_ids, first.manifest.lengths, InlineRecord(w2, b"resealed" * 9))
    args = (first.bucket, first.key, first.version_id)
    assert await meta.replace_manifest(*args, first.manifest, rewrapped)
    assert (await meta.get_object(*args)) == ObjectVersion(
        first.bucket, first.key, "null", first.size, "e" * 32, 1.0, rewrapped
    )
    assert not await meta.replace_manifest(*args, first.manifest, rewrapped)  # no longer holds old
    assert (await meta.get_object(*args)).manifest == rewrapped  # type: ignore[union-attr]
    # a concurrent overwrite wins: the version now holds another manifest
    second = inline[2]
    newer = _inline(second.bucket, second.key, "null", w1, os.urandom(70))
    await meta.put_object(newer, EMPTY)
    stale = Manifest(second.manifest.chunk_ids, second.manifest.lengths, InlineRecord(w2, b"x" * 80))
    assert not await meta.replace_manifest(second.bucket, second.key, "null", second.manifest, stale)
    assert (await meta.get_object(second.bucket, second.key)).manifest == newer.manifest  # type: ignore[union-attr]
    # a delete wins too, and so does a missing bucket
    third = inline[3]
    await meta.delete_object(third.bucket, third.key, "null")
    assert not await meta.replace_manifest(third.bucket, third.key, "null", third.manifest, third.manifest)
    assert await meta.get_object(third.bucket, third.key, "null") is None
    assert not await meta.replace_manifest("no-bucket", "k", "null", third.manifest, third.manifest)
    # only how the data is sealed may change, never what it is
    other = Manifest((os.urandom(32),), first.manifest.lengths, InlineRecord(w2, b"r" * 80))
    with pytest.raises(ValueError):
        await meta.replace_manifest(*args, rewrapped, other)
    with pytest.raises(ValueError):
        await meta.replace_manifest(*args, rewrapped, Manifest(rewrapped.chunk_ids, rewrapped.lengths))
    assert (await meta.get_object(*args)).manifest == rewrapped  # type: ignore[union-attr]
    assert [
        v.manifest for v in await _scan_inline(meta, 100) if v.key == first.key and v.bucket == first.bucket
    ] == [rewrapped]
