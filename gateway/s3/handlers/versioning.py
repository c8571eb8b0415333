"""Bucket versioning: Put/GetBucketVersioning, ListObjectVersions, and the rules that decide
which version id a write gets and what a delete does.

A bucket is unversioned until versioning is first enabled; after that it is Enabled or
Suspended, never unversioned again. Writes in an Enabled bucket get fresh version ids; in an
unversioned or Suspended bucket they replace the "null" version.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable

from aiohttp import web

from dedup.manifest import EMPTY_MANIFEST
from gateway.meta.models import NULL_VERSION, DeleteOutcome, ObjectVersion
from gateway.s3.errors import S3Error
from gateway.s3.handlers.buckets import XML, owner_node
from gateway.s3.handlers.listing import count_param, url_encoder
from gateway.s3.paging import Cursor, paginate
from gateway.s3.request import S3Request
from gateway.s3.xml import Node, child_text, document, iso8601, parse

ENABLED, SUSPENDED = "Enabled", "Suspended"
CONFIG = "versioning"


async def status(req: S3Request) -> str | None:
    """The addressed bucket's versioning status: Enabled, Suspended, or None (never enabled)."""
    assert req.bucket is not None
    return await req.rt.meta.get_bucket_config(req.bucket, CONFIG)


def new_version_id() -> str:
    """An opaque version id (S3 style: URL-safe, unguessable)."""
    return secrets.token_urlsafe(24)


async def version_id_for_write(req: S3Request) -> str:
    return new_version_id() if await status(req) == ENABLED else NULL_VERSION


async def delete_current(req: S3Request, key: str, version_id: str | None) -> DeleteOutcome:
    """DeleteObject semantics: a version id deletes that version permanently; otherwise a
    versioned bucket gets a delete marker and an unversioned one loses the object."""
    assert req.bucket is not None
    if version_id is not None:
        return await req.rt.meta.delete_object(req.bucket, key, version_id)
    state = await status(req)
    if state is None:
        return await req.rt.meta.delete_object(req.bucket, key)
    marker = ObjectVersion(
        bucket=req.bucket,
        key=key,
        version_id=new_version_id() if state == ENABLED else NULL_VERSION,
        size=0,
        etag="",
        last_modified=time.time(),
        manifest=EMPTY_MANIFEST,
        delete_marker=True,
    )
    return await req.rt.meta.delete_object(req.bucket, key, marker=marker)


async def put_bucket_versioning(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    root = parse(await req.read_document())
    if root.tag != "VersioningConfiguration":
        raise S3Error("MalformedXML")
    value = child_text(root, "Status")
    if value not in (ENABLED, SUSPENDED):
        raise S3Error("MalformedXML")
    mfa = child_text(root, "MfaDelete")
    if mfa == "Enabled":
        raise S3Error("NotImplemented", "MFA Delete is not supported.")
    current = await req.rt.meta.get_bucket_config(bucket.name, CONFIG)
    if current is None and value == SUSPENDED:
        return web.Response(status=200)  # suspending a never-versioned bucket changes nothing
    await req.rt.meta.put_bucket_config(bucket.name, CONFIG, value)
    return web.Response(status=200)


async def get_bucket_versioning(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    value = await req.rt.meta.get_bucket_config(bucket.name, CONFIG)
    children: list[Node] = [("Status", value)] if value else []
    return web.Response(body=document("VersioningConfiguration", children), content_type=XML)


async def list_object_versions(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    q = req.query
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    key_marker, vid_marker = q.get("key-marker", ""), q.get("version-id-marker", "")
    if vid_marker and not key_marker:
        raise S3Error("InvalidArgument", "A version-id marker cannot be specified without a key marker.")
    max_keys = count_param(req)
    enc = url_encoder(req)

    def fetch(cursor: Cursor, limit: int) -> Awaitable[list[ObjectVersion]]:
        return req.rt.meta.list_versions(
            bucket.name, prefix, cursor.key, cursor.inclusive, cursor.tiebreak, limit
        )

    start = Cursor(key_marker, tiebreak=vid_marker if key_marker else "")
    page = await paginate(fetch, lambda v: v.key, prefix, delimiter, start, max_keys, lambda v: v.version_id)
    children: list[Node] = [
        ("Name", bucket.name),
        ("Prefix", enc(prefix)),
        ("KeyMarker", enc(key_marker)),
        ("VersionIdMarker", vid_marker),
        ("MaxKeys", max_keys),
        ("Delimiter", enc(delimiter)) if delimiter else None,
        ("IsTruncated", page.truncated),
        ("EncodingType", "url") if "encoding-type" in q else None,
    ]
    if page.truncated and page.last is not None:
        last_vid = page.last_item.version_id if page.last_item and page.last_item.key == page.last else ""
        children += [("NextKeyMarker", enc(page.last)), ("NextVersionIdMarker", last_vid)]
    for v in page.items:
        common: list[Node] = [
            ("Key", enc(v.key)),
            ("VersionId", v.version_id),
            ("IsLatest", v.is_latest),
            ("LastModified", iso8601(v.last_modified)),
        ]
        if v.delete_marker:
            children.append(("DeleteMarker", [*common, owner_node(bucket.owner)]))
        else:
            children.append(
                (
                    "Version",
                    [
                        *common,
                        ("ETag", f'"{v.etag}"'),
                        ("Size", v.size),
                        ("StorageClass", v.storage_class),
                        owner_node(bucket.owner),
                    ],
                )
            )
    children.extend(("CommonPrefixes", [("Prefix", enc(p))]) for p in page.prefixes)
    return web.Response(body=document("ListVersionsResult", children), content_type=XML)
