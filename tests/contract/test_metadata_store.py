"""The metadata-store contract: every implementation (``sqlite``, ``pg4``) must pass every
test here. Covers users and keys, buckets and their configs, versioning (the "null" version,
history order, the latest flag, delete markers), listings (prefixes, markers, non-ASCII and
mixed-case keys in UTF-8 byte order), multipart, conditional writes (atomic, also across two
store instances on the same databases), the chunk index and packs, and the outbox."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os

import pytest

from crypto.kek import WrappedKey
from dedup.manifest import Manifest
from dedup.pack import ChunkLocation
from gateway.meta.models import (
    AccessKey,
    AuditRecord,
    Bucket,
    MultipartUpload,
    NewChunk,
    ObjectVersion,
    PackRecord,
    Part,
    StagedData,
    WriteCondition,
)
from gateway.meta.store import MetadataStore
from gateway.s3.errors import S3Error
from gateway.s3.handlers.listing import list_page

from .conftest import StoreOpener

WK = WrappedKey("local", 1, b"x" * 60)
EMPTY = StagedData([], [])
# Mixed case, Latin-1, a BMP character above the surrogate range and an astral one: UTF-8
# byte order (S3's) differs from both locale collation and UTF-16 order on these.
ODD_KEYS = [
    "B",
    "a",
    "a/b",
    "a/\u00e9",
    "Z\u00e9",
    "\u00e9t\u00e9",
    "\uff21",
    "\U0001f600",
    "a b",
    "a+b",
    "A",
]


def _version(
    key: str, version_id: str = "null", *, bucket: str = "bkt", etag: str = "e" * 32, marker: bool = False
) -> ObjectVersion:
    """A version whose manifest names no chunk (so it needs no chunk index rows)."""
    return ObjectVersion(bucket, key, version_id, 0 if marker else 3, etag, 1.0, Manifest((), ()),
                         delete_marker=marker)  # fmt: skip


def _staged(tag: int, pack: str) -> tuple[bytes, StagedData]:
    cid = bytes([tag]) * 32
    return cid, StagedData([PackRecord(pack, WK, 100)], [NewChunk(cid, ChunkLocation(pack, 10, 50, 40, 1))])


def _upload(upload_id: str, key: str, initiated: float = 1.0, bucket: str = "bkt") -> MultipartUpload:
    return MultipartUpload(upload_id, bucket, key, initiated, "root", "text/plain", {"cache-control": "x"},
                           {"m": "1"}, "CRC32", "COMPOSITE", {"t": "v"})  # fmt: skip


def _part(n: int, etag: str = "p" * 32) -> Part:
    return Part(n, 5, etag, 2.0, Manifest((), ()), {"algorithm": "CRC32", "value": "AA=="})


def _utf8_sorted(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: k.encode())


async def _all_outbox(store: MetadataStore) -> list[dict]:
    """Every outbox event of every shard, each shard's in seq order (checked)."""
    events: list[dict] = []
    for shard in range(await store.outbox_shards()):
        rows = await store.read_outbox(0, 10_000, shard)
        assert [r.seq for r in rows] == sorted({r.seq for r in rows})
        events += [r.body for r in rows]
    return events


# -- users and keys ---------------------------------------------------------------------
async def test_users_and_access_keys(store: MetadataStore) -> None:
    assert await store.get_user("alice") is None
    user = await store.create_user("alice", WK)
    assert await store.get_user("alice") == user
    assert not await store.has_access_key_for("alice")
    assert await store.get_access_key("AK1") is None
    await store.put_access_key(AccessKey("AK1", "alice", WK))
    assert await store.get_access_key("AK1") == AccessKey("AK1", "alice", WK)
    other = WrappedKey("local", 2, b"y" * 60)
    await store.put_access_key(AccessKey("AK1", "alice", other))  # replaces
    assert await store.get_access_key("AK1") == AccessKey("AK1", "alice", other)
    assert await store.has_access_key_for("alice")
    assert not await store.has_access_key_for("bob")


# -- buckets ----------------------------------------------------------------------------
async def test_bucket_create_is_exclusive_and_listed_by_owner(store: MetadataStore) -> None:
    assert not await store.create_bucket(Bucket("bkt", "other", "eu-west-1", 5.0))
    assert await store.get_bucket("bkt") == Bucket("bkt", "root", "us-east-1", 0.0)
    for name in ("zeta", "alpha", "mid-1", "mid.2"):
        assert await store.create_bucket(Bucket(name, "alice", "eu-west-1", 1.5))
    assert [b.name for b in await store.list_buckets("alice")] == ["alpha", "mid-1", "mid.2", "zeta"]
    assert await store.list_buckets("nobody") == []
    assert await store.get_bucket("missing") is None


