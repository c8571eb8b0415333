"""Multipart uploads: Create, UploadPart, Complete, Abort, ListParts.

Each part is ingested like an object (its own manifest and MD5); completing concatenates the
part manifests, so no data is copied. The ETag is ``md5(concat(part md5s))-N``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable

from aiohttp import web

from dedup.manifest import Manifest
from gateway.meta.models import MultipartUpload, ObjectVersion, Part
from gateway.s3 import tags
from gateway.s3.acl import check_acl_headers
from gateway.s3.checksums import (
    ALGORITHMS,
    combine_full_object_crc,
    composite_checksum,
    multipart_etag,
)
from gateway.s3.errors import S3Error
from gateway.s3.handlers import versioning
from gateway.s3.handlers.buckets import XML, owner_node
from gateway.s3.handlers.listing import count_param, url_encoder
from gateway.s3.handlers.objects import checksum_headers, new_upload_id, store_body, version_header
from gateway.s3.paging import Cursor, paginate
from gateway.s3.request import S3Request, now
from gateway.s3.xml import XML_DECLARATION, Node, child_text, document, iso8601, parse

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10000
CRC_ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME")
_TAG = {a: "Checksum" + a for a in ALGORITHMS}


async def load_upload(req: S3Request) -> MultipartUpload:
    assert req.bucket is not None
    await req.owned_bucket()
    upload_id = req.query.get("uploadId", "")
    upload = await req.rt.meta.get_upload(req.bucket, upload_id)
    if upload is None or upload.key != req.key:
        raise S3Error("NoSuchUpload", UploadId=upload_id)
    return upload


async def create_upload(req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    await req.owned_bucket()
    check_acl_headers(req.headers)
    algo = req.headers.get("x-amz-checksum-algorithm")
    if algo is not None and algo.upper() not in ALGORITHMS:
        raise S3Error("InvalidRequest", f"Checksum algorithm {algo} is not supported.")
    ctype = req.headers.get("x-amz-checksum-type")
    if ctype is not None and ctype.upper() not in ("COMPOSITE", "FULL_OBJECT"):
        raise S3Error("InvalidRequest", f"Checksum type {ctype} is not supported.")
    if algo and ctype and ctype.upper() == "FULL_OBJECT" and algo.upper() not in CRC_ALGORITHMS:
        raise S3Error("InvalidRequest", f"The FULL_OBJECT checksum type cannot be used with {algo}.")
    content_type, standard, meta = req.object_headers()
    upload = MultipartUpload(
        upload_id=new_upload_id(),
        bucket=req.bucket,
        key=req.key,
        initiated=now(),
        owner=req.principal.user,
        content_type=content_type,
        headers=standard,
        user_meta=meta,
        checksum_algorithm=algo.upper() if algo else None,
        checksum_type=(ctype.upper() if ctype else "COMPOSITE") if algo else None,
        tags=tags.parse_header(req.headers.get("x-amz-tagging")),
    )
    await req.rt.meta.create_upload(upload)
    body = document(
        "InitiateMultipartUploadResult",
        [("Bucket", upload.bucket), ("Key", upload.key), ("UploadId", upload.upload_id)],
    )
    headers = {}
    if upload.checksum_algorithm:
        headers = {
            "x-amz-checksum-algorithm": upload.checksum_algorithm,
            "x-amz-checksum-type": upload.checksum_type or "",
        }
    return web.Response(body=body, content_type=XML, headers=headers)


def part_number_param(raw: str | None) -> int:
    if raw is None or not raw.isdigit() or not 1 <= int(raw) <= MAX_PARTS:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive")
    return int(raw)


async def upload_part(req: S3Request) -> web.StreamResponse:
    number = part_number_param(req.query.get("partNumber"))
    upload = await load_upload(req)
    stored = await store_body(req, req.rt.config.storage.max_put_size, inline=False)  # parts concatenate
    if upload.checksum_algorithm and stored.checksum["algorithm"] != upload.checksum_algorithm:
        await req.rt.ingestor.discard(stored.result)
        raise S3Error(
            "InvalidRequest",
            f"The upload was created using the {upload.checksum_algorithm} checksum algorithm.",
        )
    part = Part(
        part_number=number,
        size=stored.result.size,
        etag=stored.payload.md5.hexdigest(),
        last_modified=now(),
        manifest=stored.result.manifest,
        checksum=stored.checksum,
    )
    try:
        await req.rt.meta.put_part(upload.upload_id, part, stored.result.staged)
    except BaseException:
        await req.rt.ingestor.discard(stored.result)
        raise
    headers = {"ETag": f'"{part.etag}"'}
    if stored.payload.client_checksum:
        headers.update(checksum_headers(stored.checksum))
        headers.pop("x-amz-checksum-type", None)
    return web.Response(status=200, headers=headers)


def _requested_parts(body: bytes) -> list[tuple[int, str, dict[str, str]]]:
    root = parse(body)
    if root.tag != "CompleteMultipartUpload":
        raise S3Error("MalformedXML")
    out = []
    for el in root.findall("Part"):
        number, etag = child_text(el, "PartNumber"), child_text(el, "ETag")
        if number is None or etag is None or not number.strip().isdigit():
            raise S3Error("MalformedXML")
        sums = {a: v.strip() for a, tag in _TAG.items() if (v := child_text(el, tag)) is not None}
        out.append((int(number), etag.strip().strip('"'), sums))
    if not out:
        raise S3Error(
            "MalformedXML",
            "The XML you provided was not well-formed or did not validate against our published schema",
        )
    return out


async def _all_parts(req: S3Request, upload_id: str) -> dict[int, Part]:
    parts: dict[int, Part] = {}
    after = 0
    while batch := await req.rt.meta.list_parts(upload_id, after, 1000):
        parts.update((p.part_number, p) for p in batch)
        after = batch[-1].part_number
    return parts


def _final_checksum(upload: MultipartUpload, chosen: list[Part]) -> dict[str, str]:
    algo = upload.checksum_algorithm
    digests = []
    for p in chosen:
        if not p.checksum:
            return {}
        if p.checksum["algorithm"] != (algo or "CRC64NVME"):
            return {}
        digests.append(base64.b64decode(p.checksum["value"]))
    if algo is None or upload.checksum_type == "FULL_OBJECT":
        combined = combine_full_object_crc(
            algo or "CRC64NVME", [(d, p.size) for d, p in zip(digests, chosen, strict=True)]
        )
        return {
            "algorithm": algo or "CRC64NVME",
            "value": base64.b64encode(combined).decode(),
            "type": "FULL_OBJECT",
        }
    return {"algorithm": algo, "value": composite_checksum(algo, digests), "type": "COMPOSITE"}


async def complete_upload(req: S3Request) -> web.StreamResponse:
    """CompleteMultipartUpload. If completing takes longer than the keep-alive interval, a
    200 is sent at once and whitespace keeps the connection alive until the result document
    (or, as S3 does, an Error document inside the 200) follows."""
    interval = req.rt.config.server.complete_keepalive_seconds
    work = asyncio.ensure_future(_complete(req))
    done, _ = await asyncio.wait({work}, timeout=interval)
    if work in done:
        body, headers = work.result()
        return web.Response(body=body, content_type=XML, headers=headers)
    resp = web.StreamResponse(status=200, headers={"Content-Type": XML})
    try:
        await resp.prepare(req.http)
        await resp.write(XML_DECLARATION)  # S3 sends the declaration first: whitespace may follow it
        while work not in done:
            await resp.write(b" ")
            done, _ = await asyncio.wait({work}, timeout=max(interval, 0.05))
    except BaseException:
        await asyncio.wait({work})  # the commit completes even if the client went away
        raise
    try:
        body, _ = work.result()
    except S3Error as err:
        body = err.to_xml(req.http.path, req.request_id)
    await resp.write(body.removeprefix(XML_DECLARATION))
    await resp.write_eof()
    return resp


async def _complete(req: S3Request) -> tuple[bytes, dict[str, str]]:
    assert req.bucket is not None and req.key is not None
    upload = await load_upload(req)
    condition = await req.write_condition()
    requested = _requested_parts(await req.read_document())
    stored = await _all_parts(req, upload.upload_id)
    chosen: list[Part] = []
    previous = 0
    for index, (number, etag, sums) in enumerate(requested):
        if number <= previous:
            raise S3Error("InvalidPartOrder")
        previous = number
        part = stored.get(number)
        if part is None or part.etag != etag:
            raise S3Error("InvalidPart", UploadId=upload.upload_id, PartNumber=str(number), ETag=etag)
        for algo, value in sums.items():
            if not part.checksum or part.checksum["algorithm"] != algo or part.checksum["value"] != value:
                raise S3Error("InvalidPart", UploadId=upload.upload_id, PartNumber=str(number), ETag=etag)
        if index < len(requested) - 1 and part.size < MIN_PART_SIZE:
            raise S3Error(
                "EntityTooSmall",
                ProposedSize=str(part.size),
                MinSizeAllowed=str(MIN_PART_SIZE),
                PartNumber=str(number),
            )
        chosen.append(part)
    manifest_parts = [p.manifest for p in chosen]
    try:
        md5s = [binascii.unhexlify(p.etag) for p in chosen]
    except binascii.Error as exc:
        raise S3Error("InvalidPart") from exc
    version = ObjectVersion(
        bucket=req.bucket,
        key=req.key,
        version_id=await versioning.version_id_for_write(req),
        size=sum(p.size for p in chosen),
        etag=multipart_etag(md5s),
        last_modified=now(),
        manifest=Manifest.concat(manifest_parts),
        content_type=upload.content_type,
        headers=upload.headers,
        user_meta=upload.user_meta,
        checksum=_final_checksum(upload, chosen),
        parts=len(chosen),
        tags=upload.tags,
    )
    if not await req.rt.meta.complete_upload(upload.upload_id, version, condition):
        raise S3Error("NoSuchUpload", UploadId=upload.upload_id)
    children: list[Node] = [
        ("Location", f"/{req.bucket}/{req.key}"),
        ("Bucket", req.bucket),
        ("Key", req.key),
        ("ETag", f'"{version.etag}"'),
    ]
    if version.checksum and upload.checksum_algorithm:
        children.append((_TAG[version.checksum["algorithm"]], version.checksum["value"]))
        children.append(("ChecksumType", version.checksum["type"]))
    return document("CompleteMultipartUploadResult", children), version_header(version.version_id)


async def abort_upload(req: S3Request) -> web.StreamResponse:
    upload = await load_upload(req)
    if not await req.rt.meta.abort_upload(upload.upload_id):
        raise S3Error("NoSuchUpload", UploadId=upload.upload_id)
    return web.Response(status=204)


async def list_parts(req: S3Request) -> web.StreamResponse:
    upload = await load_upload(req)
    max_parts = count_param(req, "max-parts")
    marker = count_param(req, "part-number-marker", 0)
    parts = await req.rt.meta.list_parts(upload.upload_id, marker, max_parts + 1)
    truncated = len(parts) > max_parts
    parts = parts[:max_parts]
    children: list[Node] = [
        ("Bucket", upload.bucket),
        ("Key", upload.key),
        ("UploadId", upload.upload_id),
        owner_node(upload.owner),
        ("Initiator", [("ID", upload.owner), ("DisplayName", upload.owner)]),
        ("StorageClass", "STANDARD"),
        ("PartNumberMarker", marker),
        ("NextPartNumberMarker", parts[-1].part_number if parts else marker),
        ("MaxParts", max_parts),
        ("IsTruncated", truncated),
    ]
    if upload.checksum_algorithm:
        children.append(("ChecksumAlgorithm", upload.checksum_algorithm))
        children.append(("ChecksumType", upload.checksum_type or "COMPOSITE"))
    for p in parts:
        part_children: list[Node] = [
            ("PartNumber", p.part_number),
            ("LastModified", iso8601(p.last_modified)),
            ("ETag", f'"{p.etag}"'),
            ("Size", p.size),
        ]
        if upload.checksum_algorithm and p.checksum:
            part_children.append((_TAG[p.checksum["algorithm"]], p.checksum["value"]))
        children.append(("Part", part_children))
    return web.Response(body=document("ListPartsResult", children), content_type=XML)


async def list_uploads(req: S3Request) -> web.StreamResponse:
    """ListMultipartUploads: prefix, delimiter, key-marker / upload-id-marker, max-uploads."""
    bucket = await req.owned_bucket()
    q = req.query
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    key_marker, id_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
    max_uploads = count_param(req, "max-uploads")
    enc = url_encoder(req)

    def fetch(cursor: Cursor, limit: int) -> Awaitable[list[MultipartUpload]]:
        return req.rt.meta.list_uploads(
            bucket.name, prefix, cursor.key, cursor.inclusive, cursor.tiebreak, limit
        )

    start = Cursor(key_marker, tiebreak=id_marker if key_marker else "")
    page = await paginate(
        fetch, lambda u: u.key, prefix, delimiter, start, max_uploads, lambda u: u.upload_id
    )
    children: list[Node] = [
        ("Bucket", bucket.name),
        ("KeyMarker", enc(key_marker)),
        ("UploadIdMarker", id_marker),
        ("Prefix", enc(prefix)),
        ("Delimiter", enc(delimiter)) if delimiter else None,
        ("MaxUploads", max_uploads),
        ("IsTruncated", page.truncated),
    ]
    if page.truncated and page.last is not None:
        last_id = page.last_item.upload_id if page.last_item and page.last_item.key == page.last else ""
        children += [("NextKeyMarker", enc(page.last)), ("NextUploadIdMarker", last_id)]
    for u in page.items:
        children.append(
            (
                "Upload",
                [
                    ("Key", enc(u.key)),
                    ("UploadId", u.upload_id),
                    ("Initiator", [("ID", u.owner), ("DisplayName", u.owner)]),
                    owner_node(u.owner),
                    ("StorageClass", "STANDARD"),
                    ("Initiated", iso8601(u.initiated)),
                ],
            )
        )
    children.extend(("CommonPrefixes", [("Prefix", enc(p))]) for p in page.prefixes)
    return web.Response(body=document("ListMultipartUploadsResult", children), content_type=XML)
