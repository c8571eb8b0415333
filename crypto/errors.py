"""Exceptions raised by the crypto package.

Everything derives from :class:`CryptoError`. :class:`IntegrityError` means "these bytes
are not what was sealed" (wrong key, tampering, corruption); callers must treat it as data
loss or an attack, never retry it as a transient fault.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base class for crypto failures."""


class IntegrityError(CryptoError):
    """Authenticated decryption failed: the data, its AAD or the key do not match."""


class KeyringError(CryptoError):
    """A keyring cannot be used (missing, unreadable, malformed, unsafe)."""


class KeyringPermissionError(KeyringError):
    """The keyring file is readable or writable by group/other, or is not a regular file."""


class KeyringFormatError(KeyringError):
    """The keyring file has a wrong magic, an unknown format version, or bad contents."""


class UnknownKEKError(KeyringError):
    """A wrapped key names a KEK id or version that this provider does not hold."""