async def test_bucket_create_races_have_one_winner_across_stores(open_store: StoreOpener) -> None:
    a, b = await open_store(), await open_store()
    results = await asyncio.gather(
        *(
            s.create_bucket(Bucket("contested", f"owner{i}", "us-east-1", 0.0))
            for i, s in enumerate([a, b] * 4)
        )
    )
    assert results.count(True) == 1
    winner = f"owner{results.index(True)}"
    assert (await b.get_bucket("contested")).owner == winner  # type: ignore[union-attr]


async def test_delete_bucket_refuses_when_not_empty_then_drops_everything(store: MetadataStore) -> None:
    await store.put_object(_version("k"), EMPTY)
    await store.create_upload(_upload("u1", "k"))
    await store.put_part("u1", _part(1), EMPTY)
    await store.put_bucket_config("bkt", "tagging", "t")
    with pytest.raises(S3Error) as err:
        await store.delete_bucket("bkt")
    assert err.value.code == "BucketNotEmpty"
    assert await store.get_bucket("bkt") is not None
    await store.delete_object("bkt", "k")
    await store.delete_bucket("bkt")
    assert await store.get_bucket("bkt") is None
    assert await store.list_buckets("root") == []
    await store.delete_bucket("bkt")  # already gone: nothing to do
    assert await store.create_bucket(Bucket("bkt", "alice", "us-east-1", 2.0))
    assert await store.get_bucket_config("bkt", "tagging") is None
    assert await store.get_upload("bkt", "u1") is None
    assert await store.list_parts("u1", 0, 10) == []
    assert await store.list_uploads("bkt", "", "", False, "", 10) == []


async def test_bucket_configs_roundtrip(store: MetadataStore) -> None:
    assert await store.get_bucket_config("bkt", "cors") is None
    await store.put_bucket_config("bkt", "cors", "<CORSConfiguration/>")
    await store.put_bucket_config("bkt", "versioning", "Enabled")
    assert await store.get_bucket_config("bkt", "cors") == "<CORSConfiguration/>"
    await store.put_bucket_config("bkt", "cors", "<CORSConfiguration>2</CORSConfiguration>")
    assert await store.get_bucket_config("bkt", "cors") == "<CORSConfiguration>2</CORSConfiguration>"
    await store.put_bucket_config("bkt", "cors", None)
    assert await store.get_bucket_config("bkt", "cors") is None
    assert await store.get_bucket_config("bkt", "versioning") == "Enabled"
    assert await store.get_bucket_config("missing", "cors") is None


# -- objects, chunk index, packs --------------------------------------------------------
async def test_put_get_delete_roundtrip_with_index(store: MetadataStore) -> None:
    cid, staged = _staged(7, "p1")
    v = ObjectVersion(
        "bkt", "a/b", "null", 40, "f" * 32, 5.0, Manifest((cid,), (40,)), "text/plain",
        {"cache-control": "no"}, {"x": "y\u00e9"},
        {"algorithm": "CRC32", "value": "AAAAAA==", "type": "FULL_OBJECT"}, 0, "STANDARD", tags={"t": "1"},
    )  # fmt: skip
    await store.put_object(v, staged)
    assert await store.get_object("bkt", "a/b") == v
    assert await store.get_object("bkt", "a/b", "null") == v
    assert await store.get_object("bkt", "a/b", "nope") is None
    assert await store.get_object("missing", "a/b") is None
    assert await store.lookup_chunks([cid, b"\0" * 32]) == {cid: ChunkLocation("p1", 10, 50, 40, 1)}
    assert await store.lookup_chunks([]) == {}
    assert await store.get_pack("p1") == PackRecord("p1", WK, 100)
    assert await store.get_pack("p-missing") is None
    # A second object that dedups against the same chunk and pack indexes nothing new.
    await store.put_object(_version("other"), staged)
    outcome = await store.delete_object("bkt", "a/b")
    assert outcome.existed and not outcome.delete_marker
    assert await store.get_object("bkt", "a/b") is None
    assert not (await store.delete_object("bkt", "a/b")).existed


