"""The operator endpoints: ``/healthz`` (the process is alive), ``/readyz`` (the metadata
store and the blob backend answer) and ``/metrics`` (Prometheus text format).

They take no authentication (serve them on a network only operators reach) and answer only
*unsigned* ``GET`` requests to exactly these paths. S3 never serves anonymous requests, so
no S3 request is shadowed: a signed request (``Authorization`` header or presigned query)
for ``/metrics``, ``/healthz`` or ``/readyz`` (ListObjects on a bucket of that name, or in
virtual-host style a key of that name) goes to the S3 handler as before.

``/readyz`` runs both checks concurrently, each bounded by :data:`CHECK_TIMEOUT`, and
answers 200, or 503 with the reason of each failing check::

    {"status": "unavailable", "checks": {"metadata": "ok", "backend": "FileNotFoundError: ..."}}
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.observability.metrics import CONTENT_TYPE
from gateway.observability.record import unobserve

if TYPE_CHECKING:
    from gateway.runtime import Runtime

CHECK_TIMEOUT = 2.0  # seconds per readiness check
PROBE_BLOB = "health/readyz-probe"  # opened and aborted: never committed, never visible
MAX_REASON = 300

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def ping_backend(backend: Any) -> None:
    """The backend's own ``ping()`` when it has one; otherwise open a writer for a probe
    blob and abort it (for the local backend: create and remove a temp file)."""
    ping = getattr(backend, "ping", None)
    if callable(ping):
        await ping()
        return
    writer = await backend.open_writer(PROBE_BLOB)
    await writer.abort()


async def check(probe: Awaitable[object], timeout: float = CHECK_TIMEOUT) -> str:
    """``"ok"``, or why ``probe`` failed or did not finish within ``timeout`` seconds."""
    try:
        await asyncio.wait_for(probe, timeout)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:MAX_REASON]
    return "ok"


async def readiness(rt: Runtime, timeout: float = CHECK_TIMEOUT) -> tuple[bool, dict[str, Any]]:
    """(ready, body) for ``/readyz``."""
    metadata, backend = await asyncio.gather(
        check(rt.meta.ping(), timeout), check(ping_backend(rt.backend), timeout)
    )
    checks = {"metadata": metadata, "backend": backend}
    ready = all(v == "ok" for v in checks.values())
    return ready, {"status": "ready" if ready else "unavailable", "checks": checks}


def is_signed(http: web.Request) -> bool:
    """An S3 request carrying a signature (header or presigned query, SigV4 or SigV2)."""
    q = http.query
    return "authorization" in http.headers or "X-Amz-Signature" in q or "Signature" in q


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )  # fmt: skip


def install(app: web.Application, rt: Runtime, s3_handler: Handler) -> None:
    """Register the operator endpoints on ``app``; call before adding the S3 catch-all.
    Signed requests to these paths are handed to ``s3_handler``."""

    def operator(serve: Callable[[], Awaitable[web.StreamResponse]]) -> Handler:
        async def endpoint(http: web.Request) -> web.StreamResponse:
            if is_signed(http):
                return await s3_handler(http)
            unobserve(http)
            return await serve()

        return endpoint

    async def healthz() -> web.StreamResponse:
        return _json(200, {"status": "alive"})

    async def readyz() -> web.StreamResponse:
        ready, body = await readiness(rt)
        return _json(200 if ready else 503, body)

    async def metrics() -> web.StreamResponse:
        return web.Response(body=rt.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    for path, serve in (("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics)):
        app.router.add_get(path, operator(serve), allow_head=False)
