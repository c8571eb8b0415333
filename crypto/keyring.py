"""Local keyring: a versioned file of KEKs, the embedded-mode :class:`~crypto.kek.KEKProvider`.

This module owns the keyring file (format, permissions, atomic updates) and DEK wrapping
with its keys. Production deployments use a KMS instead; both satisfy the same protocol.

File
----
UTF-8 JSON, mode 0600, e.g.::

    {"magic": "strata-keyring", "format": 1, "kek_id": "local:9f2c...", "current": 2,
     "versions": [{"version": 1, "created": "2026-11-24T00:57:00Z", "key": "<base64, 32 bytes>"},
                  {"version": 2, "created": "2027-02-01T10:00:00Z", "key": "..."}]}

Opening refuses a file that group or others may access, a wrong ``magic``, or a ``format``
other than 1. Updates (creation, :meth:`LocalKeyring.add_version`) write a temp file
(``O_CREAT|O_EXCL``, 0600), fsync it, move it into place and fsync the directory, under an
``flock`` on ``<keyring>.lock`` so that several processes sharing a data dir cooperate.
Versions are never removed: a version must be kept while any pack's DEK is wrapped by it.

Wrapping
--------
AES-256-GCM under the KEK version's key (chosen over AES-KW because it binds AAD)::

    blob = scheme (1 byte, = 0x01) || nonce (12, random) || ciphertext || tag (16)
    AAD  = b"strata/kek-wrap/1\\x00" || kek_version (u32 little-endian) || kek_id (UTF-8)

A 32-byte DEK gives a 61-byte blob. Random nonces are safe for far more than 2**32 wraps
per KEK version; one wrap per ~16 MiB pack would need 64 PiB of data to get there.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import secrets
import stat
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto.errors import (
    IntegrityError,
    KeyringError,
    KeyringFormatError,
    KeyringPermissionError,
    UnknownKEKError,
)
from crypto.kek import WrappedKey

KEYRING_MAGIC = "strata-keyring"
KEYRING_FORMAT = 1
KEK_LEN = 32
WRAP_SCHEME = 1
_WRAP_AAD_PREFIX = b"strata/kek-wrap/1\x00"
_NONCE_LEN = 12
_TAG_LEN = 16
_MAX_FILE_SIZE = 1 << 20
_MAX_WRAP_PLAINTEXT = 4096


def _wrap_aad(kek_id: str, version: int) -> bytes:
    return _WRAP_AAD_PREFIX + struct.pack("<I", version) + kek_id.encode("utf-8")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Version:
    version: int
    created: str
    key: bytes

    def __repr__(self) -> str:  # never print key material
        return f"_Version(version={self.version}, created={self.created!r})"


@dataclass(frozen=True)
class _State:
    kek_id: str
    current: int
    versions: dict[int, _Version]
    ciphers: dict[int, AESGCM]

    def to_json(self) -> bytes:
        doc = {
            "magic": KEYRING_MAGIC,
            "format": KEYRING_FORMAT,
            "kek_id": self.kek_id,
            "current": self.current,
            "versions": [
                {"version": v.version, "created": v.created, "key": base64.b64encode(v.key).decode("ascii")}
                for v in sorted(self.versions.values(), key=lambda v: v.version)
            ],
        }
        return (json.dumps(doc, indent=2) + "\n").encode("utf-8")

    @classmethod
    def build(cls, kek_id: str, current: int, versions: list[_Version]) -> _State:
        by_version = {v.version: v for v in versions}
        return cls(kek_id, current, by_version, {v.version: AESGCM(v.key) for v in versions})


def _parse(raw: bytes, path: Path) -> _State:
    def bad(why: str) -> KeyringFormatError:
        return KeyringFormatError(f"keyring {path}: {why}")

    try:
        doc: Any = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"not valid UTF-8 JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("magic") != KEYRING_MAGIC:
        raise bad(f"not a Strata keyring (magic must be {KEYRING_MAGIC!r})")
    if doc.get("format") != KEYRING_FORMAT:
        raise bad(f"unsupported keyring format {doc.get('format')!r} (this build reads {KEYRING_FORMAT})")
    kek_id = doc.get("kek_id")
    if not isinstance(kek_id, str) or not kek_id or len(kek_id) > 256:
        raise bad("kek_id must be a non-empty string of at most 256 characters")
    entries = doc.get("versions")
    if not isinstance(entries, list) or not entries:
        raise bad("versions must be a non-empty list")
    versions: list[_Version] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise bad("each version must be an object")
        number, created, key_b64 = entry.get("version"), entry.get("created"), entry.get("key")
        if type(number) is not int or not 1 <= number <= 0xFFFFFFFF:
            raise bad(f"bad version number {number!r}")
        if not isinstance(created, str) or not isinstance(key_b64, str):
            raise bad(f"version {number}: created and key must be strings")
        try:
            key = base64.b64decode(key_b64, validate=True)
        except (binascii.Error, ValueError):
            raise bad(f"version {number}: key is not valid base64") from None
        if len(key) != KEK_LEN:
            raise bad(f"version {number}: key must be {KEK_LEN} bytes, got {len(key)}")
        versions.append(_Version(number, created, key))
    if len({v.version for v in versions}) != len(versions):
        raise bad("duplicate version numbers")
    current = doc.get("current")
    if type(current) is not int or current not in {v.version for v in versions}:
        raise bad(f"current={current!r} is not one of the versions")
    return _State.build(kek_id, current, versions)


def _read_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyringError(f"keyring {path} does not exist") from None
    except OSError as e:
        raise KeyringError(f"cannot open keyring {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyringPermissionError(f"keyring {path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyringPermissionError(
                f"keyring {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must not be accessible by "
                f"group or others (run: chmod 600 {path})"
            )
        if st.st_size > _MAX_FILE_SIZE:
            raise KeyringFormatError(f"keyring {path} is implausibly large ({st.st_size} bytes)")
        chunks: list[bytes] = []
        while block := os.read(fd, 65536):
            chunks.append(block)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _write_atomic(path: Path, data: bytes, *, replace: bool) -> bool:
    """Write ``data`` to ``path`` via a 0600 temp file, fsyncs and a rename or link.

    With ``replace=False`` an existing file is never overwritten; returns False if one was
    already there (and leaves it alone).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic and never clobbers
            except FileExistsError:
                return False
            except OSError:  # filesystem without hard links: we hold the lock, so check-then-rename
                if path.exists():
                    return False
                os.rename(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return True


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


class LocalKeyring:
    """A versioned keyring file implementing :class:`~crypto.kek.KEKProvider`.

    ``LocalKeyring(path)`` opens an existing keyring; :meth:`open_or_create` creates one on
    first use. Thread-safe: wraps use immutable state that :meth:`add_version` and
    :meth:`reload` swap atomically.
    """

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._state = _parse(_read_file(self._path), self._path)

    @classmethod
    def open_or_create(cls, path: Path) -> LocalKeyring:
        """Open the keyring at ``path``, creating it (with one KEK version) if it does not exist."""
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with _file_lock(path):
                if not path.exists():
                    kek_id = f"local:{secrets.token_hex(16)}"
                    state = _State.build(kek_id, 1, [_Version(1, _now(), secrets.token_bytes(KEK_LEN))])
                    _write_atomic(path, state.to_json(), replace=False)
        return cls(path)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def kek_id(self) -> str:
        return self._state.kek_id

    @property
    def current_version(self) -> int:
        return self._state.current

    def versions(self) -> list[int]:
        return sorted(self._state.versions)

    def reload(self) -> None:
        """Re-read the file (another process may have added a version)."""
        state = _parse(_read_file(self._path), self._path)
        if state.kek_id != self._state.kek_id:
            raise KeyringError(
                f"keyring {self._path} was replaced: kek_id changed from "
                f"{self._state.kek_id!r} to {state.kek_id!r}"
            )
        self._state = state

    def add_version(self) -> int:
        """Add a new KEK version and make it current; old versions stay (they still unwrap)."""
        with self._lock, _file_lock(self._path):
            self.reload()
            old = self._state
            number = max(old.versions) + 1
            versions = [*old.versions.values(), _Version(number, _now(), secrets.token_bytes(KEK_LEN))]
            state = _State.build(old.kek_id, number, versions)
            _write_atomic(self._path, state.to_json(), replace=True)
            self._state = state
            return number

    # -- wrapping --------------------------------------------------------------------------

    def wrap_sync(self, plaintext: bytes) -> WrappedKey:
        """Wrap a DEK under the current KEK version."""
        if not 0 < len(plaintext) <= _MAX_WRAP_PLAINTEXT:
            raise ValueError(f"refusing to wrap {len(plaintext)} bytes (expected a key)")
        state = self._state
        nonce = secrets.token_bytes(_NONCE_LEN)
        aad = _wrap_aad(state.kek_id, state.current)
        ct = state.ciphers[state.current].encrypt(nonce, bytes(plaintext), aad)
        return WrappedKey(state.kek_id, state.current, bytes([WRAP_SCHEME]) + nonce + ct)

    def unwrap_sync(self, wrapped: WrappedKey) -> bytes:
        """Unwrap a DEK wrapped by any version of this keyring."""
        state = self._state
        if wrapped.kek_id != state.kek_id:
            raise UnknownKEKError(
                f"key is wrapped by KEK {wrapped.kek_id!r}, but keyring {self._path} holds {state.kek_id!r}"
            )
        cipher = state.ciphers.get(wrapped.kek_version)
        if cipher is None:
            with self._lock:
                self.reload()
            state = self._state
            cipher = state.ciphers.get(wrapped.kek_version)
            if cipher is None:
                raise UnknownKEKError(
                    f"KEK {state.kek_id!r} has no version {wrapped.kek_version} (held: {self.versions()})"
                )
        blob = wrapped.blob
        if len(blob) < 1 + _NONCE_LEN + _TAG_LEN or blob[0] != WRAP_SCHEME:
            raise IntegrityError(f"wrapped key blob is malformed ({len(blob)} bytes)")
        view = memoryview(blob)
        try:
            return cipher.decrypt(
                view[1 : 1 + _NONCE_LEN],
                view[1 + _NONCE_LEN :],
                _wrap_aad(wrapped.kek_id, wrapped.kek_version),
            )
        except InvalidTag:
            raise IntegrityError(
                f"wrapped key failed authentication under KEK {wrapped.kek_id!r} v{wrapped.kek_version}"
            ) from None

    async def wrap(self, plaintext: bytes) -> WrappedKey:
        return self.wrap_sync(plaintext)

    async def unwrap(self, wrapped: WrappedKey) -> bytes:
        return self.unwrap_sync(wrapped)

    def __repr__(self) -> str:
        return f"LocalKeyring({str(self._path)!r}, kek_id={self.kek_id!r}, current={self.current_version})"