async def test_put_into_missing_bucket_indexes_nothing(store: MetadataStore) -> None:
    cid, staged = _staged(5, "p2")
    with pytest.raises(S3Error) as err:
        await store.put_object(_version("k", bucket="nope"), staged)
    assert err.value.code == "NoSuchBucket"
    assert await store.lookup_chunks([cid]) == {}
    assert await store.get_pack("p2") is None


async def test_lookup_of_many_chunks_spanning_batches_and_shards(store: MetadataStore) -> None:
    ids = [i.to_bytes(2, "big") * 16 for i in range(1200)]
    staged = StagedData(
        [PackRecord(f"pk{i}", WK, 1000 + i) for i in range(12)],
        [NewChunk(c, ChunkLocation(f"pk{i % 12}", i, 7, 9, 0)) for i, c in enumerate(ids)],
    )
    await store.put_object(_version("big"), staged)
    found = await store.lookup_chunks([*ids, b"\xff" * 32])
    assert len(found) == 1200
    assert found[ids[1199]] == ChunkLocation(f"pk{1199 % 12}", 1199, 7, 9, 0)
    assert [await store.get_pack(f"pk{i}") for i in range(12)] == [
        PackRecord(f"pk{i}", WK, 1000 + i) for i in range(12)
    ]


async def test_null_version_is_replaced(store: MetadataStore) -> None:
    await store.put_object(_version("k", etag="1" * 32), EMPTY)
    await store.put_object(_version("k", etag="2" * 32), EMPTY)
    versions = await store.list_versions("bkt", "", "", False, "", 100)
    assert [(v.version_id, v.etag, v.is_latest) for v in versions] == [("null", "2" * 32, True)]


async def test_versioning_history_latest_flag_and_delete_markers(store: MetadataStore) -> None:
    await store.put_object(_version("k", "v1", etag="1" * 32), EMPTY)
    await store.put_object(_version("k", "v2", etag="2" * 32), EMPTY)
    marker = _version("k", "m3", marker=True)
    outcome = await store.delete_object("bkt", "k", marker=marker)
    assert (outcome.version_id, outcome.delete_marker, outcome.existed) == ("m3", True, True)
    latest = await store.get_object("bkt", "k")
    assert latest is not None and latest.delete_marker and latest.version_id == "m3"
    assert (await store.get_object("bkt", "k", "v1")).etag == "1" * 32  # type: ignore[union-attr]
    history = await store.list_versions("bkt", "", "", False, "", 100)
    assert [(v.version_id, v.is_latest, v.delete_marker) for v in history] == [
        ("m3", True, True), ("v2", False, False), ("v1", False, False),
    ]  # fmt: skip
    assert await store.list_objects("bkt", "", "", False, 100) == []
    # Removing the marker makes v2 current again; removing v2 makes v1 current.
    removed = await store.delete_object("bkt", "k", "m3")
    assert removed.existed and removed.delete_marker
    assert (await store.get_object("bkt", "k")).version_id == "v2"  # type: ignore[union-attr]
    await store.delete_object("bkt", "k", "v2")
    current = await store.get_object("bkt", "k")
    assert current is not None and current.version_id == "v1" and current.is_latest
    # Deleting a non-latest version leaves the latest alone.
    await store.put_object(_version("k", "v4"), EMPTY)
    await store.delete_object("bkt", "k", "v1")
    assert [v.version_id for v in await store.list_versions("bkt", "", "", False, "", 100)] == ["v4"]
    assert not (await store.delete_object("bkt", "k", "never")).existed


async def test_suspended_versioning_null_version_among_history(store: MetadataStore) -> None:
    await store.put_object(_version("k", "v1"), EMPTY)
    await store.put_object(_version("k", "null", etag="a" * 32), EMPTY)
    await store.put_object(_version("k", "v3"), EMPTY)
    await store.put_object(_version("k", "null", etag="b" * 32), EMPTY)  # replaces the older null
    history = await store.list_versions("bkt", "", "", False, "", 100)
    assert [(v.version_id, v.is_latest) for v in history] == [("null", True), ("v3", False), ("v1", False)]
    assert history[0].etag == "b" * 32
    # An unversioned delete removes the null version; v3 becomes current.
    outcome = await store.delete_object("bkt", "k")
    assert outcome.existed
    assert (await store.get_object("bkt", "k")).version_id == "v3"  # type: ignore[union-attr]


