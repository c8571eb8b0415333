"""The C library through ctypes, for the few calls Python's ``os`` module lacks (glibc's
``mallopt`` and ``malloc_trim``, Linux's ``sync_file_range``). One handle, loaded once."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Sequence
from typing import Any


@functools.cache
def _handle() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def function(name: str, argtypes: Sequence[Any]) -> Any | None:
    """The C library's function ``name`` with its argument types set, or None where there is
    no such library or function."""
    libc = _handle()
    fn = getattr(libc, name, None) if libc is not None else None
    if fn is not None:
        fn.argtypes = list(argtypes)
    return fn
