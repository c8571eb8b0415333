"""Bucket notifications: PutBucketNotificationConfiguration and
GetBucketNotificationConfiguration (``?notification``).

The document is validated by :mod:`gateway.s3.notification` and stored normalised as the
bucket's ``notification`` config; the event relay (:mod:`gateway.events`) reads it to pick
each event's Kafka topics. A bad document is refused before anything is written.
"""

from __future__ import annotations

from aiohttp import web

from gateway.events import NOTIFICATION_CONFIG
from gateway.s3.notification import MAX_DOCUMENT, parse_config, render_config
from gateway.s3.request import S3Request


async def put_bucket_notification(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    rules = parse_config(await req.read_document(limit=MAX_DOCUMENT))
    body = render_config(rules).decode() if rules else None  # empty: removed (default topic again)
    await req.rt.meta.put_bucket_config(bucket.name, NOTIFICATION_CONFIG, body)
    return web.Response(status=200)


async def get_bucket_notification(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    body = await req.rt.meta.get_bucket_config(bucket.name, NOTIFICATION_CONFIG)
    document = body.encode() if body is not None else render_config(())
    return web.Response(body=document, content_type="application/xml")
