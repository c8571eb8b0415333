"""Inline manifests (tiny objects sealed into their manifest) and the shared inline DEK."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import LocalKeyring, Sealer, WrappedKey
from dedup import CorruptPackError, chunk_id, new_dedup_key, open_record
from dedup.manifest import MANIFEST_VERSION, InlineRecord, Manifest
from gateway.inline import InlineKeys

WRAPPED = WrappedKey("local:test", 7, bytes(range(40)))
CID = bytes(range(32))


def inline_manifest(record: bytes = b"sealed-record-bytes") -> Manifest:
    return Manifest((CID,), (1234,), InlineRecord(WRAPPED, record))


def test_inline_manifest_round_trips() -> None:
    m = inline_manifest()
    assert Manifest.decode(m.encode()) == m
    assert m.indexed_ids == () and m.chunk_ids == (CID,)


def test_plain_manifest_keeps_version_1_layout() -> None:
    m = Manifest((CID, bytes(32)), (10, 20))
    data = m.encode()
    assert data[4] == MANIFEST_VERSION == 1
    entries = CID + struct.pack("<I", 10) + bytes(32) + struct.pack("<I", 20)
    assert data == b"SMF\x00" + struct.pack("<B3xI", 1, 2) + entries
    assert Manifest.decode(data) == m and m.indexed_ids == m.chunk_ids


def test_inline_manifest_needs_exactly_one_chunk() -> None:
    with pytest.raises(ValueError):
        Manifest((CID, CID), (1, 1), InlineRecord(WRAPPED, b"x"))
    with pytest.raises(ValueError):
        Manifest.concat([Manifest((CID,), (5,)), inline_manifest()])


GOOD = inline_manifest().encode()
ENTRY_END = 12 + 36


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (GOOD[:-1], "record truncated"),
        (GOOD + b"\x00", "extra bytes"),
        (GOOD[:ENTRY_END], "no wrapped key"),
        (GOOD[:ENTRY_END] + b"\x00\x00", "empty kek id"),
        (GOOD[:8] + struct.pack("<I", 2) + GOOD[12:], "count 2 in an inline manifest"),
        (GOOD[:8] + struct.pack("<I", 0) + GOOD[12:], "count 0 in an inline manifest"),
        (GOOD[:4] + b"\x03" + GOOD[5:], "unknown version"),
        (GOOD[:4] + b"\x01" + GOOD[5:], "version 1 with trailing inline data"),
    ],
)
def test_bad_inline_manifests_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(CorruptPackError):
        Manifest.decode(data)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(GOOD) - 1), st.integers(0, 255), st.integers(0, len(GOOD)))
def test_damaged_inline_manifests_decode_or_raise_corrupt(pos: int, value: int, cut: int) -> None:
    """Any byte changed and any truncation: CorruptPackError or a manifest that re-encodes to
    the same bytes; never another exception."""
    for data in (GOOD[:pos] + bytes([value]) + GOOD[pos + 1 :], GOOD[:cut]):
        try:
            m = Manifest.decode(data)
        except CorruptPackError:
            continue
        assert m.encode() == data


class CountingKeyring:
    """A real local keyring that counts wraps."""

    def __init__(self, path: Path) -> None:
        self.inner = LocalKeyring.open_or_create(path)
        self.wraps = 0

    @property
    def kek_id(self) -> str:
        return self.inner.kek_id

    @property
    def current_version(self) -> int:
        return self.inner.current_version

    async def wrap(self, plaintext: bytes) -> WrappedKey:
        self.wraps += 1
        await asyncio.sleep(0)  # let concurrent callers pile up on the first wrap
        return await self.inner.wrap(plaintext)

    async def unwrap(self, wrapped: WrappedKey) -> bytes:
        return await self.inner.unwrap(wrapped)


async def test_inline_keys_wrap_once_for_many_objects(tmp_path: Path) -> None:
    kek = CountingKeyring(tmp_path / "keyring.json")
    keys = InlineKeys(kek)
    dedup_key = new_dedup_key()
    bodies = [bytes([i]) * (100 + i) for i in range(50)]
    manifests = await asyncio.gather(*(keys.seal(dedup_key, b, 1) for b in bodies))
    assert kek.wraps == 1
    assert len({m.inline.wrapped_dek for m in manifests if m.inline}) == 1
    for body, m in zip(bodies, manifests, strict=True):
        assert m.inline is not None and m.lengths == (len(body),)
        assert m.chunk_ids == (chunk_id(dedup_key, body),)
        dek = await kek.unwrap(m.inline.wrapped_dek)
        assert open_record(Sealer(dek), m.inline.record, m.chunk_ids[0]) == body


async def test_inline_keys_renew_on_rotation_use_count_and_age(tmp_path: Path) -> None:
    kek = CountingKeyring(tmp_path / "keyring.json")
    now = [0.0]
    keys = InlineKeys(kek, max_uses=3, max_age=60, clock=lambda: now[0])
    key = new_dedup_key()
    first = [await keys.seal(key, b"x", 1) for _ in range(3)]
    assert kek.wraps == 1
    fourth = await keys.seal(key, b"x", 1)  # the 4th use gets a fresh DEK
    assert kek.wraps == 2 and fourth.inline and first[0].inline
    assert fourth.inline.wrapped_dek != first[0].inline.wrapped_dek
    now[0] = 61.0  # too old
    await keys.seal(key, b"x", 1)
    assert kek.wraps == 3
    kek.inner.add_version()  # strata keys rotate: new objects use the new KEK version at once
    rotated = await keys.seal(key, b"x", 1)
    assert kek.wraps == 4 and rotated.inline and rotated.inline.wrapped_dek.kek_version == kek.current_version
