"""Envelope encryption of data: DEKs and AES-256-GCM sealing.

This module owns data encryption under a data-encryption key (DEK). Each pack gets its
own random 256-bit DEK (:func:`new_dek`), which is stored only in wrapped form (see
:mod:`crypto.kek`). A :class:`Sealer` encrypts and authenticates byte strings under one
DEK::

    sealed = nonce (12, random) || ciphertext (len(plaintext)) || tag (16)

The AAD is the caller's (the pack record header, see :mod:`dedup.pack`). Random 96-bit
nonces are safe up to about 2**32 seals per DEK, far above what one pack holds.

A ``Sealer`` is immutable and safe to share between threads; ``cryptography`` releases
the GIL while it encrypts. Inputs may be ``memoryview``\\ s and are not copied.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto.errors import IntegrityError

DEK_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
SEAL_OVERHEAD = NONCE_LEN + TAG_LEN

Buffer = bytes | bytearray | memoryview


@contextlib.contextmanager
def _authenticated() -> Iterator[None]:
    try:
        yield
    except InvalidTag:
        raise IntegrityError("AES-GCM authentication failed (wrong key, AAD or tampered data)") from None


def new_dek() -> bytes:
    """A fresh random 256-bit data-encryption key."""
    return os.urandom(DEK_LEN)


class Sealer:
    """AES-256-GCM with one DEK."""

    __slots__ = ("_aead",)

    def __init__(self, dek: bytes) -> None:
        if len(dek) != DEK_LEN:
            raise ValueError(f"a DEK must be {DEK_LEN} bytes, got {len(dek)}")
        self._aead = AESGCM(dek)

    def seal_framed(self, prefix: Buffer, plaintext: Buffer, aad: Buffer) -> bytearray:
        """Encrypt; return ``prefix || nonce || ciphertext || tag`` as one new buffer. The
        ciphertext is encrypted straight into place: framing costs no join copy."""
        head = memoryview(prefix).nbytes
        size = memoryview(plaintext).nbytes
        out = bytearray(head + SEAL_OVERHEAD + size)
        out[:head] = prefix
        nonce = os.urandom(NONCE_LEN)
        out[head : head + NONCE_LEN] = nonce
        self._aead.encrypt_into(nonce, plaintext, aad, memoryview(out)[head + NONCE_LEN :])
        return out

    def seal(self, plaintext: Buffer, aad: Buffer) -> bytes:
        """Encrypt; return ``nonce || ciphertext || tag``."""
        return bytes(self.seal_framed(b"", plaintext, aad))

    def open_parts(self, nonce: Buffer, ciphertext: Buffer, aad: Buffer) -> bytes:
        """Decrypt ``ciphertext || tag``; raise :class:`IntegrityError` if it does not authenticate."""
        with _authenticated():
            return self._aead.decrypt(nonce, ciphertext, aad)

    def open_into(self, nonce: Buffer, ciphertext: Buffer, aad: Buffer, out: memoryview | bytearray) -> None:
        """:meth:`open_parts` into ``out`` (writable, exactly ``len(ciphertext) - TAG_LEN``
        bytes) instead of a new buffer; after a failure the contents of ``out`` are undefined."""
        with _authenticated():
            self._aead.decrypt_into(nonce, ciphertext, aad, out)

    def open(self, sealed: Buffer, aad: Buffer) -> bytes:
        """Decrypt ``nonce || ciphertext || tag``; raise :class:`IntegrityError` on any mismatch."""
        view = memoryview(sealed).cast("B")
        if view.nbytes < SEAL_OVERHEAD:
            raise IntegrityError(f"sealed data too short ({view.nbytes} bytes)")
        return self.open_parts(view[:NONCE_LEN], view[NONCE_LEN:], aad)

    def __repr__(self) -> str:
        return "Sealer(<DEK hidden>)"
