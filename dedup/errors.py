"""Exceptions raised by the dedup package.

:class:`CorruptPackError` is also a :class:`crypto.errors.IntegrityError`, so a reader can
catch "these stored bytes are not what was written" with one ``except IntegrityError``,
whether a structure failed to parse or a GCM tag failed to verify.
"""

from __future__ import annotations

from crypto.errors import IntegrityError


class DedupError(Exception):
    """Base class for dedup failures."""


class CorruptPackError(DedupError, IntegrityError):
    """A pack, record, trailer or manifest is malformed, truncated or inconsistent."""
