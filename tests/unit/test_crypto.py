"""Tests for crypto/: the local keyring, DEK wrapping and the Sealer."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from crypto import (
    IntegrityError,
    KEKProvider,
    KeyringFormatError,
    KeyringPermissionError,
    LocalKeyring,
    Sealer,
    UnknownKEKError,
    WrappedKey,
    new_dek,
    rewrap,
)
from crypto.errors import KeyringError


@pytest.fixture
def ring_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "keyring.json"


def test_create_has_mode_0600_and_format(ring_path: Path) -> None:
    ring = LocalKeyring.open_or_create(ring_path)
    assert stat.S_IMODE(ring_path.stat().st_mode) == 0o600
    doc = json.loads(ring_path.read_text())
    assert doc["magic"] == "strata-keyring"
    assert doc["format"] == 1
    assert doc["current"] == 1 == ring.current_version
    assert ring.versions() == [1]
    assert isinstance(ring, KEKProvider)
    assert not [p for p in ring_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_reopen_reads_same_keys(ring_path: Path) -> None:
    first = LocalKeyring.open_or_create(ring_path)
    dek = new_dek()
    wrapped = first.wrap_sync(dek)
    again = LocalKeyring.open_or_create(ring_path)
    other = LocalKeyring(ring_path)
    assert again.kek_id == other.kek_id == first.kek_id
    assert again.unwrap_sync(wrapped) == other.unwrap_sync(wrapped) == dek


def test_missing_file_is_a_clear_error(ring_path: Path) -> None:
    with pytest.raises(KeyringError, match="does not exist"):
        LocalKeyring(ring_path)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_refuses_group_or_other_access(ring_path: Path, mode: int) -> None:
    LocalKeyring.open_or_create(ring_path)
    ring_path.chmod(mode)
    with pytest.raises(KeyringPermissionError, match="chmod 600"):
        LocalKeyring(ring_path)
    with pytest.raises(KeyringPermissionError):
        LocalKeyring.open_or_create(ring_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"magic": "something-else"}, "magic"),
        ({"format": 2}, "format"),
        ({"current": 7}, "current"),
        ({"versions": []}, "versions"),
    ],
)
def test_refuses_bad_contents(ring_path: Path, change: dict[str, object], message: str) -> None:
    LocalKeyring.open_or_create(ring_path)
    doc = json.loads(ring_path.read_text())
    doc.update(change)
    ring_path.write_text(json.dumps(doc))
    with pytest.raises(KeyringFormatError, match=message):
        LocalKeyring(ring_path)


def test_refuses_non_json_and_bad_key(ring_path: Path) -> None:
    LocalKeyring.open_or_create(ring_path)
    good = ring_path.read_text()
    ring_path.write_text("not json")
    with pytest.raises(KeyringFormatError):
        LocalKeyring(ring_path)
    doc = json.loads(good)
    doc["versions"][0]["key"] = "c2hvcnQ="  # 5 bytes
    ring_path.write_text(json.dumps(doc))
    with pytest.raises(KeyringFormatError, match="32 bytes"):
        LocalKeyring(ring_path)


def test_wrap_unwrap_round_trip_async(ring_path: Path) -> None:
    ring = LocalKeyring.open_or_create(ring_path)
    dek = new_dek()

    async def go() -> bytes:
        wrapped = await ring.wrap(dek)
        assert wrapped.kek_id == ring.kek_id
        assert wrapped.kek_version == 1
        assert dek not in wrapped.blob
        return await ring.unwrap(wrapped)

    assert asyncio.run(go()) == dek


def test_wraps_are_randomized(ring_path: Path) -> None:
    ring = LocalKeyring.open_or_create(ring_path)
    dek = new_dek()
    assert ring.wrap_sync(dek).blob != ring.wrap_sync(dek).blob


def test_tampered_blob_fails(ring_path: Path) -> None:
    ring = LocalKeyring.open_or_create(ring_path)
    wrapped = ring.wrap_sync(new_dek())
    for i in range(len(wrapped.blob)):
        blob = bytearray(wrapped.blob)
        blob[i] ^= 0x01
        with pytest.raises(IntegrityError):
            ring.unwrap_sync(dataclasses.replace(wrapped, blob=bytes(blob)))
    with pytest.raises(IntegrityError):
        ring.unwrap_sync(dataclasses.replace(wrapped, blob=wrapped.blob[:-1]))
    with pytest.raises(UnknownKEKError):
        ring.unwrap_sync(dataclasses.replace(wrapped, kek_id="local:someone-else"))
    with pytest.raises(UnknownKEKError):
        ring.unwrap_sync(dataclasses.replace(wrapped, kek_version=9))


def test_version_is_bound_as_aad(ring_path: Path) -> None:
    ring = LocalKeyring.open_or_create(ring_path)
    wrapped = ring.wrap_sync(new_dek())
    ring.add_version()
    # Same blob presented as version 2: wrong key and wrong AAD.
    with pytest.raises(IntegrityError):
        ring.unwrap_sync(WrappedKey(wrapped.kek_id, 2, wrapped.blob))


def test_add_version_keeps_old_versions(ring_path: Path) -> None:
    ring = LocalKeyring.open_or_create(ring_path)
    stale = LocalKeyring(ring_path)  # another process that has not seen the rotation
    dek1, dek2 = new_dek(), new_dek()
    w1 = ring.wrap_sync(dek1)
    assert ring.add_version() == 2
    assert ring.current_version == 2
    assert ring.versions() == [1, 2]
    assert stat.S_IMODE(ring_path.stat().st_mode) == 0o600
    w2 = ring.wrap_sync(dek2)
    assert w2.kek_version == 2
    assert ring.unwrap_sync(w1) == dek1
    assert ring.unwrap_sync(w2) == dek2
    reopened = LocalKeyring(ring_path)
    assert reopened.versions() == [1, 2]
    assert reopened.unwrap_sync(w1) == dek1
    assert stale.unwrap_sync(w2) == dek2  # reloads on an unknown version
    assert stale.add_version() == 3  # re-reads the file before adding
    assert LocalKeyring(ring_path).versions() == [1, 2, 3]


def test_rewrap_moves_to_current_version(ring_path: Path) -> None:
    ring = LocalKeyring.open_or_create(ring_path)
    dek = new_dek()
    old = ring.wrap_sync(dek)
    assert asyncio.run(rewrap(ring, old)) is old
    ring.add_version()
    new = asyncio.run(rewrap(ring, old))
    assert new.kek_version == 2
    assert ring.unwrap_sync(new) == dek


def test_repr_hides_keys(ring_path: Path) -> None:
    ring = LocalKeyring.open_or_create(ring_path)
    key_b64 = json.loads(ring_path.read_text())["versions"][0]["key"]
    assert key_b64 not in repr(ring)
    assert key_b64 not in repr(ring._state)


# -- Sealer --------------------------------------------------------------------------------


def test_new_dek() -> None:
    a, b = new_dek(), new_dek()
    assert len(a) == len(b) == 32
    assert a != b


def test_sealer_round_trip_and_layout() -> None:
    sealer = Sealer(new_dek())
    plain = os.urandom(1000)
    sealed = sealer.seal(plain, b"aad")
    assert len(sealed) == 12 + len(plain) + 16
    assert sealer.open(sealed, b"aad") == plain
    assert sealer.open(memoryview(sealed), memoryview(b"aad")) == plain
    big = bytearray(os.urandom(70_000))
    assert sealer.open(sealer.seal(memoryview(big)[5:60_000], b""), b"") == bytes(big[5:60_000])
    assert sealer.seal(plain, b"aad") != sealed  # random nonce


@pytest.mark.parametrize("prefix_len", [0, 1, 48, 4096])
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100_000])
def test_seal_framed_puts_the_sealed_data_after_the_prefix(prefix_len: int, size: int) -> None:
    sealer = Sealer(new_dek())
    prefix, plain = os.urandom(prefix_len), os.urandom(size)
    framed = sealer.seal_framed(memoryview(prefix), memoryview(plain), b"aad")
    assert len(framed) == prefix_len + 12 + size + 16
    assert bytes(framed[:prefix_len]) == prefix
    assert sealer.open(framed[prefix_len:], b"aad") == plain
    with pytest.raises(IntegrityError):  # the AAD is bound, not the prefix by itself
        sealer.open(framed[prefix_len:], b"aae")


def test_sealer_detects_tampering() -> None:
    sealer = Sealer(new_dek())
    sealed = sealer.seal(b"attack at dawn" * 10, b"header")
    for i in range(len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 0x80
        with pytest.raises(IntegrityError):
            sealer.open(bytes(bad), b"header")
    with pytest.raises(IntegrityError):
        sealer.open(sealed, b"other header")
    with pytest.raises(IntegrityError):
        Sealer(new_dek()).open(sealed, b"header")
    with pytest.raises(IntegrityError):
        sealer.open(sealed[:20], b"header")


def test_sealer_rejects_bad_key_length() -> None:
    with pytest.raises(ValueError):
        Sealer(b"short")
    assert "hidden" in repr(Sealer(new_dek()))
