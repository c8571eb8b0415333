"""Metadata-store contract tests (SQLite now; every store implementation must pass them) and
the listing engine's paging rules, checked against a brute-force model."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto.kek import WrappedKey
from dedup.manifest import Manifest
from dedup.pack import ChunkLocation
from gateway.meta.keyorder import prefix_successor
from gateway.meta.models import Bucket, NewChunk, ObjectVersion, PackRecord, StagedData
from gateway.meta.sqlite import SqliteMetadataStore
from gateway.s3.errors import S3Error
from gateway.s3.handlers.listing import list_page

WK = WrappedKey("local", 1, b"x" * 60)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteMetadataStore]:
    s = SqliteMetadataStore(tmp_path / "meta.sqlite")
    await s.open()
    await s.create_bucket(Bucket("bkt", "root", "us-east-1", 0.0))
    yield s
    await s.close()


def _version(key: str, size: int = 1, manifest: Manifest | None = None) -> ObjectVersion:
    # no chunks by default: a commit refuses a manifest naming chunks the index lacks (gc)
    return ObjectVersion("bkt", key, "null", size, "e" * 32, 1.0, manifest or Manifest((), ()))


EMPTY = StagedData([], [])


async def test_put_get_delete_roundtrip(store: SqliteMetadataStore) -> None:
    cid = b"\7" * 32
    staged = StagedData([PackRecord("p1", WK, 100)], [NewChunk(cid, ChunkLocation("p1", 10, 50, 40, 1))])
    v = ObjectVersion(
        "bkt",
        "a/b",
        "null",
        40,
        "f" * 32,
        5.0,
        Manifest((cid,), (40,)),
        "text/plain",
        {"cache-control": "no"},
        {"x": "y"},
        {"algorithm": "CRC32", "value": "AAAAAA==", "type": "FULL_OBJECT"},
    )
    await store.put_object(v, staged)
    assert await store.get_object("bkt", "a/b") == v
    assert await store.lookup_chunks([cid, b"\0" * 32]) == {cid: ChunkLocation("p1", 10, 50, 40, 1)}
    assert (await store.get_pack("p1")) == PackRecord("p1", WK, 100)
    assert (await store.delete_object("bkt", "a/b")).existed
    assert await store.get_object("bkt", "a/b") is None
    assert not (await store.delete_object("bkt", "a/b")).existed


async def test_put_into_missing_bucket_indexes_nothing(store: SqliteMetadataStore) -> None:
    cid = b"\5" * 32
    staged = StagedData([PackRecord("p2", WK, 1)], [NewChunk(cid, ChunkLocation("p2", 0, 1, 1, 0))])
    v = ObjectVersion("nope", "k", "null", 1, "e" * 32, 1.0, Manifest((cid,), (1,)))
    with pytest.raises(S3Error) as err:
        await store.put_object(v, staged)
    assert err.value.code == "NoSuchBucket"
    assert await store.lookup_chunks([cid]) == {}
    assert await store.get_pack("p2") is None


async def test_delete_bucket_refuses_when_not_empty(store: SqliteMetadataStore) -> None:
    await store.put_object(_version("k"), EMPTY)
    with pytest.raises(S3Error) as err:
        await store.delete_bucket("bkt")
    assert err.value.code == "BucketNotEmpty"
    await store.delete_object("bkt", "k")
    await store.delete_bucket("bkt")
    assert await store.get_bucket("bkt") is None


async def test_bucket_create_is_exclusive(store: SqliteMetadataStore) -> None:
    assert not await store.create_bucket(Bucket("bkt", "other", "us-east-1", 0.0))
    assert (await store.get_bucket("bkt")).owner == "root"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", None),
        ("a", "b"),
        ("a/", "a0"),
        ("ab\U0010ffff", "ac"),
        ("\U0010ffff", None),
        ("a\ud7ff", "a\ue000"),
    ],
)
def test_prefix_successor(prefix: str, expected: str | None) -> None:
    assert prefix_successor(prefix) == expected


def _model(keys: list[str], prefix: str, delimiter: str) -> list[str]:
    """Brute force: every listing entry (keys and common prefixes) in order."""
    out: list[str] = []
    for k in sorted(keys):
        if not k.startswith(prefix):
            continue
        i = k.find(delimiter, len(prefix)) if delimiter else -1
        entry = k[: i + len(delimiter)] if i >= 0 else k
        if not out or out[-1] != entry:
            out.append(entry)
    return out


KEYS = st.lists(st.text(alphabet="ab/c\u00e9", min_size=1, max_size=6), min_size=0, max_size=25, unique=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    keys=KEYS,
    prefix=st.sampled_from(["", "a", "a/", "b/c"]),
    delimiter=st.sampled_from(["", "/", "c"]),
    max_keys=st.integers(min_value=1, max_value=7),
)
async def test_paging_matches_model(
    tmp_path_factory: pytest.TempPathFactory, keys: list[str], prefix: str, delimiter: str, max_keys: int
) -> None:
    s = SqliteMetadataStore(tmp_path_factory.mktemp("m") / "meta.sqlite")
    await s.open()
    try:
        await s.create_bucket(Bucket("bkt", "root", "us-east-1", 0.0))
        for k in keys:
            await s.put_object(_version(k), EMPTY)
        seen: list[str] = []
        after = ""
        for _ in itertools.count():
            page = await list_page(s, "bkt", prefix, delimiter, after, max_keys)
            entries = sorted([o.key for o in page.items] + page.prefixes)
            assert len(entries) <= max_keys
            seen.extend(entries)
            if not page.truncated:
                break
            assert page.last is not None
            after = page.last
        assert seen == _model(keys, prefix, delimiter)
    finally:
        await s.close()


async def test_group_commit_isolates_a_failing_write(store: SqliteMetadataStore) -> None:
    """Concurrent writes share commits, but one failing write rolls back only itself."""
    import asyncio

    good = [store.put_object(_version(f"k{i}"), EMPTY) for i in range(20)]
    cid = b"\3" * 32
    bad_staged = StagedData([PackRecord("pbad", WK, 1)], [NewChunk(cid, ChunkLocation("pbad", 0, 1, 1, 0))])
    bad = store.put_object(
        ObjectVersion("missing", "k", "null", 1, "e" * 32, 1.0, Manifest((cid,), (1,))), bad_staged
    )
    results = await asyncio.gather(*good, bad, return_exceptions=True)
    assert all(r is None for r in results[:-1])
    assert isinstance(results[-1], S3Error) and results[-1].code == "NoSuchBucket"
    assert len(await store.list_objects("bkt", "", "", False, 100)) == 20
    assert await store.lookup_chunks([cid]) == {}
    assert await store.get_pack("pbad") is None


async def test_writer_thread_answers_other_loops_and_keeps_going(
    store: SqliteMetadataStore, tmp_path: Path
) -> None:
    """The writer thread drains the queue itself and answers each writer on its own loop:
    writes from another thread's loop, a writer on this loop that stalls its loop, and a
    cancelled waiter all leave every other write committed and answered."""
    import asyncio
    import sqlite3
    import threading
    import time

    def other_loop() -> list[object]:
        async def writes() -> list[object]:
            return await asyncio.gather(
                *(store.put_object(_version(f"other/{i}"), EMPTY) for i in range(30)), return_exceptions=True
            )

        return asyncio.run(writes())

    other: list[list[object]] = []
    thread = threading.Thread(target=lambda: other.append(other_loop()))
    thread.start()
    cancelled = asyncio.ensure_future(store.put_object(_version("cancelled"), EMPTY))
    mine = [asyncio.ensure_future(store.put_object(_version(f"mine/{i}"), EMPTY)) for i in range(30)]
    await asyncio.sleep(0)
    cancelled.cancel()
    # this loop stalls (blocking sleeps); the writer thread commits its writes without it
    committed = 0
    deadline = time.monotonic() + 10
    while committed < 30 and time.monotonic() < deadline:
        time.sleep(0.02)
        with sqlite3.connect(tmp_path / "meta.sqlite") as peek:
            committed = peek.execute("SELECT count(*) FROM objects WHERE key LIKE 'mine/%'").fetchone()[0]
    assert committed == 30
    assert all(r is None for r in await asyncio.gather(*mine))
    thread.join(10)
    assert other and all(r is None for r in other[0])
    keys = {o.key for o in await store.list_objects("bkt", "", "", False, 100)}
    assert {f"mine/{i}" for i in range(30)} | {f"other/{i}" for i in range(30)} <= keys
    assert store.pool_usage().in_use == 0


async def test_a_writer_that_heard_back_sees_the_writer_idle(store: SqliteMetadataStore) -> None:
    """pool_usage reports a commit in progress until before its writers are answered, so a
    writer that heard back never sees its own group as still busy (this raced once)."""
    for _ in range(200):
        await store.ping()
        assert store.pool_usage().in_use == 0


async def test_bucket_configs_roundtrip_and_go_with_the_bucket(store: SqliteMetadataStore) -> None:
    assert await store.get_bucket_config("bkt", "cors") is None
    await store.put_bucket_config("bkt", "cors", "<CORSConfiguration/>")
    assert await store.get_bucket_config("bkt", "cors") == "<CORSConfiguration/>"
    await store.put_bucket_config("bkt", "cors", None)
    assert await store.get_bucket_config("bkt", "cors") is None
    await store.put_bucket_config("bkt", "tagging", "t")
    await store.delete_bucket("bkt")
    await store.create_bucket(Bucket("bkt", "root", "us-east-1", 0.0))
    assert await store.get_bucket_config("bkt", "tagging") is None
