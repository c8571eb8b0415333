"""Canned ACL and grant header rules (Strata keeps every bucket and object private to its
owner; canned ACLs are accepted, grants to others are not implemented)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.s3.errors import S3Error

CANNED = frozenset(
    {
        "private", "public-read", "public-read-write", "authenticated-read", "aws-exec-read",
        "bucket-owner-read", "bucket-owner-full-control", "log-delivery-write",
    }
)  # fmt: skip
GRANT_HEADERS = ("x-amz-grant-read", "x-amz-grant-write", "x-amz-grant-read-acp", "x-amz-grant-write-acp",
                 "x-amz-grant-full-control")  # fmt: skip


def check_acl_headers(headers: Mapping[str, str]) -> None:
    """Validate ``x-amz-acl`` / ``x-amz-grant-*`` on any write that may carry them."""
    canned = headers.get("x-amz-acl")
    if canned is not None and canned not in CANNED:
        raise S3Error("InvalidArgument", f"Invalid canned ACL {canned!r}", ArgumentName="x-amz-acl")
    if any(h in headers for h in GRANT_HEADERS):
        raise S3Error("NotImplemented", "Grants to other principals are not supported; buckets are private.")
