"""Bucket CORS: PutBucketCors, GetBucketCors, DeleteBucketCors, the unauthenticated
preflight (``OPTIONS``), and the CORS headers on actual requests that carry ``Origin``.

The rules of a bucket are read through :class:`CorsSupport`, a small in-process cache of
parsed configurations (absent ones too). Put/DeleteBucketCors invalidate their bucket after
the write commits, and so does every bucket-level ``DELETE`` (DeleteBucket drops the
configuration with the bucket); a lookup that overlapped any invalidation is not stored, so
this process never serves rules older than its last acknowledged write. Entries also expire
after ``ttl`` seconds, which bounds staleness should another process share the metadata.
"""

from __future__ import annotations

import collections
import logging
import time

from aiohttp import web

from gateway.runtime import Runtime
from gateway.s3.addressing import resolve
from gateway.s3.cors import (
    MAX_DOCUMENT,
    NO_BUCKET,
    CorsRule,
    actual_headers,
    check_preflight,
    find_rule,
    parse_config,
    preflight_headers,
    render_config,
)
from gateway.s3.errors import S3Error
from gateway.s3.request import S3Request

log = logging.getLogger("strata.cors")
CONFIG_NAME = "cors"
Rules = tuple[CorsRule, ...]


class CorsSupport:
    """Per-process cache of bucket CORS rules, and the response hook that applies them."""

    def __init__(self, rt: Runtime, ttl: float = 30.0, max_entries: int = 10_000) -> None:
        self.rt = rt
        self._ttl = ttl
        self._max = max_entries
        self._entries: collections.OrderedDict[str, tuple[float, Rules | None]] = collections.OrderedDict()
        self._invalidations = 0

    async def rules(self, bucket: str) -> Rules | None:
        """The bucket's rules, or ``None`` when it has no configuration (or does not exist)."""
        hit = self._entries.get(bucket)
        if hit is not None and hit[0] > time.monotonic():
            self._entries.move_to_end(bucket)
            return hit[1]
        before = self._invalidations
        body = await self.rt.meta.get_bucket_config(bucket, CONFIG_NAME)
        rules: Rules | None = None
        if body is not None:
            try:
                rules = parse_config(body.encode())
            except S3Error:  # stored documents were validated on the way in
                log.error("unreadable CORS configuration stored for bucket %s", bucket)
        if before == self._invalidations:
            self._entries[bucket] = (time.monotonic() + self._ttl, rules)
            self._entries.move_to_end(bucket)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return rules

    def invalidate(self, bucket: str) -> None:
        self._invalidations += 1
        self._entries.pop(bucket, None)

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Add CORS headers to a response whose request carried ``Origin`` and matched a rule."""
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" or not (origin or request.method == "DELETE"):
            return  # preflights answer with their own headers; without Origin, no CORS
        try:
            bucket, key = resolve(request.host, request.path, self.rt.config.server.domains)
            if bucket is None:
                return
            if request.method == "DELETE" and key is None:  # DeleteBucket drops the configuration
                self.invalidate(bucket)
            if not origin:
                return
            rules = await self.rules(bucket)
            if rules is None:
                return
            rule = find_rule(rules, origin, request.method)
            if rule is not None:
                response.headers.update(actual_headers(rule, origin))
            else:
                response.headers["Vary"] = "Origin"
        except Exception:  # a response must never fail for its CORS headers
            log.exception("CORS headers for %s %s", request.method, request.path)


CORS: web.AppKey[CorsSupport] = web.AppKey("cors", CorsSupport)


def install(app: web.Application, rt: Runtime) -> None:
    """Register the per-process CORS cache and the response hook on ``app``."""
    support = app[CORS] = CorsSupport(rt)
    app.on_response_prepare.append(support.on_response_prepare)


def _support(req: S3Request) -> CorsSupport:
    return req.http.app[CORS]


async def put_bucket_cors(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    rules = parse_config(await req.read_document(limit=MAX_DOCUMENT, require_digest=True))
    await req.rt.meta.put_bucket_config(bucket.name, CONFIG_NAME, render_config(rules).decode())
    _support(req).invalidate(bucket.name)
    return web.Response(status=200)


async def get_bucket_cors(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    body = await req.rt.meta.get_bucket_config(bucket.name, CONFIG_NAME)
    if body is None:
        raise S3Error("NoSuchCORSConfiguration", BucketName=bucket.name)
    return web.Response(body=body.encode(), content_type="application/xml")


async def delete_bucket_cors(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    await req.rt.meta.put_bucket_config(bucket.name, CONFIG_NAME, None)
    _support(req).invalidate(bucket.name)
    return web.Response(status=204)


async def preflight(
    http: web.Request, rt: Runtime, request_id: str, bucket: str | None, key: str | None
) -> web.StreamResponse:
    """``OPTIONS``: answered from the bucket's CORS rules, without authentication."""
    origin, method = check_preflight(
        http.headers.get("Origin"), http.headers.get("Access-Control-Request-Method")
    )
    if bucket is None or await rt.meta.get_bucket(bucket) is None:
        raise S3Error("AccessForbidden", NO_BUCKET, Method=method, ResourceType="BUCKET")
    rules = await http.app[CORS].rules(bucket)
    headers = preflight_headers(
        rules,
        origin,
        method,
        http.headers.get("Access-Control-Request-Headers"),
        resource_type="OBJECT" if key else "BUCKET",
    )
    return web.Response(status=200, headers=headers)