async def test_set_object_tags(store: MetadataStore) -> None:
    await store.put_object(_version("k", "v1"), EMPTY)
    await store.put_object(_version("k", "v2"), EMPTY)
    assert await store.set_object_tags("bkt", "k", None, {"a": "1"})
    assert await store.set_object_tags("bkt", "k", "v1", {"b": "2"})
    assert (await store.get_object("bkt", "k")).tags == {"a": "1"}  # type: ignore[union-attr]
    assert (await store.get_object("bkt", "k", "v1")).tags == {"b": "2"}  # type: ignore[union-attr]
    assert not await store.set_object_tags("bkt", "k", "nope", {"c": "3"})
    assert not await store.set_object_tags("bkt", "absent", None, {"c": "3"})
    await store.delete_object("bkt", "k", marker=_version("k", "m", marker=True))
    assert not await store.set_object_tags("bkt", "k", None, {"c": "3"})  # a delete marker is current


# -- listings ---------------------------------------------------------------------------
async def test_list_objects_in_utf8_byte_order_with_prefix_and_markers(store: MetadataStore) -> None:
    for k in ODD_KEYS:
        await store.put_object(_version(k), EMPTY)
    await store.delete_object("bkt", "a b", marker=_version("a b", "m", marker=True))
    live = _utf8_sorted([k for k in ODD_KEYS if k != "a b"])

    async def keys(prefix: str = "", after: str = "", inclusive: bool = False, limit: int = 100) -> list[str]:
        return [o.key for o in await store.list_objects("bkt", prefix, after, inclusive, limit)]

    assert await keys() == live
    assert await keys(limit=3) == live[:3]
    assert await keys(after="a") == [k for k in live if k.encode() > b"a"]
    assert await keys(after="a", inclusive=True) == [k for k in live if k.encode() >= b"a"]
    assert await keys(prefix="a/") == ["a/b", "a/\u00e9"]
    assert await keys(prefix="\u00e9") == ["\u00e9t\u00e9"]
    assert await keys(prefix="\U0001f600") == ["\U0001f600"]
    assert await keys(prefix="a", after="a+b") == ["a/b", "a/\u00e9"]
    assert await keys(prefix="x") == []
    listed = (await store.list_objects("bkt", "B", "", False, 1))[0]
    assert (listed.key, listed.size, listed.etag, listed.storage_class) == ("B", 3, "e" * 32, "STANDARD")


@pytest.mark.parametrize(("prefix", "delimiter"), [("", ""), ("", "/"), ("a", "/"), ("", "\u00e9")])
async def test_listing_pages_match_a_model(store: MetadataStore, prefix: str, delimiter: str) -> None:
    for k in ODD_KEYS:
        await store.put_object(_version(k), EMPTY)
    expected: list[str] = []
    for k in _utf8_sorted(ODD_KEYS):
        if k.startswith(prefix):
            i = k.find(delimiter, len(prefix)) if delimiter else -1
            entry = k[: i + len(delimiter)] if i >= 0 else k
            if not expected or expected[-1] != entry:
                expected.append(entry)
    for max_keys in (1, 2, 5):
        seen: list[str] = []
        after = ""
        for _ in itertools.count():
            page = await list_page(store, "bkt", prefix, delimiter, after, max_keys)
            seen += _utf8_sorted([o.key for o in page.items] + page.prefixes)
            if not page.truncated:
                break
            after = page.last  # type: ignore[assignment]
        assert seen == expected


async def test_list_versions_paging_by_key_and_version_marker(store: MetadataStore) -> None:
    for key in ("b", "\u00e9", "A"):
        for i in range(3):
            await store.put_object(_version(key, f"{key}-{i}"), EMPTY)
    everything = await store.list_versions("bkt", "", "", False, "", 100)
    assert [(v.key, v.version_id) for v in everything] == [
        (k, f"{k}-{i}") for k in ("A", "b", "\u00e9") for i in (2, 1, 0)
    ]
    assert [v.is_latest for v in everything] == [True, False, False] * 3
    after_marker = await store.list_versions("bkt", "", "b", False, "b-1", 100)
    assert [v.version_id for v in after_marker] == ["b-0", "\u00e9-2", "\u00e9-1", "\u00e9-0"]
    after_key = await store.list_versions("bkt", "", "b", False, "", 2)
    assert [v.version_id for v in after_key] == ["\u00e9-2", "\u00e9-1"]
    inclusive = await store.list_versions("bkt", "", "b", True, "", 100)
    assert [v.version_id for v in inclusive][:3] == ["b-2", "b-1", "b-0"]
    assert [v.key for v in await store.list_versions("bkt", "\u00e9", "", False, "", 100)] == ["\u00e9"] * 3


