"""One request's observation: the :class:`RequestRecord` that the middleware starts (with
the request id), that the S3 handler fills in as it learns the operation, the addressed
resource and the caller, and that the middleware finishes once the handler is done: one
access-log line, the request metrics, and an audit record for mutations and object downloads.

The operator endpoints (``/metrics``, ``/healthz``, ``/readyz``) :func:`unobserve` their
requests, which are then neither logged nor counted. Bytes out are body bytes (the
response's Content-Length; 0 for HEAD); bytes in are request body bytes as read from the
connection (with any aws-chunked framing). A client that disconnects mid-request is logged
with status 499.

Request ids (:func:`new_request_id`) are 16 upper-case hex digits, unique rather than secret:
a random 64-bit start per process (drawn again in a forked child) plus a counter, so that a
request costs no call into the kernel's random source.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.meta.models import AuditRecord
from gateway.observability.logging import REQUEST_ID, log_access, redact

# Operations whose body is client data stored as an object or part, and object downloads.
UPLOAD_OPERATIONS = frozenset({"PutObject", "UploadPart", "PostObject"})
DOWNLOAD_OPERATIONS = frozenset({"GetObject"})
# Audited besides every PUT, POST and DELETE. HeadObject is not audited: it returns no
# object data, and s3fs/rclone stat every file with it (it is still in the access log).
AUDITED_READS = DOWNLOAD_OPERATIONS
MUTATING_METHODS = frozenset({"PUT", "POST", "DELETE"})
CLIENT_CLOSED = 499  # nginx's convention for "the client went away before the answer"

log = logging.getLogger("strata.observability")
RECORD_KEY = "strata_observation"
CURRENT: ContextVar[RequestRecord | None] = ContextVar("strata_request_record", default=None)

_ID_MASK = (1 << 64) - 1
_ids = itertools.count()


def _reseed_request_ids() -> None:
    global _ids
    _ids = itertools.count(int.from_bytes(os.urandom(8), "big"))


_reseed_request_ids()
os.register_at_fork(after_in_child=_reseed_request_ids)


def new_request_id() -> str:
    """A request id unique in this process and, with overwhelming probability, across
    processes: 16 upper-case hex digits."""
    return f"{next(_ids) & _ID_MASK:016X}"


# identity semantics (eq=False): records are kept in a set while in flight
@dataclass(eq=False, slots=True)
class RequestRecord:
    request_id: str
    method: str
    started: float  # time.monotonic()
    time: float  # epoch seconds
    remote_ip: str | None
    user_agent: str | None
    query: str = ""  # the raw query string (logged redacted)
    operation: str = "Unknown"  # a bounded name from the router (PutObject, ListObjectsV2...)
    bucket: str | None = None
    key: str | None = None
    version_id: str | None = None
    user: str | None = None
    access_key: str | None = None
    status: int = 500
    error: str | None = None  # the S3 error code, when the request failed with one
    bytes_in: int = 0
    bytes_out: int = 0
    bytes_stored: int = 0  # payload bytes ingested for this request (see Metrics.ingested)
    duration: float = 0.0  # seconds
    # DeleteObjects: each (key, version id) it deleted, audited one record per key
    deleted: list[tuple[str, str | None]] = field(default_factory=list)

    @classmethod
    def begin(cls, http: web.Request) -> RequestRecord:
        """Start observing ``http`` under a new request id (attached to the request, and
        current for this task: log lines and ingests are attributed to it)."""
        rec = cls(
            request_id=new_request_id(),
            method=http.method,
            started=time.monotonic(),
            time=time.time(),
            remote_ip=http.remote,
            user_agent=http.headers.get("user-agent"),
            query=http.query_string,
            version_id=http.query.get("versionId"),
        )
        http[RECORD_KEY] = rec
        CURRENT.set(rec)
        REQUEST_ID.set(rec.request_id)
        return rec

    @classmethod
    def of(cls, http: web.Request) -> RequestRecord:
        """The record the middleware started for ``http`` (or a new one without it)."""
        rec = http.get(RECORD_KEY)
        return rec if rec is not None else cls.begin(http)

    def finish(self, http: web.Request, response: web.StreamResponse | None) -> None:
        """Fill in status, byte counts and duration once the handler is done."""
        self.duration = time.monotonic() - self.started
        self.bytes_in = http.content.total_bytes
        if response is None:
            return
        self.status = response.status
        self.version_id = response.headers.get("x-amz-version-id", self.version_id)
        if self.method != "HEAD":
            length = response.content_length
            self.bytes_out = response.body_length if length is None else length

    @property
    def audited(self) -> bool:
        return self.method in MUTATING_METHODS or self.operation in AUDITED_READS

    def log_fields(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "method": self.method,
            "operation": self.operation,
            "bucket": self.bucket,
            "key": self.key,
            "query": redact(self.query) if self.query else None,
            "version_id": self.version_id,
            "status": self.status,
            "error": self.error,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_ms": round(self.duration * 1000, 3),
            "remote_ip": self.remote_ip,
            "user_agent": self.user_agent,
            "access_key_id": self.access_key,
            "user": self.user,
        }

    def audit_records(self) -> list[AuditRecord]:
        """This request's audit records: one, or for DeleteObjects one per deleted key."""
        targets = self.deleted or [(self.key, self.version_id)]
        return [
            AuditRecord(
                time=self.time,
                request_id=self.request_id,
                user=self.user,
                access_key=self.access_key,
                action=self.operation,
                bucket=self.bucket,
                key=key,
                version_id=version_id,
                ip=self.remote_ip,
                user_agent=self.user_agent,
                status=self.status,
            )
            for key, version_id in targets
        ]


def current() -> RequestRecord | None:
    """The record of the request this task serves, if any."""
    return CURRENT.get()


def log_request(rec: RequestRecord) -> None:
    """Request finisher: the request's one access-log line."""
    log_access(rec.log_fields())


def unobserve(http: web.Request) -> None:
    """Do not log or count ``http`` (operator endpoints answering it themselves)."""
    http.pop(RECORD_KEY, None)


Finisher = Callable[[RequestRecord], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def observe_requests(in_flight: set[RequestRecord], *finishers: Finisher) -> Middleware:
    """Middleware: every request gets a record, kept in ``in_flight`` while it is served;
    once the handler is done, each of ``finishers`` gets the finished record."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = RequestRecord.begin(request)
        in_flight.add(started)
        response: web.StreamResponse | None = None
        try:
            response = await handler(request)
            return response
        except (ConnectionResetError, asyncio.CancelledError):  # the client went away
            started.status, started.error = CLIENT_CLOSED, "ClientDisconnected"
            raise
        except web.HTTPException as exc:
            response = exc
            raise
        finally:
            in_flight.discard(started)
            if request.get(RECORD_KEY) is started:
                started.finish(request, response)
                for finish in finishers:
                    try:
                        finish(started)
                    except Exception:  # observing must never fail the request
                        log.exception("observing request %s failed", started.request_id)

    return middleware
