"""Object and bucket tagging: Put/Get/DeleteObjectTagging and Put/Get/DeleteBucketTagging."""

from __future__ import annotations

import json

from aiohttp import web

from gateway.s3 import tags
from gateway.s3.errors import S3Error
from gateway.s3.handlers.buckets import XML
from gateway.s3.handlers.objects import load_version, version_header
from gateway.s3.request import S3Request
from gateway.s3.xml import document

CONFIG = "tagging"


async def put_object_tagging(req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    version = await load_version(req)
    tagset = tags.parse_document(await req.read_document(), tags.MAX_OBJECT_TAGS)
    if not await req.rt.meta.set_object_tags(req.bucket, req.key, version.version_id, tagset):
        raise S3Error("NoSuchKey", Key=req.key)
    return web.Response(status=200, headers=version_header(version.version_id))


async def get_object_tagging(req: S3Request) -> web.StreamResponse:
    version = await load_version(req)
    body = document("Tagging", tags.tagset_nodes(version.tags))
    return web.Response(body=body, content_type=XML, headers=version_header(version.version_id))


async def delete_object_tagging(req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    version = await load_version(req)
    await req.rt.meta.set_object_tags(req.bucket, req.key, version.version_id, {})
    return web.Response(status=204, headers=version_header(version.version_id))


async def put_bucket_tagging(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    tagset = tags.parse_document(await req.read_document(), tags.MAX_BUCKET_TAGS)
    await req.rt.meta.put_bucket_config(bucket.name, CONFIG, json.dumps(tagset))
    return web.Response(status=204)


async def get_bucket_tagging(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    stored = await req.rt.meta.get_bucket_config(bucket.name, CONFIG)
    if stored is None:
        raise S3Error("NoSuchTagSet", BucketName=bucket.name)
    return web.Response(body=document("Tagging", tags.tagset_nodes(json.loads(stored))), content_type=XML)


async def delete_bucket_tagging(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    await req.rt.meta.put_bucket_config(bucket.name, CONFIG, None)
    return web.Response(status=204)