# -- multipart --------------------------------------------------------------------------
async def test_multipart_lifecycle(store: MetadataStore) -> None:
    up = _upload("up-1", "big")
    await store.create_upload(up)
    assert await store.get_upload("bkt", "up-1") == up
    assert await store.get_upload("other", "up-1") is None
    cid, staged = _staged(9, "mp-pack")
    await store.put_part("up-1", _part(2), staged)
    await store.put_part("up-1", _part(1), EMPTY)
    await store.put_part("up-1", _part(3), EMPTY)
    await store.put_part("up-1", _part(2, etag="q" * 32), EMPTY)  # a re-upload replaces the part
    assert await store.lookup_chunks([cid]) == {cid: ChunkLocation("mp-pack", 10, 50, 40, 1)}
    parts = await store.list_parts("up-1", 0, 100)
    assert [(p.part_number, p.etag) for p in parts] == [(1, "p" * 32), (2, "q" * 32), (3, "p" * 32)]
    assert parts[0] == _part(1)
    assert [p.part_number for p in await store.list_parts("up-1", 1, 1)] == [2]
    final = ObjectVersion("bkt", "big", "null", 15, "c" * 32 + "-3", 9.0, Manifest((cid,), (15,)), parts=3)
    assert await store.complete_upload("up-1", final)
    assert await store.get_object("bkt", "big") == final
    assert await store.get_upload("bkt", "up-1") is None
    assert await store.list_parts("up-1", 0, 100) == []
    assert not await store.complete_upload("up-1", final)
    # Abort, and parts for an upload that is gone.
    await store.create_upload(_upload("up-2", "big"))
    await store.put_part("up-2", _part(1), EMPTY)
    assert await store.abort_upload("up-2")
    assert not await store.abort_upload("up-2")
    assert await store.list_parts("up-2", 0, 100) == []
    cid2, staged2 = _staged(10, "orphan-pack")
    with pytest.raises(S3Error) as err:
        await store.put_part("up-2", _part(1), staged2)
    assert err.value.code == "NoSuchUpload"
    assert await store.lookup_chunks([cid2]) == {}
    assert await store.get_pack("orphan-pack") is None


async def test_parts_reach_an_upload_created_by_another_store(open_store: StoreOpener) -> None:
    a = await open_store()
    assert await a.create_bucket(Bucket("bkt", "root", "us-east-1", 0.0))
    b = await open_store()
    await a.create_upload(_upload("shared-up", "k"))
    await b.put_part("shared-up", _part(1), EMPTY)  # b never saw the upload: finds it
    assert [p.part_number for p in await a.list_parts("shared-up", 0, 10)] == [1]
    assert await b.abort_upload("shared-up")
    assert await a.list_parts("shared-up", 0, 10) == []


async def test_list_uploads_order_and_markers(store: MetadataStore) -> None:
    for upload_id, key, initiated in [
        ("u3", "b", 3.0), ("u1", "b", 1.0), ("u2", "b", 1.0), ("u4", "\u00e9", 0.5), ("u5", "B", 9.0),
        ("u6", "a/x", 2.0),
    ]:  # fmt: skip
        await store.create_upload(_upload(upload_id, key, initiated))

    async def ids(prefix: str = "", key: str = "", inclusive: bool = False, marker: str = "") -> list[str]:
        return [u.upload_id for u in await store.list_uploads("bkt", prefix, key, inclusive, marker, 100)]

    assert await ids() == ["u5", "u6", "u1", "u2", "u3", "u4"]
    assert await ids(key="b", marker="u1") == ["u2", "u3", "u4"]
    assert await ids(key="b") == ["u4"]
    assert await ids(key="b", inclusive=True) == ["u1", "u2", "u3", "u4"]
    assert await ids(prefix="a/") == ["u6"]
    assert [u.upload_id for u in await store.list_uploads("bkt", "", "", False, "", 2)] == ["u5", "u6"]
    assert (await store.list_uploads("bkt", "\u00e9", "", False, "", 1))[0] == _upload("u4", "\u00e9", 0.5)


