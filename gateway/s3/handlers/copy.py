"""CopyObject and UploadPartCopy.

CopyObject copies no data: the new version points at the source's chunks (same tenant, so
the same chunk ids). UploadPartCopy streams the source range through the ingest pipeline,
which gives the part its own MD5 ETag while dedup stores only chunks the range does not
already share (at most the re-cut edges).
"""

from __future__ import annotations

import dataclasses
import hashlib
from urllib.parse import unquote

from aiohttp import web

from gateway.meta.models import ObjectVersion, Part, StagedData
from gateway.s3.addressing import validate_key
from gateway.s3.checksums import new_checksum
from gateway.s3.conditions import check_preconditions
from gateway.s3.errors import S3Error
from gateway.s3.handlers import versioning
from gateway.s3.handlers.buckets import XML
from gateway.s3.handlers.multipart import load_upload, part_number_param
from gateway.s3.ranges import parse_range
from gateway.s3.request import S3Request, now
from gateway.s3.xml import Node, document, iso8601

MAX_COPY_SIZE = 5 * 1024**3


def parse_copy_source(value: str) -> tuple[str, str, str | None]:
    """(bucket, key, version id) from ``x-amz-copy-source`` ("/bkt/key?versionId=..")."""
    raw, _, query = value.partition("?")
    version = None
    if query:
        name, _, val = query.partition("=")
        if name != "versionId":
            raise S3Error("InvalidArgument", "Invalid copy source query", ArgumentName="x-amz-copy-source")
        version = unquote(val)
    path = unquote(raw).lstrip("/")
    bucket, _, key = path.partition("/")
    if not bucket or not key:
        raise S3Error(
            "InvalidArgument",
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
            ArgumentName="x-amz-copy-source",
        )
    return bucket, key, version


async def _source(req: S3Request) -> ObjectVersion:
    bucket, key, version_id = parse_copy_source(req.headers["x-amz-copy-source"])
    src_bucket = await req.rt.meta.get_bucket(bucket)
    if src_bucket is None:
        raise S3Error("NoSuchBucket", BucketName=bucket)
    if src_bucket.owner != req.principal.user:
        raise S3Error("AccessDenied")
    src = await req.rt.meta.get_object(bucket, key, version_id)
    if src is None:
        if version_id is not None:
            raise S3Error("NoSuchVersion", Key=key, VersionId=version_id)
        raise S3Error("NoSuchKey", Key=key)
    if src.delete_marker:
        raise S3Error(
            "InvalidRequest", "The source of a copy request may not specifically refer to a delete marker"
        )
    if version_id is None and not src.is_latest:
        raise S3Error("NoSuchKey", Key=key)
    try:
        check_preconditions(req.headers, src.etag, src.last_modified, prefix="x-amz-copy-source-")
    except S3Error as err:
        if err.code == "NotModified":  # copy conditions fail with 412, never 304
            raise S3Error("PreconditionFailed", Condition="x-amz-copy-source-If-None-Match") from err
        raise
    return src


async def copy_object(req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    validate_key(req.key)
    await req.owned_bucket()
    src = await _source(req)
    if src.size > MAX_COPY_SIZE:
        raise S3Error("InvalidRequest", "The specified copy source is larger than the maximum allowable size "
                      f"for a copy source: {MAX_COPY_SIZE}")  # fmt: skip
    directive = req.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error(
            "InvalidArgument", "Unknown metadata directive.", ArgumentName="x-amz-metadata-directive"
        )
    if (src.bucket, src.key) == (req.bucket, req.key) and directive == "COPY":
        raise S3Error(
            "InvalidRequest",
            "This copy request is illegal because it is trying to copy an object to itself without changing "
            "the object's metadata, storage class, website redirect location or encryption attributes.",
        )
    version = dataclasses.replace(
        src,
        bucket=req.bucket,
        key=req.key,
        version_id=await versioning.version_id_for_write(req),
        last_modified=now(),
    )
    if directive == "REPLACE":
        content_type, standard, meta = req.object_headers()
        version = dataclasses.replace(version, content_type=content_type, headers=standard, user_meta=meta)
    await req.rt.meta.put_object(version, StagedData([], []), event="ObjectCreated:Copy")
    body = document(
        "CopyObjectResult", [("LastModified", iso8601(version.last_modified)), ("ETag", f'"{version.etag}"')]
    )
    return web.Response(body=body, content_type=XML)


async def upload_part_copy(req: S3Request) -> web.StreamResponse:
    number = part_number_param(req.query.get("partNumber"))
    upload = await load_upload(req)
    src = await _source(req)
    span = (0, src.size)
    header = req.headers.get("x-amz-copy-source-range")
    if header is not None:
        parsed = parse_range(header, src.size) if src.size else None
        if (
            parsed is None
            or not header.startswith("bytes=")
            or header.startswith("bytes=-")
            or header.endswith("-")
        ):
            raise S3Error(
                "InvalidArgument",
                "The x-amz-copy-source-range value must be of the form bytes=first-last where first and "
                "last are the zero-based offsets of the first and last bytes to copy",
                ArgumentName="x-amz-copy-source-range",
            )
        span = parsed
    if span[1] - span[0] > MAX_COPY_SIZE:
        raise S3Error("EntityTooLarge")
    md5 = hashlib.md5()
    algo = upload.checksum_algorithm
    checksum = new_checksum(algo) if algo else None
    rt = req.rt
    key = await rt.identities.dedup_key(req.principal.user)
    digests = [md5] if checksum is None else [md5, checksum]
    result = await rt.ingestor.ingest(rt.reader.stream(src.manifest, *span), key, digests, MAX_COPY_SIZE)
    stored_sum = (
        {}
        if checksum is None
        else {"algorithm": checksum.algorithm, "value": checksum.b64(), "type": "FULL_OBJECT"}
    )
    part = Part(number, result.size, md5.hexdigest(), now(), result.manifest, stored_sum)
    try:
        await rt.meta.put_part(upload.upload_id, part, result.staged)
    except BaseException:
        await rt.ingestor.discard(result)
        raise
    children: list[Node] = [("LastModified", iso8601(part.last_modified)), ("ETag", f'"{part.etag}"')]
    if checksum is not None:
        children.append((f"Checksum{checksum.algorithm}", checksum.b64()))
    body = document("CopyPartResult", children)
    return web.Response(body=body, content_type=XML)
