"""The consistent-hash ring: stable, balanced, minimal movement when a shard is added, and
independent placement rules for buckets, chunks and packs."""

from __future__ import annotations

import collections
import os

import pytest

from gateway.meta.shards import HashRing, advisory_key, ring_hash

KEYS = [f"key-{i}".encode() for i in range(20_000)]


def test_placement_is_deterministic_and_in_range() -> None:
    a, b = HashRing(4), HashRing(4)
    assert [a.shard_of(k) for k in KEYS[:500]] == [b.shard_of(k) for k in KEYS[:500]]
    assert {a.shard_of(k) for k in KEYS} == {0, 1, 2, 3}
    assert {HashRing(1).shard_of(k) for k in KEYS[:100]} == {0}
    assert ring_hash(b"x") == ring_hash(b"x") != ring_hash(b"y")


@pytest.mark.parametrize("shards", [2, 4, 8])
def test_load_is_balanced(shards: int) -> None:
    ring = HashRing(shards)
    counts = collections.Counter(ring.shard_of(k) for k in KEYS)
    fair = len(KEYS) / shards
    assert all(0.75 * fair <= counts[s] <= 1.25 * fair for s in range(shards)), counts


def test_adding_a_shard_moves_only_keys_to_the_new_shard() -> None:
    old, new = HashRing(4), HashRing(5)
    moved = [(old.shard_of(k), new.shard_of(k)) for k in KEYS if old.shard_of(k) != new.shard_of(k)]
    assert all(dst == 4 for _src, dst in moved)  # nothing shuffles between the old shards
    assert 0.12 * len(KEYS) <= len(moved) <= 0.28 * len(KEYS)  # about 1/5 moves


def test_wraparound_key_goes_to_the_first_point() -> None:
    ring = HashRing(3, vnodes=4)
    past_last = [k for k in KEYS if ring_hash(k) > ring._points[-1]]
    assert past_last
    assert {ring.shard_of(k) for k in past_last} == {ring._owners[0]}


def test_rules_hash_under_their_own_namespace() -> None:
    ring = HashRing(8)
    ids = [os.urandom(32) for _ in range(400)]
    chunk = [ring.chunk_shard(c) for c in ids]
    pack = [ring.pack_shard(c.hex()) for c in ids]
    bucket = [ring.bucket_shard(c.hex()) for c in ids]
    assert chunk != pack and pack != bucket
    assert ring.bucket_shard("photos") == ring.shard_of(b"bucket\0photos")
    assert ring.bucket_shard("caf\u00e9") == ring.shard_of(b"bucket\0caf\xc3\xa9")


def test_bad_rings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one shard"):
        HashRing(0)
    with pytest.raises(ValueError, match="virtual node"):
        HashRing(2, vnodes=0)


def test_advisory_keys_are_signed_64_bit_and_unambiguous() -> None:
    keys = {
        advisory_key("object", "ab", "c"),
        advisory_key("object", "a", "bc"),
        advisory_key("bucket", "ab", "c"),
    }
    assert len(keys) == 3
    assert all(-(2**63) <= k < 2**63 for k in keys)
    assert advisory_key("object", "\udcff") == advisory_key("object", "\udcff")  # lone surrogates hash too
