"""Metadata-store contract tests (SQLite now; every store implementation must pass them) and
the listing engine's paging rules, checked against a brute-force model."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.waiting import eventually

from crypto.kek import WrappedKey
from dedup.manifest import Manifest
from dedup.pack import ChunkLocation
from gateway.meta.keyorder import prefix_successor
from gateway.meta.models import Bucket, NewChunk, ObjectVersion, PackRecord, PoolUsage, StagedData
from gateway.meta.sqlite import LIGHT_ROWS, SqliteMetadataStore
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


async def test_writes_from_two_loops_and_a_cancelled_waiter_all_commit(store: SqliteMetadataStore) -> None:
    """Light writes (which run on a loop) from this loop and from another thread's loop, and
    a waiter cancelled before its group ran: every other write is committed and answered
    on its own loop, and the lane ends idle."""
    import asyncio
    import threading

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
    assert all(r is None for r in await asyncio.gather(*mine))
    await asyncio.to_thread(thread.join, 10)
    assert other and all(r is None for r in other[0])
    keys = {o.key for o in await store.list_objects("bkt", "", "", False, 100)}
    assert {f"mine/{i}" for i in range(30)} | {f"other/{i}" for i in range(30)} <= keys
    assert store.pool_usage() == PoolUsage(0, 1, 0)


async def test_writer_thread_commits_heavy_writes_of_a_stalled_loop(
    store: SqliteMetadataStore, tmp_path: Path
) -> None:
    """Writes that are not light run whole on the writer thread, which drains the queue
    itself: a loop that stalls (blocking sleeps) still gets its writes committed."""
    import asyncio
    import sqlite3
    import time

    mine = [asyncio.ensure_future(store.put_bucket_config("bkt", f"cfg{i}", "x")) for i in range(30)]
    await asyncio.sleep(0)
    committed = 0
    deadline = time.monotonic() + 10
    while committed < 30 and time.monotonic() < deadline:
        time.sleep(0.02)
        with sqlite3.connect(tmp_path / "meta.sqlite") as peek:
            committed = peek.execute("SELECT count(*) FROM bucket_configs WHERE bucket='bkt'").fetchone()[0]
    assert committed == 30
    assert all(r is None for r in await asyncio.gather(*mine))
    assert store.pool_usage().in_use == 0


def _heavy_staged(tag: int) -> StagedData:
    """Staged data with more rows than a light write may touch (its put runs on the thread)."""
    chunks = [
        NewChunk(bytes([tag]) + i.to_bytes(31, "big"), ChunkLocation(f"heavy{tag}", i * 10, 10, 10, 1))
        for i in range(LIGHT_ROWS + 1)
    ]
    return StagedData([PackRecord(f"heavy{tag}", WK, 100)], chunks)


async def test_light_writes_run_on_the_loop_and_heavy_ones_on_the_writer_thread(
    store: SqliteMetadataStore,
) -> None:
    import threading

    def where(c: object) -> int:
        return threading.get_ident()

    assert await store._write(where, light=True) == threading.get_ident()
    assert await store._write(where) != threading.get_ident()


async def test_light_and_heavy_writes_to_one_key_commit_in_the_order_they_were_made(
    store: SqliteMetadataStore,
) -> None:
    """Light puts (run on the loop) and heavy puts (run on the writer thread) of one key,
    all queued at once: groups never overtake each other, so the last one made wins."""
    import asyncio

    order = []
    for i in range(12):
        heavy = i % 3 == 1
        v = ObjectVersion("bkt", "k", "null", i, f"{i:032x}", 1.0, Manifest((), ()))
        order.append(store.put_object(v, _heavy_staged(i) if heavy else EMPTY))
    await asyncio.gather(*order)
    latest = await store.get_object("bkt", "k")
    assert latest is not None and latest.etag == f"{11:032x}" and latest.size == 11
    assert [v.etag for v in await store.list_versions("bkt", "", "", True, "", 10)] == [f"{11:032x}"]


async def test_a_light_group_never_waits_on_the_loop_for_another_process_lock(
    store: SqliteMetadataStore, tmp_path: Path
) -> None:
    """Another process (an admin command) holds the write lock: the loop does not block in
    BEGIN; the writer thread waits for the lock instead, and the write commits after."""
    import asyncio
    import sqlite3
    import time

    other = sqlite3.connect(tmp_path / "meta.sqlite", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    put = asyncio.ensure_future(store.put_object(_version("after-lock"), EMPTY))
    ticks, start = 0, time.monotonic()
    while time.monotonic() - start < 0.5:  # the loop keeps turning while the lock is held
        await asyncio.sleep(0.01)
        ticks += 1
    assert not put.done()
    assert ticks >= 20
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(put, 10)
    assert await store.get_object("bkt", "after-lock") is not None
    assert store.pool_usage() == PoolUsage(0, 1, 0)


async def _store_behind_a_lock(path: Path) -> tuple[SqliteMetadataStore, sqlite3.Connection]:
    """A store with bucket "bkt", and another connection holding the write lock (an admin
    command, say) until the caller commits and closes it."""
    s = SqliteMetadataStore(path)
    await s.open()
    await s.create_bucket(Bucket("bkt", "root", "us-east-1", 0.0))
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return s, other


def _committed_keys(path: Path) -> set[str]:
    with sqlite3.connect(path) as peek:
        return {r[0] for r in peek.execute("SELECT key FROM objects WHERE bucket='bkt'")}


async def test_close_commits_queued_writes_then_refuses_new_ones(tmp_path: Path) -> None:
    """Writes queued when the store closes (light ones for the loop, heavy ones for the
    thread, some behind another process's write lock) are all committed before the
    connections close; a write after close fails at once instead of waiting forever."""
    import asyncio

    path = tmp_path / "meta.sqlite"
    s, other = await _store_behind_a_lock(path)
    writes = [
        asyncio.ensure_future(s.put_object(_version(f"k{i}"), _heavy_staged(i) if i % 4 == 0 else EMPTY))
        for i in range(24)
    ]
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(s.close())
    await asyncio.sleep(0.2)
    assert not closing.done()  # waiting for the queued writes, which wait for the lock
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(closing, 15)
    assert all(r is None for r in await asyncio.wait_for(asyncio.gather(*writes), 1))
    with pytest.raises(RuntimeError, match="closed"):
        await asyncio.wait_for(s.put_object(_version("late"), EMPTY), 1)
    assert _committed_keys(path) == {f"k{i}" for i in range(24)}


async def test_close_fails_writes_still_queued_after_its_drain_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group stuck behind another process's lock outlasts close()'s drain time: the writes
    queued behind it fail with the closed error (none is left unanswered), and the stuck
    group still commits once the lock is released."""
    import asyncio

    from gateway.meta import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "CLOSE_DRAIN_SECONDS", 0.2)
    path = tmp_path / "meta.sqlite"
    s, other = await _store_behind_a_lock(path)
    stuck = asyncio.ensure_future(s.put_object(_version("stuck"), _heavy_staged(1)))
    # until the writer thread took it, alone, and waits for the lock in BEGIN (the lane
    # flag alone is no proof: the thread that answered create_bucket may not have released
    # the lane yet, and a write queued then would join the stuck one's group)
    await eventually(lambda: s._committing and not s._queue)
    behind = [asyncio.ensure_future(s.put_object(_version(f"behind{i}"), EMPTY)) for i in range(3)]
    closing = asyncio.ensure_future(s.close())
    done, _ = await asyncio.wait(behind, timeout=5)
    assert len(done) == 3 and all("closed" in str(f.exception()) for f in behind)
    assert not stuck.done()
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(closing, 15)
    assert await stuck is None
    assert _committed_keys(path) == {"stuck"}


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