# -- conditional writes and concurrency -------------------------------------------------
async def test_conditional_writes(store: MetadataStore) -> None:
    none_match, codes = WriteCondition(if_none_match=True), []
    await store.put_object(_version("k", etag="1" * 32), EMPTY, condition=none_match)
    for cond in (none_match, WriteCondition(if_match='"' + "0" * 32 + '"')):
        with pytest.raises(S3Error) as err:
            await store.put_object(_version("k", etag="2" * 32), EMPTY, condition=cond)
        codes.append(err.value.code)
    with pytest.raises(S3Error) as err:
        await store.put_object(_version("absent"), EMPTY, condition=WriteCondition(if_match="*"))
    codes.append(err.value.code)
    assert codes == ["PreconditionFailed", "PreconditionFailed", "NoSuchKey"]
    assert (await store.get_object("bkt", "k")).etag == "1" * 32  # type: ignore[union-attr]
    await store.put_object(_version("k", etag="3" * 32), EMPTY, condition=WriteCondition(if_match="1" * 32))
    assert (await store.get_object("bkt", "k")).etag == "3" * 32  # type: ignore[union-attr]
    # A delete marker counts as "no object" for If-None-Match.
    await store.delete_object("bkt", "k", marker=_version("k", "m", marker=True))
    await store.put_object(_version("k", "v5", etag="5" * 32), EMPTY, condition=none_match)
    # A failed conditional completion keeps the upload.
    await store.create_upload(_upload("cu", "k"))
    with pytest.raises(S3Error):
        await store.complete_upload("cu", _version("k", "v6"), none_match)
    assert await store.get_upload("bkt", "cu") is not None
    assert (await store.get_object("bkt", "k")).version_id == "v5"  # type: ignore[union-attr]
    events = [e["eventName"] for e in await _all_outbox(store)]
    assert events.count("ObjectCreated:Put") == 3  # failed conditions wrote no event


async def test_racing_if_none_match_writers_exactly_one_wins(open_store: StoreOpener) -> None:
    a = await open_store()
    assert await a.create_bucket(Bucket("bkt", "root", "us-east-1", 0.0))
    b = await open_store()

    async def attempt(store: MetadataStore, i: int) -> str:
        try:
            await store.put_object(_version("race", f"v{i}", etag=f"{i:032d}"), EMPTY,
                                   condition=WriteCondition(if_none_match=True))  # fmt: skip
            return f"won{i}"
        except S3Error as exc:
            return exc.code

    outcomes = await asyncio.gather(*(attempt(a if i % 2 else b, i) for i in range(12)))
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and set(outcomes) - set(winners) == {"PreconditionFailed"}
    current = await b.get_object("bkt", "race")
    assert current is not None and current.version_id == f"v{winners[0][3:]}"
    assert len(await a.list_versions("bkt", "", "", False, "", 100)) == 1


async def test_concurrent_writers_from_two_stores_keep_history_and_one_latest(
    open_store: StoreOpener,
) -> None:
    a = await open_store()
    assert await a.create_bucket(Bucket("bkt", "root", "us-east-1", 0.0))
    b = await open_store()
    ids = [f"v{i:02d}-{os.urandom(3).hex()}" for i in range(24)]
    await asyncio.gather(*(
        (a if i % 2 else b).put_object(_version("hot", vid), EMPTY) for i, vid in enumerate(ids)
    ))  # fmt: skip
    await asyncio.gather(*((a if i % 2 else b).put_object(_version("hot-null", etag=f"{i:032d}"), EMPTY)
                           for i in range(10)))  # fmt: skip
    history = await b.list_versions("bkt", "hot", "", False, "", 100)
    hot = [v for v in history if v.key == "hot"]
    assert sorted(v.version_id for v in hot) == sorted(ids)  # no acknowledged write lost
    assert [v.is_latest for v in hot] == [True] + [False] * 23
    assert (await a.get_object("bkt", "hot")).version_id == hot[0].version_id  # type: ignore[union-attr]
    nulls = [v for v in history if v.key == "hot-null"]
    assert len(nulls) == 1 and nulls[0].is_latest


