"""Envelope encryption: KEK providers, DEKs and AES-256-GCM sealing.

* :mod:`crypto.kek` -- the KEK provider protocol and :class:`WrappedKey`;
* :mod:`crypto.keyring` -- :class:`LocalKeyring`, the local versioned keyring file;
* :mod:`crypto.kms` -- :class:`AwsKmsProvider`, master keys held by AWS KMS (or a KMS-compatible
  endpoint);
* :mod:`crypto.envelope` -- DEKs and the :class:`Sealer`;
* :mod:`crypto.errors` -- exceptions.

No I/O beyond the keyring file and, for KMS, the KMS API.
"""

from crypto.envelope import DEK_LEN, SEAL_OVERHEAD, Sealer, new_dek
from crypto.errors import (
    CryptoError,
    IntegrityError,
    KeyringError,
    KeyringFormatError,
    KeyringPermissionError,
    UnknownKEKError,
)
from crypto.kek import KEKProvider, WrappedKey, rewrap
from crypto.keyring import LocalKeyring

__all__ = [
    "DEK_LEN",
    "SEAL_OVERHEAD",
    "CryptoError",
    "IntegrityError",
    "KEKProvider",
    "KeyringError",
    "KeyringFormatError",
    "KeyringPermissionError",
    "LocalKeyring",
    "Sealer",
    "UnknownKEKError",
    "WrappedKey",
    "new_dek",
    "rewrap",
]
