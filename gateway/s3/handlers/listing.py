"""ListObjectsV2 and ListObjects (V1).

Listings page through the metadata store in key order. With a delimiter, each common prefix
is emitted once and the scan then seeks past it (to the prefix's successor) instead of
walking every key beneath it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web

from gateway.meta.models import ListedObject
from gateway.meta.store import MetadataStore
from gateway.s3.errors import S3Error
from gateway.s3.handlers.buckets import XML, owner_node
from gateway.s3.paging import Cursor, Page, paginate
from gateway.s3.request import S3Request
from gateway.s3.xml import Node, document, iso8601

MAX_KEYS = 1000


async def list_page(
    meta: MetadataStore, bucket: str, prefix: str, delimiter: str, after: str, max_keys: int
) -> Page[ListedObject]:
    """One page of at most ``max_keys`` entries (keys and common prefixes) after ``after``."""

    def fetch(cursor: Cursor, limit: int) -> Awaitable[list[ListedObject]]:
        return meta.list_objects(bucket, prefix, cursor.key, cursor.inclusive, limit)

    return await paginate(
        fetch, lambda o: o.key, prefix, delimiter, Cursor(after), max_keys, batch_max=MAX_KEYS
    )


def count_param(req: S3Request, name: str = "max-keys", default: int = MAX_KEYS) -> int:
    """A non-negative integer query parameter (max-keys, max-uploads, max-parts, markers),
    capped at 1000 for the max-* limits as S3 does."""
    raw = req.query.get(name, str(default)) or str(default)
    try:
        value = int(raw)
    except ValueError as exc:
        raise S3Error("InvalidArgument", f"Provided {name} not an integer or within integer range",
                      ArgumentName=name, ArgumentValue=raw) from exc  # fmt: skip
    if value < 0:
        raise S3Error("InvalidArgument", f"{name} must be non-negative", ArgumentName=name, ArgumentValue=raw)
    return min(value, MAX_KEYS) if name.startswith("max-") else value


def url_encoder(req: S3Request) -> Callable[[str], str]:
    kind = req.query.get("encoding-type")
    if kind is None:
        return str
    if kind != "url":
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request")
    return lambda s: quote(s, safe="/")


def _contents(page: Page, enc, with_owner: str | None) -> list[Node]:
    nodes: list[Node] = []
    for o in page.items:
        children: list[Node] = [
            ("Key", enc(o.key)),
            ("LastModified", iso8601(o.last_modified)),
            ("ETag", f'"{o.etag}"'),
            ("Size", o.size),
            ("StorageClass", o.storage_class),
        ]
        if with_owner:
            children.append(owner_node(with_owner))
        nodes.append(("Contents", children))
    nodes.extend(("CommonPrefixes", [("Prefix", enc(p))]) for p in page.prefixes)
    return nodes


async def list_objects_v2(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    q = req.query
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    max_keys = count_param(req)
    enc = url_encoder(req)
    token = q.get("continuation-token")
    start_after = q.get("start-after", "")
    after = start_after
    if token is not None:
        try:
            after = base64.urlsafe_b64decode(token.encode()).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise S3Error("InvalidArgument", "The continuation token provided is incorrect") from exc
    page = await list_page(req.rt.meta, bucket.name, prefix, delimiter, after, max_keys)
    children: list[Node] = [
        ("Name", bucket.name),
        ("Prefix", enc(prefix)),
        ("Delimiter", enc(delimiter)) if delimiter else None,
        ("MaxKeys", max_keys),
        ("KeyCount", len(page.items) + len(page.prefixes)),
        ("IsTruncated", page.truncated),
        ("ContinuationToken", token) if token is not None else None,
        ("StartAfter", enc(start_after)) if start_after else None,
        ("EncodingType", "url") if "encoding-type" in q else None,
    ]
    if page.truncated and page.last is not None:
        children.append(("NextContinuationToken", base64.urlsafe_b64encode(page.last.encode()).decode()))
    owner = req.principal.user if q.get("fetch-owner") == "true" else None
    children.extend(_contents(page, enc, owner))
    return web.Response(body=document("ListBucketResult", children), content_type=XML)


async def list_objects_v1(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    q = req.query
    prefix, delimiter, marker = q.get("prefix", ""), q.get("delimiter", ""), q.get("marker", "")
    max_keys = count_param(req)
    enc = url_encoder(req)
    page = await list_page(req.rt.meta, bucket.name, prefix, delimiter, marker, max_keys)
    children: list[Node] = [
        ("Name", bucket.name),
        ("Prefix", enc(prefix)),
        ("Marker", enc(marker)),
        ("MaxKeys", max_keys),
        ("Delimiter", enc(delimiter)) if delimiter else None,
        ("IsTruncated", page.truncated),
        ("EncodingType", "url") if "encoding-type" in q else None,
    ]
    if page.truncated and delimiter and page.last is not None:
        children.append(("NextMarker", enc(page.last)))
    children.extend(_contents(page, enc, req.principal.user))
    return web.Response(body=document("ListBucketResult", children), content_type=XML)
