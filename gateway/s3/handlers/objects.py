"""Object operations: PutObject, GetObject, HeadObject, DeleteObject."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from dataclasses import dataclass

from aiohttp import web

from dedup.manifest import Manifest
from gateway.ingest import IngestResult
from gateway.meta.models import NULL_VERSION, ObjectVersion, WriteCondition
from gateway.observability.record import current as observation
from gateway.s3 import tags
from gateway.s3.acl import check_acl_headers
from gateway.s3.addressing import validate_key
from gateway.s3.body import PayloadReader
from gateway.s3.checksums import header_name
from gateway.s3.conditions import check_preconditions
from gateway.s3.errors import S3Error
from gateway.s3.handlers import versioning
from gateway.s3.ranges import parse_range
from gateway.s3.request import S3Request, now
from gateway.s3.xml import Node, child_text, document, http_date, parse
from gateway.socket_recv import ThreadedBodyReader
from gateway.socket_send import MIN_PIECE, ThreadedBodyWriter, write_each

log = logging.getLogger("strata.s3")


@dataclass(frozen=True)
class StoredBody:
    payload: PayloadReader
    result: IngestResult
    checksum: dict[str, str]


async def store_body(req: S3Request, max_size: int, inline: bool) -> StoredBody:
    """Stream the request body into packs (or, with ``inline`` and a tiny body, into the
    manifest) and verify every digest the client declared.

    On any failure the packs written are deleted before the error propagates.
    """
    rt = req.rt
    payload = PayloadReader(req.http.content, req.headers, req.signing, rt.pool)
    if payload.expected_length is not None and payload.expected_length > max_size:
        raise S3Error("EntityTooLarge", MaxSizeAllowed=str(max_size))
    key = await rt.identities.dedup_key(req.principal.user)
    checksum: dict[str, str] = {}

    def verify() -> None:
        checksum.update(payload.verify())

    # A large raw body is read from the socket by a thread, straight into the batches
    # (gateway/socket_recv.py); its response then closes the connection.
    direct = ThreadedBodyReader.attach(req.http, payload.raw_length, rt.send_pool)
    try:
        source = payload.pieces() if direct is None else direct
        result = await rt.ingestor.ingest(source, key, payload.digests, max_size, verify, inline)
    finally:
        if direct is not None:
            direct.close()
    return StoredBody(payload, result, checksum)


def checksum_headers(checksum: dict[str, str]) -> dict[str, str]:
    if not checksum:
        return {}
    return {
        header_name(checksum["algorithm"]): checksum["value"],
        "x-amz-checksum-type": checksum.get("type", "FULL_OBJECT"),
    }


async def commit_version(
    req: S3Request,
    result: IngestResult,
    etag: str,
    checksum: dict[str, str],
    content_type: str,
    standard: dict[str, str],
    meta: dict[str, str],
    object_tags: dict[str, str],
    *,
    condition: WriteCondition | None = None,
    event: str = "ObjectCreated:Put",
) -> ObjectVersion:
    """Commit an ingested body as the addressed key's new version (PutObject, POST Object).

    If anything fails before the commit completes, the ingest's packs are discarded.
    """
    assert req.bucket is not None and req.key is not None
    try:
        version = ObjectVersion(
            bucket=req.bucket,
            key=req.key,
            version_id=await versioning.version_id_for_write(req),
            size=result.size,
            etag=etag,
            last_modified=now(),
            manifest=result.manifest,
            content_type=content_type,
            headers=standard,
            user_meta=meta,
            checksum=checksum,
            tags=object_tags,
        )
        await req.rt.meta.put_object(version, result.staged, event=event, condition=condition)
    except BaseException:
        await req.rt.ingestor.discard(result)
        raise
    return version


async def put_object(req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    validate_key(req.key)
    await req.owned_bucket()
    rt = req.rt
    condition = await req.write_condition()
    check_acl_headers(req.headers)
    object_tags = tags.parse_header(req.headers.get("x-amz-tagging"))
    stored = await store_body(req, rt.config.storage.max_put_size, inline=True)
    payload, result, checksum = stored.payload, stored.result, stored.checksum
    content_type, standard, meta = req.object_headers()
    etag = payload.md5.hexdigest()
    version = await commit_version(
        req, result, etag, checksum, content_type, standard, meta, object_tags, condition=condition
    )
    headers = {"ETag": f'"{version.etag}"', **version_header(version.version_id)}
    if payload.client_checksum:
        headers.update(checksum_headers(checksum))
    return web.Response(status=200, headers=headers)


def version_header(version_id: str | None) -> dict[str, str]:
    """x-amz-version-id for versions of versioned buckets (null versions go unlabelled)."""
    return {} if version_id in (None, NULL_VERSION) else {"x-amz-version-id": version_id}


async def load_version(req: S3Request) -> ObjectVersion:
    """The addressed version (``versionId``) or the latest; delete markers answer as S3 does."""
    assert req.bucket is not None and req.key is not None
    await req.owned_bucket()
    version_id = req.query.get("versionId")
    if version_id == "":
        raise S3Error("InvalidArgument", "Version id cannot be the empty string", ArgumentName="versionId")
    version = await req.rt.meta.get_object(req.bucket, req.key, version_id)
    if version is None:
        if version_id is not None:
            raise S3Error("NoSuchVersion", Key=req.key, VersionId=version_id)
        raise S3Error("NoSuchKey", Key=req.key)
    if version.delete_marker:
        if version_id is None:
            err = S3Error("NoSuchKey", Key=req.key)
        else:
            err = S3Error("MethodNotAllowed", Method=req.http.method, ResourceType="DeleteMarker")
        err.headers.update({"x-amz-delete-marker": "true", "x-amz-version-id": version.version_id})
        raise err
    return version


def object_response_headers(v: ObjectVersion) -> dict[str, str]:
    headers = {
        "ETag": f'"{v.etag}"',
        "Last-Modified": http_date(v.last_modified),
        "Content-Type": v.content_type,
        "Accept-Ranges": "bytes",
    }
    headers.update(v.headers)
    headers.update({f"x-amz-meta-{k}": val for k, val in v.user_meta.items()})
    if v.storage_class != "STANDARD":
        headers["x-amz-storage-class"] = v.storage_class
    if v.tags:
        headers["x-amz-tagging-count"] = str(len(v.tags))
    return headers


def _response_overrides(req: S3Request) -> dict[str, str]:
    """response-content-type & co. (honoured for signed requests, as S3 does)."""
    names = {
        "response-content-type": "Content-Type",
        "response-content-language": "Content-Language",
        "response-expires": "Expires",
        "response-cache-control": "Cache-Control",
        "response-content-disposition": "Content-Disposition",
        "response-content-encoding": "Content-Encoding",
    }
    return {header: req.query[q] for q, header in names.items() if q in req.query}


async def get_object(req: S3Request, head: bool = False) -> web.StreamResponse:
    if "partNumber" in req.query:
        raise S3Error("NotImplemented", "GetObject with partNumber is not supported yet.")
    v = await load_version(req)
    try:
        check_preconditions(req.headers, v.etag, v.last_modified)
    except S3Error as err:
        if err.code == "NotModified":
            return web.Response(
                status=304, headers={"ETag": f'"{v.etag}"', "Last-Modified": http_date(v.last_modified)}
            )
        raise
    try:
        span = parse_range(req.headers.get("range"), v.size)
    except S3Error:
        if head:  # HEAD with an unsatisfiable range: 416 without a body
            return web.Response(status=416, headers={"Content-Range": f"bytes */{v.size}"})
        raise
    headers = object_response_headers(v)
    headers.update(version_header(v.version_id))
    headers.update(_response_overrides(req))
    if span is None:
        start, end, status = 0, v.size, 200
        if req.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
            headers.update(checksum_headers(v.checksum))
    else:
        start, end = span
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{v.size}"
    if not head and end - start < 2 * MIN_PIECE:
        return await _small_body_response(req, v.manifest, start, end, status, headers)
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = end - start
    if head:
        await resp.prepare(req.http)
        await resp.write_eof()
        return resp
    sender = ThreadedBodyWriter.attach(req.http, resp, req.rt.send_pool)
    # Runs are opened by the sender's threads where there are any (see gateway/readpath.py).
    # The stream is closed on the way out, not whenever the garbage collector finds it: the
    # runs it reads ahead hold read-ahead budget and memory maps of packs (descriptors).
    runs = req.rt.reader.stream_runs(v.manifest, start, end, defer=sender is not None)
    try:
        async with contextlib.aclosing(runs):
            # The first run is read (and opened) before the status line goes out, so that a
            # backend that is down (or data that is lost) still gets a proper error response
            # (503 SlowDown, 500).
            first = await anext(runs, None)
            await resp.prepare(req.http)
            write = functools.partial(write_each, resp) if sender is None else sender.write
            try:
                if first is not None:
                    await write(first)  # never deferred
                    del first
                async for run in runs:
                    await write(run)  # deferred only when there is a sender
            except (ConnectionResetError, asyncio.CancelledError):
                raise
            except Exception as exc:
                # The status line is out: the one honest signal left is to cut the
                # connection, so the client sees a short body at once instead of waiting
                # for bytes that will never come.
                log.exception("aborting GET %s/%s after the headers were sent", v.bucket, v.key)
                if req.http.transport is not None:
                    req.http.transport.abort()
                raise ConnectionResetError("response aborted after the headers were sent") from exc
    finally:
        if sender is not None:
            sender.close()
    await resp.write_eof()
    return resp


async def _small_body_response(
    req: S3Request, manifest: Manifest, start: int, end: int, status: int, headers: dict[str, str]
) -> web.Response:
    """A body under ``2 * MIN_PIECE`` bytes, read whole before anything is sent: the status
    line, the headers and the body then leave in one write (one system call, where a
    streamed response costs two), and a failed read is still a proper error response."""
    body = b"".join([piece async for piece in req.rt.reader.stream(manifest, start, end)])
    return web.Response(status=status, headers=headers, body=body)


async def head_object(req: S3Request) -> web.StreamResponse:
    return await get_object(req, head=True)


async def delete_object(req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    await req.owned_bucket()
    outcome = await versioning.delete_current(req, req.key, req.query.get("versionId"))
    headers = version_header(outcome.version_id) if outcome.existed else {}
    if outcome.delete_marker:
        headers["x-amz-delete-marker"] = "true"
    return web.Response(status=204, headers=headers)


def new_upload_id() -> str:
    return secrets.token_urlsafe(24)


MAX_DELETE_KEYS = 1000


def _delete_request(body: bytes) -> tuple[bool, list[tuple[str, str | None]]]:
    root = parse(body)
    if root.tag != "Delete":
        raise S3Error("MalformedXML")
    quiet = (child_text(root, "Quiet") or "").strip().lower() == "true"
    keys = []
    for el in root.findall("Object"):
        key = child_text(el, "Key")
        if key is None:
            raise S3Error("MalformedXML")
        keys.append((key, child_text(el, "VersionId")))
    if not keys or len(keys) > MAX_DELETE_KEYS:
        raise S3Error("MalformedXML")
    return quiet, keys


async def delete_objects(req: S3Request) -> web.StreamResponse:
    """DeleteObjects: up to 1000 keys; each result reported unless quiet."""
    await req.owned_bucket()
    quiet, keys = _delete_request(await req.read_document(require_digest=True))
    children: list[Node] = []
    observed = observation()
    for key, version_id in keys:
        try:
            validate_key(key)
            outcome = await versioning.delete_current(req, key, version_id)
        except S3Error as err:
            children.append(("Error", [("Key", key), ("Code", err.code), ("Message", err.message)]))
            continue
        if observed is not None:  # audited one record per key
            observed.deleted.append((key, version_id or outcome.version_id))
        if not quiet:
            entry: list[Node] = [("Key", key)]
            if version_id is not None:
                entry.append(("VersionId", version_id))
            if outcome.delete_marker:
                entry.append(("DeleteMarker", True))
                if version_id is None and outcome.version_id:
                    entry.append(("DeleteMarkerVersionId", outcome.version_id))
            children.append(("Deleted", entry))
    return web.Response(body=document("DeleteResult", children), content_type="application/xml")


ATTRIBUTES = {"ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"}


async def get_object_attributes(req: S3Request) -> web.StreamResponse:
    """GetObjectAttributes. ObjectParts reports TotalPartsCount only (parts are not kept
    individually after completion)."""
    raw = req.headers.get("x-amz-object-attributes", "")
    wanted = {a.strip() for a in raw.split(",") if a.strip()}
    if not wanted or wanted - ATTRIBUTES:
        raise S3Error(
            "InvalidArgument", "Invalid attribute name specified.", ArgumentName="x-amz-object-attributes"
        )
    v = await load_version(req)
    check_preconditions(req.headers, v.etag, v.last_modified)
    children: list[Node] = []
    if "ETag" in wanted:
        children.append(("ETag", v.etag))
    if "Checksum" in wanted and v.checksum:
        children.append(
            ("Checksum", [(f"Checksum{v.checksum['algorithm']}", v.checksum["value"]),
                          ("ChecksumType", v.checksum.get("type", "FULL_OBJECT"))])
        )  # fmt: skip
    if "ObjectParts" in wanted and v.parts:
        children.append(("ObjectParts", [("TotalPartsCount", v.parts), ("PartsCount", v.parts)]))
    if "StorageClass" in wanted:
        children.append(("StorageClass", v.storage_class))
    if "ObjectSize" in wanted:
        children.append(("ObjectSize", v.size))
    headers = {"Last-Modified": http_date(v.last_modified), **version_header(v.version_id)}
    return web.Response(
        body=document("GetObjectAttributesResponse", children),
        content_type="application/xml",
        headers=headers,
    )
