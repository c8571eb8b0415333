"""Key-encryption-key (KEK) provider interface.

A KEK provider wraps and unwraps data-encryption keys (DEKs). KEKs are versioned: new
wraps always use ``current_version``; unwrap accepts any version the provider still holds,
so rotating the KEK (adding a version) never makes old data unreadable. Providers are async
because the production one (AWS KMS) is network I/O; the local keyring answers inline.

This module owns only the interface and provider-independent helpers; implementations
live in :mod:`crypto.keyring` (local file) and, later, a KMS module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class WrappedKey:
    """A DEK wrapped by one KEK version. ``blob`` is provider-specific and opaque."""

    kek_id: str
    kek_version: int
    blob: bytes


@runtime_checkable
class KEKProvider(Protocol):
    """Wraps DEKs under the current KEK version and unwraps them under any held version."""

    @property
    def kek_id(self) -> str:
        """Stable identifier of the KEK (keyring id, KMS key ARN); recorded in every wrap."""
        ...

    @property
    def current_version(self) -> int: ...

    async def wrap(self, plaintext: bytes) -> WrappedKey: ...

    async def unwrap(self, wrapped: WrappedKey) -> bytes:
        """Return the DEK; raise ``IntegrityError`` if the blob was tampered with and
        ``UnknownKEKError`` if the KEK id/version is not held."""
        ...

    def versions(self) -> list[int]:
        """Every KEK version held, ascending."""
        ...


async def rewrap(provider: KEKProvider, wrapped: WrappedKey) -> WrappedKey:
    """Re-wrap a DEK under the provider's current KEK version (key rotation, no data rewrite).

    Returns ``wrapped`` unchanged if it already uses the current version of this KEK.
    """
    if wrapped.kek_id == provider.kek_id and wrapped.kek_version == provider.current_version:
        return wrapped
    return await provider.wrap(await provider.unwrap(wrapped))
