"""POST Object: browser-based form uploads (``POST /bucket``, ``multipart/form-data``).

The form authenticates itself (a SigV4-signed POST policy, see ``gateway.s3.postpolicy``), so
this handler runs before, and instead of, header authentication. The body is read as a
stream with aiohttp's multipart reader: the fields that precede ``file`` are read (at most
20 KiB together), checked, and then the file part is streamed into the ingest pipeline
exactly like a PutObject body, with ``content-length-range`` enforced as bytes arrive (too
large: the upload stops at once; too small: refused before anything is stored). Fields after
``file`` are ignored, as S3 does. A failed upload leaves nothing visible: the packs of an
ingest that fails or does not commit are deleted.

Answers: 204 by default; 200 or 201 (with a ``PostResponse`` document) when
``success_action_status`` asks for it; 303 to ``success_action_redirect`` (with ``bucket``,
``key`` and ``etag`` added to its query) when that is an http(s) URL.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import quote, urlencode, urlsplit

from aiohttp import BodyPartReader, MultipartReader, web

from gateway.runtime import Runtime
from gateway.s3 import tags
from gateway.s3.acl import CANNED
from gateway.s3.addressing import validate_key
from gateway.s3.body import DEFAULT_CHECKSUM
from gateway.s3.checksums import new_checksum
from gateway.s3.errors import S3Error
from gateway.s3.handlers.objects import commit_version, version_header
from gateway.s3.postpolicy import (
    MAX_FORM_BYTES,
    Policy,
    auth_fields,
    decode_policy,
    expand_filename,
    missing_field,
    verify_signature,
)
from gateway.s3.request import META_PREFIX, STANDARD_HEADERS, S3Request
from gateway.s3.sigv4 import derive_signing_key
from gateway.s3.xml import document

EVENT = "ObjectCreated:Post"
FILE_CHUNK = 256 * 1024
FIELD_CHUNK = 8192
MAX_FIELDS = 1000
_QUOTED_FILENAME = re.compile(r'(?:^|;)\s*filename\s*=\s*"([^"]*)"', re.IGNORECASE)


def is_form_upload(content_type: str | None) -> bool:
    """Whether a bucket ``POST`` is a browser form upload."""
    return (content_type or "").split(";", 1)[0].strip().lower() == "multipart/form-data"


def _malformed(exc: BaseException) -> S3Error:
    if isinstance(exc, OSError):  # the connection went away mid-body
        return S3Error("IncompleteBody")
    return S3Error("MalformedPOSTRequest")


async def _read_chunk(part: BodyPartReader, size: int) -> bytes:
    """The part's next bytes; ``b""`` only at its closing boundary. (aiohttp's ``read_chunk``
    also answers ``b""`` when the body ends inside the part: a truncated form, refused.)"""
    try:
        chunk = await part.read_chunk(size)
    except Exception as exc:
        raise _malformed(exc) from exc
    if not chunk and not part.at_eof():
        raise S3Error("MalformedPOSTRequest", "The body of your POST request ended inside a form field.")
    return chunk


async def _read_fields(reader: MultipartReader) -> tuple[dict[str, str], BodyPartReader | None]:
    """The fields before ``file`` (lower-case names; repeated fields joined with commas), and
    the file part (``None`` if the form has none)."""
    fields: dict[str, str] = {}
    used = 0
    for _ in range(MAX_FIELDS):
        try:
            part = await reader.next()
        except Exception as exc:
            raise _malformed(exc) from exc
        if part is None:
            return fields, None
        if not isinstance(part, BodyPartReader) or not part.name:
            raise S3Error("MalformedPOSTRequest")
        name = part.name.lower()
        if name == "file":
            return fields, part
        value = bytearray()
        used += len(name)
        while chunk := await _read_chunk(part, FIELD_CHUNK):
            value += chunk
            used += len(chunk)
            if used > MAX_FORM_BYTES:
                raise S3Error("MaxPostPreDataLengthExceededError")
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise S3Error("InvalidArgument", f"The field {name} is not UTF-8.", ArgumentName=name) from exc
        fields[name] = f"{fields[name]},{text}" if name in fields else text
    raise S3Error("MaxPostPreDataLengthExceededError")


class _FileStream:
    """The file part's bytes, counted against ``content-length-range`` as they arrive."""

    def __init__(self, part: BodyPartReader, policy: Policy) -> None:
        self._part = part
        self._policy = policy
        self.size = 0

    async def pieces(self) -> AsyncIterator[bytes]:
        high = self._policy.length_range[1] if self._policy.length_range else None
        while chunk := await _read_chunk(self._part, FILE_CHUNK):
            self.size += len(chunk)
            if high is not None and self.size > high:
                raise S3Error(
                    "EntityTooLarge",
                    "Your proposed upload exceeds the maximum allowed size",
                    MaxSizeAllowed=str(high),
                )
            yield chunk

    def verify(self) -> None:
        """Runs once every byte is in, before the last chunks are stored."""
        self._policy.check_length(self.size)