# -- outbox -----------------------------------------------------------------------------
async def test_every_change_writes_an_ordered_outbox_event(store: MetadataStore) -> None:
    assert await store.outbox_shards() >= 1
    await store.put_object(_version("a", etag="1" * 32), EMPTY)
    await store.put_object(_version("a", "v2", etag="2" * 32), EMPTY, event="ObjectCreated:Copy")
    await store.delete_object("bkt", "a", marker=_version("a", "m", marker=True))
    await store.delete_object("bkt", "a", "v2")
    await store.delete_object("bkt", "never-existed")
    await store.create_upload(_upload("ou", "mp"))
    await store.complete_upload("ou", _version("mp", etag="3" * 32))
    events = [e for e in await _all_outbox(store) if e.get("bucket") == "bkt"]
    assert [(e["eventName"], e["key"], e["versionId"]) for e in events] == [
        ("ObjectCreated:Put", "a", "null"),
        ("ObjectCreated:Copy", "a", "v2"),
        ("ObjectRemoved:DeleteMarkerCreated", "a", "m"),
        ("ObjectRemoved:Delete", "a", "v2"),
        ("ObjectCreated:CompleteMultipartUpload", "mp", "null"),
    ]
    assert (events[0]["size"], events[0]["eTag"]) == (3, "1" * 32)
    assert "size" not in events[2] and isinstance(events[0]["time"], float)
    for shard in range(await store.outbox_shards()):
        rows = await store.read_outbox(0, 100, shard)
        if rows:
            assert await store.read_outbox(rows[-1].seq, 100, shard) == []
            assert await store.read_outbox(rows[0].seq, 1, shard) == rows[1:2]


async def test_outbox_events_of_many_buckets_all_arrive(store: MetadataStore) -> None:
    names = [f"bucket-{i}" for i in range(12)]
    for name in names:
        assert await store.create_bucket(Bucket(name, "root", "us-east-1", 0.0))
        await store.put_object(_version("k", bucket=name), EMPTY)
    events = await _all_outbox(store)
    assert sorted(e["bucket"] for e in events) == sorted(names)


async def test_relay_cursor_lease_and_trim(open_store: StoreOpener) -> None:
    a = await open_store()
    assert await a.create_bucket(Bucket("bkt", "root", "us-east-1", 0.0))
    b = await open_store()
    for i in range(5):
        await a.put_object(_version(f"k{i}"), EMPTY)
    shards = [s for s in range(await a.outbox_shards()) if await a.read_outbox(0, 1, s)]
    assert len(shards) == 1  # one bucket: its events are on one shard
    shard = shards[0]
    rows = await a.read_outbox(0, 100, shard)
    assert len(rows) == 5
    assert await a.get_relay_cursor(shard) == 0
    assert await a.claim_relay(shard, "gw-a", 30.0)
    assert not await b.claim_relay(shard, "gw-b", 30.0)  # held by a, not expired
    assert await a.claim_relay(shard, "gw-a", 30.0)  # renewal
    await a.advance_relay_cursor(shard, rows[2].seq)
    await b.advance_relay_cursor(shard, rows[0].seq)  # never moves back
    assert await b.get_relay_cursor(shard) == rows[2].seq
    # Only published rows (seq <= cursor) below ``before`` are trimmed.
    assert await a.trim_outbox(shard, rows[4].seq, 100) == 3
    assert [r.seq for r in await b.read_outbox(0, 100, shard)] == [r.seq for r in rows[3:]]
    await a.release_relay(shard, "gw-b")  # not the holder: no effect
    assert not await b.claim_relay(shard, "gw-b", 30.0)
    await a.release_relay(shard, "gw-a")
    assert await b.claim_relay(shard, "gw-b", 0.0)  # expires at once
    assert await a.claim_relay(shard, "gw-a", 30.0)  # so a takes it over
    # New events after a trim continue above the published cursor.
    await a.put_object(_version("k9"), EMPTY)
    newest = await a.read_outbox(rows[-1].seq, 100, shard)
    assert [e.body["key"] for e in newest] == ["k9"] and newest[0].seq > rows[-1].seq


