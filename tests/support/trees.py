"""Small file trees for the client-matrix tests, and ways to compare them with a bucket.

:func:`make_tree` writes the same kind of tree for every client: random and text files,
an empty file, nested directories, names with spaces and non-ASCII names, and (optionally)
one multi-MiB random file that is above every client's multipart threshold (awscli's
8 MiB, minio's and s3cmd's 5 MiB parts). Contents depend only on ``seed``.

The comparisons read the bucket with boto3 (:func:`remote_snapshot`), never with the
client under test, so a client that both writes and reads something wrong cannot hide it.
Snapshots map a POSIX relative path (or key below a prefix) to the SHA-256 of its bytes.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .s3 import MiB, iter_random_blocks

BIG_REL = "big/multi part.bin"
BIG_SIZE = 9 * MiB + 3  # 2 parts of 8 MiB (awscli) or of 5 MiB (minio, s3cmd here)

_WORDS = [
    "strata",
    "gateway",
    "chunk",
    "pack",
    "dedup",
    "zstd",
    "envelope",
    "bucket",
    "object",
    "listing",
    "copy",
    "delete",
    "ünïcødé",
    "✓",
    "naïve",
    "façade",
    "Grüße",
    "日本語",
    "—",
    "tab\tand",
    "CRLF\r\n",
]


def text_bytes(size: int, seed: int) -> bytes:
    """``size`` bytes of UTF-8-ish text (lines of words; may end mid-character)."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
        out += line.encode("utf-8") + b"\n"
    return bytes(out[:size])


def random_file_bytes(size: int, seed: int) -> bytes:
    return b"".join(iter_random_blocks(size, seed))


def tree_contents(seed: int) -> dict[str, bytes]:
    """The small files of a test tree (relative POSIX path -> bytes)."""
    return {
        "hello.txt": text_bytes(700, seed),
        "empty": b"",
        "data/random.bin": random_file_bytes(200_000 + seed, seed),
        "data/nested/deeper/notes.md": text_bytes(30_000, seed + 1),
        "with space/file name with spaces.txt": text_bytes(1_234, seed + 2),
        "ünïcødé/日本語 ✓.txt": "grüße, 世界 ✓\n".encode() * 50,
        "ünïcødé/naïve.bin": random_file_bytes(4_097, seed + 3),
    }


@dataclass(frozen=True)
class Tree:
    """A tree written under ``root``: relative path -> SHA-256 hex, and the big file's path."""

    root: Path
    files: dict[str, str]
    big: str | None

    @property
    def big_path(self) -> Path:
        assert self.big is not None, "tree was made without the big file"
        return self.root / self.big


def make_tree(root: Path, *, seed: int = 1, big: bool = True) -> Tree:
    """Write a test tree under ``root`` (created); with ``big`` also the multi-MiB file."""
    contents = tree_contents(seed)
    if big:
        contents[BIG_REL] = random_file_bytes(BIG_SIZE, seed + 100)
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in contents.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return Tree(root, {rel: sha256(data) for rel, data in contents.items()}, BIG_REL if big else None)


@dataclass(frozen=True)
class Mutation:
    """What :func:`mutate_tree` did: relative paths changed, deleted and added."""

    changed: str
    deleted: str
    added: str


def mutate_tree(root: Path, seed: int = 99) -> Mutation:
    """Change one file (new size and bytes), delete one and add one (in a new directory)."""
    m = Mutation(changed="hello.txt", deleted="data/random.bin", added="added dir/new ✓.txt")
    (root / m.changed).write_bytes(text_bytes(1_001, seed))
    (root / m.deleted).unlink()
    (root / m.added).parent.mkdir(parents=True, exist_ok=True)
    (root / m.added).write_bytes(text_bytes(2_002, seed + 1))
    return m


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def snapshot(root: Path) -> dict[str, str]:
    """Every regular file under ``root``: relative POSIX path -> SHA-256 hex."""
    out: dict[str, str] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                out[path.relative_to(root).as_posix()] = sha256(path.read_bytes())
    return out


def remote_keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every key under ``prefix`` (sorted), listed with boto3 (ListObjectsV2, paginated)."""
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(keys)


def remote_objects(s3: Any, bucket: str, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Key -> the listing entry (Size, ETag, LastModified) for every key under ``prefix``."""
    out: dict[str, dict[str, Any]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = {k: obj[k] for k in ("Size", "ETag", "LastModified")}
    return out


def remote_snapshot(s3: Any, bucket: str, prefix: str = "") -> dict[str, str]:
    """Key below ``prefix`` -> SHA-256 of the object's bytes (each object read with boto3)."""
    out: dict[str, str] = {}
    for key in remote_keys(s3, bucket, prefix):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        out[key[len(prefix) :]] = sha256(body)
    return out


def assert_same(actual: Mapping[str, str], expected: Mapping[str, str], what: str = "tree") -> None:
    """Equal snapshots, with a readable account of what is missing, extra or different."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    differ = sorted(k for k in set(actual) & set(expected) if actual[k] != expected[k])
    assert not (missing or extra or differ), f"{what}: missing={missing} extra={extra} differ={differ}"


def upload_tree(
    s3: Any, bucket: str, prefix: str, tree: Tree, *, include_big: bool = False
) -> dict[str, str]:
    """Put the tree's files under ``prefix`` with boto3 (to seed a test of another client).

    Returns the snapshot of what was uploaded (relative path -> SHA-256).
    """
    uploaded: dict[str, str] = {}
    for rel, digest in tree.files.items():
        if rel == tree.big and not include_big:
            continue
        s3.put_object(Bucket=bucket, Key=prefix + rel, Body=(tree.root / rel).read_bytes())
        uploaded[rel] = digest
    return uploaded
