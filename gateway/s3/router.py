"""Maps (method, bucket?, key?, sub-resource) to the S3 operation that serves it.

Operations that exist in S3 but that Strata does not implement yet answer
``NotImplemented`` (501), never a 500 or a silently wrong success.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from gateway.runtime import Runtime
from gateway.s3.errors import S3Error
from gateway.s3.handlers import (
    acl,
    buckets,
    copy,
    cors,
    listing,
    multipart,
    notification,
    objects,
    tagging,
    versioning,
)
from gateway.s3.handlers.post_object import is_form_upload, post_object
from gateway.s3.request import S3Request

Handler = Callable[[S3Request], Awaitable[web.StreamResponse]]
# Runs before (instead of) header authentication: (request, runtime, request id, bucket, key).
PreAuthHandler = Callable[[web.Request, Runtime, str, str | None, str | None], Awaitable[web.StreamResponse]]

# Query parameters that name a sub-resource (a different operation) in S3.
SUBRESOURCES = frozenset(
    {
        "accelerate", "acl", "analytics", "attributes", "cors", "delete", "encryption",
        "intelligent-tiering", "inventory", "legal-hold", "lifecycle", "location", "logging",
        "metrics", "notification", "object-lock", "ownershipControls", "partNumber", "policy",
        "policyStatus", "publicAccessBlock", "replication", "requestPayment", "restore", "retention",
        "select", "session", "tagging", "torrent", "uploadId", "uploads", "versionId", "versioning",
        "versions", "website",
    }
)  # fmt: skip

_SERVICE: dict[tuple[str, str | None], Handler] = {("GET", None): buckets.list_buckets}
_BUCKET: dict[tuple[str, str | None], Handler] = {
    ("PUT", None): buckets.create_bucket,
    ("HEAD", None): buckets.head_bucket,
    ("DELETE", None): buckets.delete_bucket,
    ("GET", None): listing.list_objects_v1,
    ("GET", "list-type=2"): listing.list_objects_v2,
    ("GET", "location"): buckets.get_bucket_location,
    ("POST", "delete"): objects.delete_objects,
    ("GET", "uploads"): multipart.list_uploads,
    ("PUT", "versioning"): versioning.put_bucket_versioning,
    ("GET", "versioning"): versioning.get_bucket_versioning,
    ("GET", "versions"): versioning.list_object_versions,
    ("PUT", "tagging"): tagging.put_bucket_tagging,
    ("GET", "tagging"): tagging.get_bucket_tagging,
    ("DELETE", "tagging"): tagging.delete_bucket_tagging,
    ("GET", "acl"): acl.get_bucket_acl,
    ("PUT", "acl"): acl.put_acl,
    ("PUT", "cors"): cors.put_bucket_cors,
    ("GET", "cors"): cors.get_bucket_cors,
    ("DELETE", "cors"): cors.delete_bucket_cors,
    ("PUT", "notification"): notification.put_bucket_notification,
    ("GET", "notification"): notification.get_bucket_notification,
}
_OBJECT: dict[tuple[str, str | None], Handler] = {
    ("PUT", None): objects.put_object,
    ("GET", None): objects.get_object,
    ("HEAD", None): objects.head_object,
    ("DELETE", None): objects.delete_object,
    ("POST", "uploads"): multipart.create_upload,
    ("PUT", "uploadId"): multipart.upload_part,
    ("POST", "uploadId"): multipart.complete_upload,
    ("DELETE", "uploadId"): multipart.abort_upload,
    ("GET", "uploadId"): multipart.list_parts,
    ("GET", "partNumber"): objects.get_object,
    ("HEAD", "partNumber"): objects.head_object,
    ("GET", "versionId"): objects.get_object,
    ("HEAD", "versionId"): objects.head_object,
    ("DELETE", "versionId"): objects.delete_object,
    ("PUT", "tagging"): tagging.put_object_tagging,
    ("GET", "tagging"): tagging.get_object_tagging,
    ("DELETE", "tagging"): tagging.delete_object_tagging,
    ("GET", "acl"): acl.get_object_acl,
    ("PUT", "acl"): acl.put_acl,
    ("GET", "attributes"): objects.get_object_attributes,
}


_COPY: dict[tuple[str, str | None], Handler] = {
    ("PUT", None): copy.copy_object,
    ("PUT", "uploadId"): copy.upload_part_copy,
}


def _subresource(query: Mapping[str, str]) -> str | None:
    if query.get("list-type") == "2":
        return "list-type=2"
    present = sorted(k for k in query if k in SUBRESOURCES)
    if "uploadId" in present:
        return "uploadId"
    return present[0] if present else None


def route_unauthenticated(
    method: str, bucket: str | None, key: str | None, query: Mapping[str, str], headers: Mapping[str, str]
) -> PreAuthHandler | None:
    """Requests that carry their own authorisation or need none: CORS preflights (``OPTIONS``)
    and browser form uploads (``POST`` of ``multipart/form-data`` to a bucket)."""
    if method == "OPTIONS":
        return cors.preflight
    form = method == "POST" and bucket is not None and key is None and _subresource(query) is None
    if form and is_form_upload(headers.get("content-type")):
        return post_object
    return None


def route(
    method: str, bucket: str | None, key: str | None, query: Mapping[str, str], headers: Mapping[str, str]
) -> Handler:
    sub = _subresource(query)
    if bucket is None:
        table = _SERVICE
    elif key is None:
        table = _BUCKET
    else:
        table = _OBJECT
        if method == "PUT" and "x-amz-copy-source" in headers:
            table = _COPY
    handler = table.get((method, sub))
    if handler is None:
        if any(method == m for m, _ in table):
            raise S3Error("NotImplemented", f"{method} with ?{sub} is not implemented.")
        raise S3Error("MethodNotAllowed", Method=method, ResourceType="OBJECT" if key else "BUCKET")
    return handler


# Operations whose S3 name is not their handler's name in CamelCase (put_object -> PutObject).
_OPERATION_NAMES = {
    "list_objects_v1": "ListObjects",
    "create_upload": "CreateMultipartUpload",
    "complete_upload": "CompleteMultipartUpload",
    "abort_upload": "AbortMultipartUpload",
    "list_uploads": "ListMultipartUploads",
    "preflight": "CorsPreflight",
    "put_bucket_notification": "PutBucketNotificationConfiguration",
    "get_bucket_notification": "GetBucketNotificationConfiguration",
}


@functools.cache
def _operation(handler_name: str, on_object: bool) -> str:
    if handler_name == "put_acl":
        return "PutObjectAcl" if on_object else "PutBucketAcl"
    return _OPERATION_NAMES.get(handler_name) or "".join(p.capitalize() for p in handler_name.split("_"))


def operation_name(
    method: str, bucket: str | None, key: str | None, query: Mapping[str, str], headers: Mapping[str, str]
) -> str:
    """The S3 operation a request asks for (``PutObject``, ``ListObjectsV2``...), whether or
    not it is authorised: a bounded name for logs, metrics and the audit log.
    ``Unsupported`` when no handler serves the request."""
    handler = route_unauthenticated(method, bucket, key, query, headers)
    if handler is None:
        try:
            handler = route(method, bucket, key, query, headers)
        except S3Error:
            return "Unsupported"
    return _operation(handler.__name__, key is not None)
