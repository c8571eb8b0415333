"""Request addressing: which bucket and key a request names, path-style or virtual-host,
and the bucket-name and key rules S3 enforces."""

from __future__ import annotations

import re

from gateway.s3.errors import S3Error

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
MAX_KEY_BYTES = 1024


def split_host(host: str) -> str:
    """The host name without a port (IPv6 literals keep their brackets)."""
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


def resolve(host: str, path: str, domains: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(bucket, key) for a request; ``path`` is the decoded URL path."""
    name = split_host(host.lower())
    for domain in domains:
        if name.endswith("." + domain):
            bucket = name[: -len(domain) - 1]
            key = path[1:] if path.startswith("/") else path
            return bucket, key or None
    parts = path.lstrip("/").split("/", 1) if path.startswith("/") else path.split("/", 1)
    bucket = parts[0] or None
    key = parts[1] if len(parts) > 1 and parts[1] != "" else None
    return bucket, key


def validate_bucket_name(name: str) -> None:
    if not _BUCKET.match(name) or ".." in name or _IPV4.match(name) or ".-" in name or "-." in name:
        raise S3Error("InvalidBucketName", BucketName=name)


def validate_key(key: str) -> None:
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError")
