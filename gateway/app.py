"""The aiohttp application: one catch-all route that resolves, authenticates and dispatches
S3 requests, renders every failure as S3 error XML, and stamps each response with
``x-amz-request-id``; the operator endpoints ``/healthz``, ``/readyz`` and ``/metrics``
(``gateway/observability/health.py``) in front of it; and the middleware that gives each
request its id and, once it is done, its access-log line, metrics and audit record.

While the application runs, access lines logged on its loop are written in batches
(``gateway/observability/logging.py``); cleanup writes the last of them."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from crypto.kms import KmsError
from gateway.backends.base import BackendUnavailable
from gateway.observability import health
from gateway.observability.logging import attach_loop, detach_loop
from gateway.observability.record import RequestRecord, log_request, observe_requests
from gateway.readpath import DataLossError
from gateway.runtime import Runtime
from gateway.s3.addressing import resolve
from gateway.s3.errors import S3Error
from gateway.s3.handlers import cors
from gateway.s3.request import S3Request, authenticate
from gateway.s3.router import operation_name, route, route_unauthenticated
from gateway.socket_recv import closes_connection

log = logging.getLogger("strata.s3")
RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)


def _error_response(err: S3Error, resource: str, request_id: str, head: bool) -> web.Response:
    headers = {"x-amz-request-id": request_id, **err.headers}
    if err.code == "NotModified" or head:
        return web.Response(status=err.status, headers=headers)
    return web.Response(
        status=err.status,
        body=err.to_xml(resource, request_id),
        content_type="application/xml",
        headers=headers,
    )


async def handle(http: web.Request) -> web.StreamResponse:
    rt = http.app[RUNTIME]
    rec = RequestRecord.of(http)  # started by the observe_requests middleware
    request_id = http["request_id"] = rec.request_id
    try:
        bucket, key = resolve(http.host, http.path, rt.config.server.domains)
        rec.bucket, rec.key = bucket, key
        rec.operation = operation_name(http.method, bucket, key, http.query, http.headers)
        own_auth = route_unauthenticated(http.method, bucket, key, http.query, http.headers)
        if own_auth is not None:  # CORS preflight, browser form upload
            return await own_auth(http, rt, request_id, bucket, key)
        principal, signing = await authenticate(http, rt)
        rec.user, rec.access_key = principal.user, principal.access_key
        handler = route(http.method, bucket, key, http.query, http.headers)
        req = S3Request(http, rt, request_id, bucket, key, principal, signing)
        return await handler(req)
    except S3Error as err:
        rec.error = err.code
        return _error_response(err, http.path, request_id, http.method == "HEAD")
    except (BackendUnavailable, KmsError) as exc:
        log.warning("backend or KMS unavailable serving %s %s: %s", http.method, http.path, exc)
        err = S3Error("SlowDown")
        err.headers["Retry-After"] = "1"
        rec.error = err.code
        return _error_response(err, http.path, request_id, http.method == "HEAD")
    except DataLossError:
        log.exception("data loss serving %s %s", http.method, http.path)
        rec.error = "InternalError"
        return _error_response(S3Error("InternalError"), http.path, request_id, http.method == "HEAD")
    except (ConnectionResetError, web.HTTPException):
        raise
    except Exception:
        log.exception("internal error serving %s %s", http.method, http.path)
        rec.error = "InternalError"
        return _error_response(S3Error("InternalError"), http.path, request_id, http.method == "HEAD")


def build_app(rt: Runtime) -> web.Application:
    observe = observe_requests(rt.metrics.in_flight, log_request, rt.metrics.observe_request, rt.audit.finish)
    app = web.Application(client_max_size=1024**2, middlewares=[observe])
    app[RUNTIME] = rt
    health.install(app, rt, handle)  # /healthz, /readyz, /metrics: before the S3 catch-all
    app.router.add_route("*", r"/{tail:[\s\S]*}", handle)
    cors.install(app, rt)

    async def start_runtime(_: web.Application) -> None:
        attach_loop()
        await rt.start()

    async def close_runtime(_: web.Application) -> None:
        try:
            await rt.close()
        finally:
            detach_loop(asyncio.get_running_loop())  # every buffered line is out

    async def stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
        if "request_id" in request:
            response.headers.setdefault("x-amz-request-id", request["request_id"])

    app.on_response_prepare.append(stamp_request_id)
    app.on_response_prepare.append(closes_connection)  # after a body read by a thread
    app.on_startup.append(start_runtime)
    app.on_cleanup.append(close_runtime)
    return app