async def test_expiring_outbox_rows_oldest_first_published_only_if_asked(open_store: StoreOpener) -> None:
    """Retention (gateway/events.py, ``expire_outbox_once``): rows created before the cutoff
    go, oldest first, looking at no more than ``limit`` rows; with ``published_only`` a row
    the relay has not published stays however old it is."""
    a = await open_store()
    assert await a.create_bucket(Bucket("bkt", "root", "us-east-1", 0.0))
    for i in range(6):
        await a.put_object(_version(f"k{i}"), EMPTY)
        await asyncio.sleep(0.01)  # distinct creation times
    [shard] = [s for s in range(await a.outbox_shards()) if await a.read_outbox(0, 1, s)]
    rows = await a.read_outbox(0, 100, shard)
    assert len(rows) == 6
    cutoff = rows[4].created  # rows 0-3 are older
    await a.advance_relay_cursor(shard, rows[1].seq)
    assert await a.expire_outbox(shard, cutoff, 100, published_only=True) == 2  # 2 and 3 unpublished
    assert await a.expire_outbox(shard, cutoff, 1, published_only=False) == 1  # the oldest row only
    assert await a.expire_outbox(shard, cutoff, 100, published_only=False) == 1
    assert await a.expire_outbox(shard, cutoff, 100, published_only=False) == 0
    assert [r.seq for r in await a.read_outbox(0, 100, shard)] == [rows[4].seq, rows[5].seq]


async def test_audit_records_and_their_events(store: MetadataStore) -> None:
    records = [
        AuditRecord(
            10.0 + i, f"req{i}", "root", "AK", "PutObject", "bkt", f"k{i}", None, "127.0.0.1", "ua", 200
        )
        for i in range(3)
    ]
    await store.append_audit([])
    await store.append_audit(records)
    got = await store.read_audit(0, 10)
    assert [r.request_id for r in got] == ["req0", "req1", "req2"]
    assert got[0] == dataclasses.replace(records[0], seq=got[0].seq)
    assert await store.read_audit(got[1].seq, 10) == got[2:]
    events = [e for e in await _all_outbox(store) if e.get("kind") == "audit"]
    assert [e["requestId"] for e in events] == ["req0", "req1", "req2"]


async def test_ping_and_pool_usage(store: MetadataStore) -> None:
    await store.ping()
    usage = store.pool_usage()
    assert usage.size >= 1 and 0 <= usage.in_use <= usage.size


async def test_maintenance_scans_restore_index_and_stats(store: MetadataStore) -> None:
    for name in ("b2", "b3"):
        assert await store.create_bucket(Bucket(name, "root", "us-east-1", 0.0))
    written = []
    for bucket in ("bkt", "b2", "b3"):
        for key in ("z", "\u00e9", "A"):
            for vid in ("v1", "v2"):
                await store.put_object(_version(key, vid, bucket=bucket), EMPTY)
                written.append((bucket, key, vid))
    await store.delete_object("b2", "A", marker=_version("A", "m", bucket="b2", marker=True))
    written.append(("b2", "A", "m"))
    seen: list[tuple[str, str, str]] = []
    after = None
    while page := await store.scan_versions(after, 4):
        assert len(page) <= 4
        seen += [(v.bucket, v.key, v.version_id) for v in page]
        after = seen[-1]
    assert seen == sorted(written)
    for upload_id in ("u2", "u1"):
        await store.create_upload(_upload(upload_id, "mp", bucket="b3" if upload_id == "u1" else "bkt"))
        for n in (2, 1):
            await store.put_part(upload_id, _part(n), EMPTY)
    parts = await store.scan_parts(None, 3)
    assert [(u.upload_id, p.part_number) for u, p in parts] == [("u1", 1), ("u1", 2), ("u2", 1)]
    assert parts[0][0].bucket == "b3" and parts[0][1] == _part(1)
    assert [(u.upload_id, p.part_number) for u, p in await store.scan_parts(("u1", 2), 10)] == [
        ("u2", 1),
        ("u2", 2),
    ]
    cid, staged = _staged(33, "rp")
    assert await store.restore_index(staged) == (1, 1)
    assert await store.restore_index(staged) == (0, 0)  # idempotent
    assert await store.lookup_chunks([cid]) == {cid: ChunkLocation("rp", 10, 50, 40, 1)}
    stats = await store.storage_stats()
    assert (stats.objects, stats.versions, stats.delete_markers) == (8, 18, 1)
    assert (stats.version_bytes, stats.current_bytes) == (54, 24)
    assert (stats.parts, stats.part_bytes) == (4, 20)
    assert (stats.chunks, stats.chunk_plain_bytes, stats.chunk_stored_bytes) == (1, 40, 50)
    assert (stats.packs, stats.pack_bytes) == (1, 100)
    assert stats.bytes_by_class == {"STANDARD": 54}
