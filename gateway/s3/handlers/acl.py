"""ACLs, as far as Strata has them: every bucket and object is private to its owner.

Canned ACLs are accepted on writes (so clients that send them work) but grant nothing
beyond the owner's FULL_CONTROL; Get*Acl answers exactly that. Grants to other principals
(``x-amz-grant-*`` or an AccessControlPolicy granting others) are ``NotImplemented``.
"""

from __future__ import annotations

from aiohttp import web

from gateway.s3.acl import check_acl_headers
from gateway.s3.handlers.buckets import XML, owner_node
from gateway.s3.handlers.objects import load_version, version_header
from gateway.s3.request import S3Request
from gateway.s3.xml import document


def _policy(owner: str) -> bytes:
    grant = (
        "Grant",
        [
            ("Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"CanonicalUser\"",
             [("ID", owner), ("DisplayName", owner)]),
            ("Permission", "FULL_CONTROL"),
        ],
    )  # fmt: skip
    return document("AccessControlPolicy", [owner_node(owner), ("AccessControlList", [grant])])


async def get_bucket_acl(req: S3Request) -> web.StreamResponse:
    bucket = await req.owned_bucket()
    return web.Response(body=_policy(bucket.owner), content_type=XML)


async def get_object_acl(req: S3Request) -> web.StreamResponse:
    version = await load_version(req)
    bucket = await req.owned_bucket()
    return web.Response(
        body=_policy(bucket.owner), content_type=XML, headers=version_header(version.version_id)
    )


async def put_acl(req: S3Request) -> web.StreamResponse:
    """PutBucketAcl / PutObjectAcl: canned ACLs accepted (and not enforced)."""
    await req.owned_bucket()
    if req.key is not None:
        await load_version(req)
    check_acl_headers(req.headers)
    await req.read_document()  # an AccessControlPolicy body naming only the owner is accepted too
    return web.Response(status=200)
