"""Bucket operations: ListBuckets, CreateBucket, HeadBucket, DeleteBucket, GetBucketLocation."""

from __future__ import annotations

from aiohttp import web

from gateway.meta.models import Bucket
from gateway.s3.acl import check_acl_headers
from gateway.s3.addressing import validate_bucket_name
from gateway.s3.errors import S3Error
from gateway.s3.request import S3Request, now
from gateway.s3.xml import child_text, document, iso8601, parse, text_document

XML = "application/xml"


def owner_node(user: str) -> tuple[str, list]:
    return ("Owner", [("ID", user), ("DisplayName", user)])


async def list_buckets(req: S3Request) -> web.StreamResponse:
    buckets = await req.rt.meta.list_buckets(req.principal.user)
    body = document(
        "ListAllMyBucketsResult",
        [
            owner_node(req.principal.user),
            (
                "Buckets",
                [("Bucket", [("Name", b.name), ("CreationDate", iso8601(b.created))]) for b in buckets],
            ),
        ],
    )
    return web.Response(body=body, content_type=XML)


async def create_bucket(req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    validate_bucket_name(req.bucket)
    check_acl_headers(req.headers)
    region = req.rt.config.server.region
    body = await req.read_document()
    if body.strip():
        constraint = child_text(parse(body), "LocationConstraint")
        # s3fs sends the region even for us-east-1; accept our own region under any spelling S3 allows.
        if constraint not in (None, "", region) and not (region == "us-east-1" and constraint == "US"):
            raise S3Error(
                "IllegalLocationConstraintException",
                f"The {constraint} location constraint is incompatible for the region specific endpoint "
                "this request was sent to.",
            )
    created = await req.rt.meta.create_bucket(Bucket(req.bucket, req.principal.user, region, now()))
    if not created:
        existing = await req.rt.meta.get_bucket(req.bucket)
        if existing is not None and existing.owner == req.principal.user:
            if region == "us-east-1":  # S3 legacy: us-east-1 answers 200 to a re-create by the owner
                return web.Response(status=200, headers={"Location": f"/{req.bucket}"})
            raise S3Error("BucketAlreadyOwnedByYou", BucketName=req.bucket)
        raise S3Error("BucketAlreadyExists", BucketName=req.bucket)
    return web.Response(status=200, headers={"Location": f"/{req.bucket}"})


async def head_bucket(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    return web.Response(status=200, headers={"x-amz-bucket-region": bucket.region})


async def delete_bucket(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    await req.rt.meta.delete_bucket(bucket.name)
    return web.Response(status=204)


async def get_bucket_location(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    # S3 answers an empty LocationConstraint for us-east-1.
    region = "" if bucket.region == "us-east-1" else bucket.region
    body = text_document("LocationConstraint", region)
    return web.Response(body=body, content_type=XML)
