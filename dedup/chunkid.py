"""Chunk ids: keyed BLAKE3 of a chunk's plaintext.

This module owns how a chunk is named. ``chunk_id = BLAKE3-keyed(dedup_key, plaintext)``,
32 bytes, with a random 32-byte dedup key per tenant. Identical chunks of one tenant get
the same id (dedup); without the key, an id reveals nothing about the content, so no tenant
can probe for another's data. The ``blake3`` package releases the GIL for large inputs.
"""

from __future__ import annotations

import secrets

import blake3

CHUNK_ID_LEN = 32
DEDUP_KEY_LEN = 32

Buffer = bytes | bytearray | memoryview


def new_dedup_key() -> bytes:
    """A fresh random per-tenant dedup key."""
    return secrets.token_bytes(DEDUP_KEY_LEN)


def chunk_id(dedup_key: bytes, data: Buffer) -> bytes:
    """The 32-byte id of ``data`` under ``dedup_key`` (``data`` is hashed in place, not copied)."""
    if len(dedup_key) != DEDUP_KEY_LEN:
        raise ValueError(f"a dedup key must be {DEDUP_KEY_LEN} bytes, got {len(dedup_key)}")
    return blake3.blake3(data, key=dedup_key).digest()
