"""The aiohttp application: one catch-all route that resolves, authenticates and dispatches
S3 requests, renders every failure as S3 error XML, and stamps each response with
``x-amz-request-id``."""

from __future__ import annotations

import logging
import secrets
import time

from aiohttp import web

from gateway.backends.base import BackendUnavailable
from gateway.readpath import DataLossError
from gateway.runtime import Runtime
from gateway.s3.addressing import resolve
from gateway.s3.errors import S3Error
from gateway.s3.handlers import cors
from gateway.s3.request import S3Request, authenticate
from gateway.s3.router import route, route_unauthenticated

log = logging.getLogger("strata.access")
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
    request_id = http["request_id"] = secrets.token_hex(8).upper()
    started = time.monotonic()
    status = 500
    try:
        bucket, key = resolve(http.host, http.path, rt.config.server.domains)
        own_auth = route_unauthenticated(http.method, bucket, key, http.query, http.headers)
        if own_auth is not None:  # CORS preflight, browser form upload
            response = await own_auth(http, rt, request_id, bucket, key)
            status = response.status
            return response
        principal, signing = await authenticate(http, rt)
        handler = route(http.method, bucket, key, http.query, http.headers)
        req = S3Request(http, rt, request_id, bucket, key, principal, signing)
        response = await handler(req)
        status = response.status
        return response
    except S3Error as err:
        status = err.status
        return _error_response(err, http.path, request_id, http.method == "HEAD")
    except BackendUnavailable as exc:
        log.warning("backend unavailable serving %s %s: %s", http.method, http.path, exc)
        err = S3Error("SlowDown")
        err.headers["Retry-After"] = "1"
        status = err.status
        return _error_response(err, http.path, request_id, http.method == "HEAD")
    except DataLossError:
        log.exception("data loss serving %s %s", http.method, http.path)
        return _error_response(S3Error("InternalError"), http.path, request_id, http.method == "HEAD")
    except (ConnectionResetError, web.HTTPException):
        raise
    except Exception:
        log.exception("internal error serving %s %s", http.method, http.path)
        return _error_response(S3Error("InternalError"), http.path, request_id, http.method == "HEAD")
    finally:
        log.info(
            "%s %s %s %d %.1fms",
            request_id,
            http.method,
            http.path,
            status,
            (time.monotonic() - started) * 1000,
        )


def build_app(rt: Runtime) -> web.Application:
    app = web.Application(client_max_size=1024**2)
    app[RUNTIME] = rt
    app.router.add_route("*", r"/{tail:[\s\S]*}", handle)
    cors.install(app, rt)

    async def start_runtime(_: web.Application) -> None:
        await rt.start()

    async def close_runtime(_: web.Application) -> None:
        await rt.close()

    async def stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
        if "request_id" in request:
            response.headers.setdefault("x-amz-request-id", request["request_id"])

    app.on_response_prepare.append(stamp_request_id)
    app.on_startup.append(start_runtime)
    app.on_cleanup.append(close_runtime)
    return app
