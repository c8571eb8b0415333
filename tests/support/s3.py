"""Client-side helpers shared by the integration tests: boto3 clients, bucket cleanup,
test data that is generated as a stream (never a whole large object in memory), and
digest helpers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import sysconfig
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError

from .server import StrataServer

MiB = 1024 * 1024
GiB = 1024 * MiB


def client_config(**overrides: Any) -> Config:
    kwargs: dict[str, Any] = {
        "signature_version": "s3v4",
        "s3": {"addressing_style": "path"},
        "retries": {"max_attempts": 1},
        "connect_timeout": 10,
        "read_timeout": 120,
    }
    kwargs.update(overrides)
    return Config(**kwargs)


def make_client(
    server: StrataServer, *, access_key: str | None = None, secret_key: str | None = None, **config: Any
) -> BaseClient:
    """A boto3 S3 client for ``server`` (https with verify=False for a TLS server)."""
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=server.region,
        aws_access_key_id=access_key or server.access_key,
        aws_secret_access_key=secret_key or server.secret_key,
        config=client_config(**config),
        verify=False if server.tls else None,
    )


def unique_bucket(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


def delete_bucket_recursive(client: BaseClient, bucket: str) -> None:
    """Best-effort cleanup: delete every object, abort uploads, delete the bucket."""
    try:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket}
            if token:
                kwargs["ContinuationToken"] = token
            page = client.list_objects_v2(**kwargs)
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
            if not token:
                break
    except ClientError:
        pass
    try:
        for up in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    except ClientError:
        pass
    with contextlib.suppress(ClientError):
        client.delete_bucket(Bucket=bucket)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code"))


def http_status(exc_or_response: ClientError | dict[str, Any]) -> int:
    resp = exc_or_response.response if isinstance(exc_or_response, ClientError) else exc_or_response
    return int(resp["ResponseMetadata"]["HTTPStatusCode"])


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def iter_random_blocks(size: int, seed: int | None, block: int = MiB) -> Iterator[bytes]:
    """``size`` pseudo-random bytes, ``block`` at a time: an AES-CTR keystream keyed by ``seed``
    (fresh random key if None), which is incompressible and fast (GB/s)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = hashlib.sha256(str(seed).encode()).digest() if seed is not None else os.urandom(32)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    zeros = bytes(block)
    left = size
    while left > 0:
        n = min(block, left)
        yield encryptor.update(zeros[:n])
        left -= n


def write_random_file(path: Path, size: int, seed: int | None) -> str:
    """Write random data to ``path`` in 1 MiB blocks; return its sha256 hex."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for block in iter_random_blocks(size, seed):
            h.update(block)
            f.write(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def multipart_etag(parts: list[bytes]) -> str:
    """S3's multipart ETag: md5 of the concatenated binary part md5s, then ``-N``."""
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f'"{digest}-{len(parts)}"'


def multipart_etag_of_file(path: Path, part_size: int) -> str:
    md5s = []
    with open(path, "rb") as f:
        while block := f.read(part_size):
            md5s.append(hashlib.md5(block).digest())
    return f'"{hashlib.md5(b"".join(md5s)).hexdigest()}-{len(md5s)}"'


TEXT_SUFFIXES = (".py", ".txt", ".rst", ".pyi", ".html", ".c", ".h", ".md", ".cfg", ".toml")


def iter_text_files() -> Iterator[Path]:
    """Distinct-content text files from the stdlib, then site-packages (stable order)."""
    paths = sysconfig.get_paths()
    roots = [paths["stdlib"], paths["purelib"]]
    seen: set[bytes] = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if not name.endswith(TEXT_SUFFIXES):
                    continue
                p = Path(dirpath) / name
                try:
                    data = p.read_bytes()
                except OSError:
                    continue
                if len(data) < 64:
                    continue
                digest = hashlib.sha256(data).digest()
                if digest in seen:
                    continue
                seen.add(digest)
                yield p


def write_text_corpus(path: Path, size: int) -> int:
    """Concatenate distinct text files into ``path`` until it holds ``size`` bytes.

    Returns the number of bytes written (exactly ``size``).
    """
    written = 0
    with open(path, "wb") as out:
        for p in iter_text_files():
            data = p.read_bytes()
            take = min(len(data), size - written)
            out.write(data[:take])
            written += take
            if written >= size:
                break
    if written < size:
        raise RuntimeError(f"only {written} bytes of text found, wanted {size}")
    return written


def find_in_tree(root: Path, needles: list[bytes], block: int = 4 * MiB) -> list[tuple[Path, bytes]]:
    """Every (file, needle) where ``needle`` occurs in a file under ``root`` (streamed)."""
    hits: list[tuple[Path, bytes]] = []
    overlap = max(len(n) for n in needles) - 1
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            found: set[bytes] = set()
            tail = b""
            try:
                with open(p, "rb") as f:
                    while block_data := f.read(block):
                        window = tail + block_data
                        for n in needles:
                            if n not in found and n in window:
                                found.add(n)
                        tail = window[-overlap:] if overlap else b""
            except OSError:
                continue
            hits.extend((p, n) for n in found)
    return hits