def client_filename(part: BodyPartReader) -> str | None:
    """The file name as the client sent it. Browsers send backslashes unescaped (old ones a
    whole ``C:\\dir\\name`` path) and encode quotes as ``%22``, so a quoted name is taken
    verbatim rather than unescaped as RFC 2616 would; ``filename*`` goes through aiohttp."""
    header = part.headers.get("Content-Disposition", "")
    if "filename*" not in header.lower():
        m = _QUOTED_FILENAME.search(header)
        if m is not None:
            return m.group(1)
    return part.filename


def _object_fields(fields: dict[str, str]) -> tuple[str, dict[str, str], dict[str, str]]:
    """(content type, standard headers, user metadata) from the form, as PutObject takes
    them from headers; the file part's own Content-Type is ignored, as by S3."""
    content_type = fields.get("content-type") or "binary/octet-stream"
    standard = {name: fields[name] for name in STANDARD_HEADERS if name in fields}
    meta = {k[len(META_PREFIX) :]: v for k, v in fields.items() if k.startswith(META_PREFIX)}
    return content_type, standard, meta


def _location(http: web.Request, key: str) -> str:
    base = str(http.url.with_query(None)).rstrip("/")
    return f"{base}/{quote(key, safe='/~')}"


def _redirect(target: str, bucket: str, key: str, etag: str) -> str | None:
    """``success_action_redirect`` with bucket, key and etag added; ``None`` if S3 would
    not interpret it (then the field is ignored)."""
    try:
        parts = urlsplit(target)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    extra = urlencode({"bucket": bucket, "key": key, "etag": f'"{etag}"'})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return parts._replace(query=query).geturl()


async def post_object(
    http: web.Request, rt: Runtime, request_id: str, bucket_name: str | None, _key: str | None
) -> web.StreamResponse:
    assert bucket_name is not None
    try:
        reader = await http.multipart()
    except Exception as exc:
        raise S3Error("MalformedPOSTRequest") from exc
    fields, file_part = await _read_fields(reader)

    auth = auth_fields(fields)
    if auth is None:
        raise S3Error("AccessDenied", "Anonymous access is not allowed.")
    principal = await rt.identities.principal(auth.access_key)
    if principal is None:
        raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=auth.access_key)
    verify_signature(derive_signing_key(principal.secret, auth.date, auth.region), auth)
    policy = decode_policy(auth.policy)
    policy.check_expiry(datetime.now(UTC))
    if file_part is None:
        raise S3Error(
            "InvalidArgument",
            "POST requires exactly one file upload per request.",
            ArgumentName="file",
            ArgumentValue="0",
        )
    fields = expand_filename(fields, client_filename(file_part))
    key = fields.get("key")
    if not key:
        raise missing_field("key")

    req = S3Request(http, rt, request_id, bucket_name, key, principal, None)
    bucket = await req.owned_bucket()
    policy.check_fields(fields, bucket.name)
    validate_key(key)
    acl = fields.get("acl")
    if acl is not None and acl not in CANNED:
        raise S3Error("InvalidArgument", f"Invalid canned ACL {acl!r}", ArgumentName="acl")
    tagging = fields.get("tagging")
    object_tags = tags.parse_document(tagging.encode(), tags.MAX_OBJECT_TAGS) if tagging else {}
    content_type, standard, meta = _object_fields(fields)

    stream = _FileStream(file_part, policy)
    md5, checksum = hashlib.md5(), new_checksum(DEFAULT_CHECKSUM)
    dedup_key = await rt.identities.dedup_key(principal.user)
    max_size = rt.config.storage.max_put_size
    digests = [md5, checksum]
    verify = stream.verify
    result = await rt.ingestor.ingest(stream.pieces(), dedup_key, digests, max_size, verify, inline=True)
    record = {
        "algorithm": DEFAULT_CHECKSUM,
        "value": base64.b64encode(checksum.digest()).decode(),
        "type": "FULL_OBJECT",
    }
    etag = md5.hexdigest()
    version = await commit_version(
        req, result, etag, record, content_type, standard, meta, object_tags, event=EVENT
    )

    location = _location(http, key)
    headers = {"ETag": f'"{etag}"', "Location": location, **version_header(version.version_id)}
    target = fields.get("success_action_redirect") or fields.get("redirect")
    if target and (url := _redirect(target, bucket.name, key, etag)):
        headers["Location"] = url
        return web.Response(status=303, headers=headers)
    status = fields.get("success_action_status")
    if status == "201":
        body = document(
            "PostResponse",
            [("Location", location), ("Bucket", bucket.name), ("Key", key), ("ETag", f'"{etag}"')],
        )
        return web.Response(status=201, body=body, content_type="application/xml", headers=headers)
    if status == "200":
        return web.Response(status=200, headers=headers)
    return web.Response(status=204, headers=headers)
