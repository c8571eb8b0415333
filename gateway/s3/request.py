"""The per-request context handed to S3 operation handlers: addressing, the authenticated
principal, and helpers shared by every operation (ownership checks, header extraction)."""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote_to_bytes

from aiohttp import web
from multidict import CIMultiDictProxy, MultiDictProxy

from gateway.identity import Principal
from gateway.ingest import update_digests
from gateway.meta.models import Bucket, WriteCondition
from gateway.runtime import Runtime
from gateway.s3.body import PayloadReader
from gateway.s3.errors import S3Error
from gateway.s3.sigv4 import SigningContext, verify_request
from gateway.s3.xml import MAX_XML_BODY

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")
_PRESIGNED_CREDENTIAL = re.compile(r"([^/]+)/")
STANDARD_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires")
META_PREFIX = "x-amz-meta-"


@dataclass
class S3Request:
    http: web.Request
    rt: Runtime
    request_id: str
    bucket: str | None
    key: str | None
    principal: Principal
    signing: SigningContext | None

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self.http.headers

    @property
    def query(self) -> MultiDictProxy[str]:
        return self.http.query

    async def owned_bucket(self) -> Bucket:
        """The addressed bucket, if it exists and belongs to the caller."""
        assert self.bucket is not None
        bucket = await self.rt.meta.get_bucket(self.bucket)
        if bucket is None:
            raise S3Error("NoSuchBucket", BucketName=self.bucket)
        if bucket.owner != self.principal.user:
            raise S3Error("AccessDenied")
        return bucket

    async def read_document(self, limit: int = MAX_XML_BODY, require_digest: bool = False) -> bytes:
        """The whole (small) request body, decoded and verified like an object payload.

        ``require_digest`` demands Content-MD5 or an x-amz-checksum-* (DeleteObjects).
        """
        payload = PayloadReader(self.http.content, self.headers, self.signing, self.rt.pool)
        if require_digest and not (payload.has_content_md5 or payload.client_checksum):
            raise S3Error("InvalidRequest", "Missing required header for this request: Content-MD5")
        body = bytearray()
        async for piece in payload.pieces():
            body += piece
            if len(body) > limit:
                raise S3Error("MalformedXML", "The XML you provided was too large.")
        update_digests(payload.digests, body)
        payload.verify()
        return bytes(body)

    async def write_condition(self) -> WriteCondition | None:
        """If-Match / If-None-Match of a write, pre-checked now and re-checked at commit."""
        if_match = self.headers.get("if-match")
        if_none_match = self.headers.get("if-none-match")
        if if_match is None and if_none_match is None:
            return None
        if if_none_match is not None and if_none_match.strip() != "*":
            raise S3Error(
                "NotImplemented", "If-None-Match on writes supports only '*'.", Header="If-None-Match"
            )
        condition = WriteCondition(if_match=if_match, if_none_match=if_none_match is not None)
        assert self.bucket is not None and self.key is not None
        current = await self.rt.meta.get_object(self.bucket, self.key)
        condition.check(None if current is None else current.etag)
        return condition

    def object_headers(self) -> tuple[str, dict[str, str], dict[str, str]]:
        """(content type, standard headers, user metadata) as the client sent them."""
        h = self.headers
        content_type = h.get("content-type", "binary/octet-stream")
        standard: dict[str, str] = {}
        for name in STANDARD_HEADERS:
            if name in h:
                standard[name] = h[name]
        if "content-encoding" in standard:
            codings = [c.strip() for c in standard["content-encoding"].split(",")]
            kept = [c for c in codings if c and c.lower() != "aws-chunked"]
            if kept:
                standard["content-encoding"] = ", ".join(kept)
            else:
                del standard["content-encoding"]
        meta = {k[len(META_PREFIX) :].lower(): v for k, v in h.items() if k.lower().startswith(META_PREFIX)}
        return content_type, standard, meta


@functools.lru_cache(maxsize=8)
def _max_skew(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


async def authenticate(http: web.Request, rt: Runtime) -> tuple[Principal, SigningContext | None]:
    """Verify the request's SigV4 signature; anonymous requests are denied."""
    auth = http.headers.get("authorization", "") or http.query.get("X-Amz-Credential", "")
    m = _CREDENTIAL.search(auth) if "Credential=" in auth else _PRESIGNED_CREDENTIAL.match(auth)
    if m and rt.identities.cached_secret(m.group(1)) is None:
        await rt.identities.principal(m.group(1))  # warm the cache for the sync lookup
    query = http.query
    ctx = verify_request(
        http.method,
        unquote_to_bytes(http.raw_path.partition("?")[0]),
        list(query.items()) if query else [],
        http.headers,
        rt.identities.cached_secret,
        datetime.now(UTC),
        max_skew=_max_skew(rt.config.server.max_clock_skew_seconds),
    )
    if ctx is None:
        raise S3Error("AccessDenied", "Anonymous access is not allowed.")
    principal = await rt.identities.principal(ctx.access_key)
    if principal is None:
        raise S3Error("InvalidAccessKeyId")
    return principal, ctx


def now() -> float:
    return time.time()
