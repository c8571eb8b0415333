"""Process logging: JSON (or text) lines on stderr, the per-request access line, and the
redaction that keeps request signatures and session tokens out of every line.

Configured once from ``config.log`` (:func:`configure_logging`). Every record passes through
:func:`redact` in the formatter, whatever its source (our own lines, aiohttp's, a traceback):
``X-Amz-Signature`` / ``Signature`` / ``X-Amz-Security-Token`` values (query strings, form
fields, headers, JSON), the signature of an ``Authorization`` header (SigV4 ``Signature=``,
SigV2 ``AWS key:signature``) become ``REDACTED``. Secret keys are never handed to a logger
in the first place. Lines logged while a request is served carry its ``request_id``.

Where lines go: one :class:`LineSink` per configured stream. Ordinary records are written
at once (after any buffered lines, so the order is kept). The access line, one per request,
is the hot path: :func:`log_access` renders it straight from its fields (the same line the
formatter would render, without a ``LogRecord`` or the handler machinery) and, on the event
loop thread of an attached loop (:func:`attach_loop`), the sink buffers it and writes every
buffered line with one write ``FLUSH_DELAY`` later, or at once past ``FLUSH_BYTES``. The
buffer is written when the loop is detached (:func:`detach_loop`, at application cleanup),
whenever another record is logged, when the handler is flushed or replaced, and at
interpreter exit (``logging.shutdown``). A process killed outright loses at most the last
``FLUSH_DELAY`` of access lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from contextvars import ContextVar
from functools import lru_cache
from typing import Any, TextIO

from gateway.config import LogConfig

REDACTED = "REDACTED"
ACCESS_LOGGER = "strata.access"
FLUSH_DELAY = 0.005  # seconds an access line may wait in the buffer
FLUSH_BYTES = 64 * 1024  # ... or until this much is buffered
# The request being served by the current task (set by the request middleware): stamped on
# every line logged while it is served.
REQUEST_ID: ContextVar[str | None] = ContextVar("strata_request_id", default=None)

# A secret-bearing parameter name, its separator (query/form ``=``, URL-encoded ``%3D``,
# header or JSON ``:``, with optional quotes), then its value up to the next delimiter.
_NAMED_SECRET = re.compile(
    r"""((?:signature|security-token)["']?\s*(?:=|%3D|:)\s*["']?)[^&\s,;"'<>]+""",
    re.IGNORECASE,
)
# SigV2 ``Authorization: AWS <access key id>:<signature>``.
_SIGV2_AUTH = re.compile(r"""(AWS [A-Za-z0-9_.+/=-]{1,128}:)[^&\s,;"'<>]+""")
_BARE = re.compile(r'[^\s"=]+')  # text-format values printed without quotes


_NAMED_REPLACEMENT = rf"\g<1>{REDACTED}"


def redact(text: str) -> str:
    """``text`` with every request signature and session token value replaced."""
    if not _may_name_secret(text):  # fast path: most lines name no secret at all
        return text
    return _SIGV2_AUTH.sub(_NAMED_REPLACEMENT, _NAMED_SECRET.sub(_NAMED_REPLACEMENT, text))


def _may_name_secret(text: str) -> bool:
    """False when :func:`redact` would certainly leave ``text`` (or any part of it) alone:
    every pattern it replaces starts with one of these words."""
    lowered = text.lower()
    return "signature" in lowered or "security-token" in lowered or "AWS " in text


def _clean(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def _line_fields(extra: Any) -> dict[str, Any]:
    """A line's fields: the current request id, then ``extra`` (a record's ``fields``) redacted."""
    fields: dict[str, Any] = {}
    request_id = REQUEST_ID.get()
    if request_id is not None:
        fields["request_id"] = request_id
    if isinstance(extra, Mapping):
        # One look at all string values together: usually none names a secret.
        if _may_name_secret("\n".join([v for v in extra.values() if isinstance(v, str)])):
            fields.update({k: _clean(v) for k, v in extra.items()})
        else:
            fields.update(extra)
    return fields


@lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _timestamp(created: float) -> str:
    """``created`` (epoch seconds) as ISO 8601 UTC with milliseconds: 2026-11-24T01:02:03.456Z."""
    second, millis = divmod(int(created * 1000), 1000)
    return f"{_utc_second(second)}.{millis:03d}Z"


class _Formatter(logging.Formatter):
    """Shared by both formats: the redacted message, the record's ``fields`` (a str-keyed
    mapping passed as ``extra={"fields": {...}}``), the current request id and any traceback, rendered by
    :meth:`render` (which the access line calls directly)."""

    def parts(self, record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
        fields = _line_fields(getattr(record, "fields", None))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exception"] = redact(record.exc_text)
        return redact(record.getMessage()), fields

    def format(self, record: logging.LogRecord) -> str:
        message, fields = self.parts(record)
        return self.render(record.created, record.levelname, record.name, message, fields)

    def render(self, created: float, level: str, logger: str, message: str, fields: dict[str, Any]) -> str:
        """One line from its parts (``message`` and ``fields`` already redacted)."""
        raise NotImplementedError


_JSON = json.JSONEncoder(default=str, separators=(",", ":"))  # one encoder, not one per line


class JsonFormatter(_Formatter):
    """One JSON object per line: time, level, logger, message, then the record's fields."""

    def render(self, created: float, level: str, logger: str, message: str, fields: dict[str, Any]) -> str:
        doc: dict[str, Any] = {"time": _timestamp(created), "level": level, "logger": logger}
        doc["message"] = message
        doc.update(fields)
        return _JSON.encode(doc)


class TextFormatter(_Formatter):
    """``time LEVEL logger message key=value ...`` (values JSON-quoted when they need it)."""

    def render(self, created: float, level: str, logger: str, message: str, fields: dict[str, Any]) -> str:
        tail = "".join(f" {k}={_text_value(v)}" for k, v in fields.items() if k != "exception")
        line = f"{_timestamp(created)} {level} {logger} {message}{tail}"
        if "exception" in fields:
            line += "\n" + fields["exception"]
        return line


def _text_value(value: Any) -> str:
    if isinstance(value, str) and _BARE.fullmatch(value):
        return value
    return json.dumps(value, default=str)


FORMATTERS: dict[str, type[_Formatter]] = {"json": JsonFormatter, "text": TextFormatter}


class LineSink:
    """Writes lines to ``stream``: at once, or (``batch``, on the attached loop's thread)
    buffered and written together ``delay`` seconds later or past ``limit`` bytes.
    Thread-safe; lines keep the order in which they were written."""

    def __init__(self, stream: TextIO, delay: float = FLUSH_DELAY, limit: int = FLUSH_BYTES) -> None:
        self.stream = stream
        self._delay = delay
        self._limit = limit
        self._lock = threading.RLock()
        self._lines: list[str] = []
        self._size = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None  # the attached loop's thread
        self._timer: asyncio.TimerHandle | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Buffer batched lines written on ``loop``'s thread (call from that thread)."""
        with self._lock:
            # a timer of a previous loop may never fire: the next batched line schedules anew
            self._loop, self._thread, self._timer = loop, threading.get_ident(), None

    def detach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Stop buffering (for ``loop`` only, if given) and write what is buffered."""
        with self._lock:
            if loop is None or loop is self._loop:
                # A pending timer is left alone (cancelling is not thread-safe on uvloop):
                # if it still fires, it finds nothing or only newer lines to write.
                self._loop = self._thread = self._timer = None
            self._write_buffered()

    def write(self, line: str, batch: bool = False) -> None:
        with self._lock:
            self._lines.append(line)
            self._size += len(line)
            if batch and self._size < self._limit and threading.get_ident() == self._thread:
                if self._timer is None and not self._schedule():
                    self._write_buffered()
                return
            self._write_buffered()

    def flush(self) -> None:
        """Write every buffered line now."""
        with self._lock:
            self._write_buffered()

    def _schedule(self) -> bool:
        assert self._loop is not None
        try:
            self._timer = self._loop.call_later(self._delay, self._on_timer)
        except RuntimeError:  # the loop is closed: stop buffering for it
            self._loop = self._thread = None
            return False
        return True

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            self._write_buffered()

    def _write_buffered(self) -> None:  # with the lock held
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        self._size = 0
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # as logging.Handler.handleError: report, never fail the caller
            if logging.raiseExceptions and sys.stderr is not None:
                with contextlib.suppress(Exception):
                    traceback.print_exc(file=sys.stderr)


class SinkHandler(logging.Handler):
    """The root handler :func:`configure_logging` installs: formats records into its sink."""

    def __init__(self, sink: LineSink, formatter: _Formatter) -> None:
        super().__init__()
        self.sink = sink
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write(self.format(record))
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.sink.flush()


_handler: SinkHandler | None = None  # the handler configure_logging installed last
_access_log = logging.getLogger(ACCESS_LOGGER)


def configure_logging(config: LogConfig, stream: TextIO | None = None) -> None:
    """Replace the root handlers with one handler writing ``config.format`` lines to
    ``stream`` (stderr) at ``config.level``; raises ValueError for an unknown format or level."""
    global _handler
    formatter = FORMATTERS.get(config.format)
    if formatter is None:
        raise ValueError(f"log.format must be one of {', '.join(FORMATTERS)}, not {config.format!r}")
    level = logging.getLevelName(config.level.upper())
    if not isinstance(level, int):
        raise ValueError(f"log.level: unknown level {config.level!r}")
    handler = SinkHandler(LineSink(stream or sys.stderr), formatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.flush()
    root.addHandler(handler)
    root.setLevel(level)
    _handler = handler


def attach_loop(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Buffer access lines logged on ``loop`` (the running loop), see the module docstring."""
    if _handler is not None:
        _handler.sink.attach(loop or asyncio.get_running_loop())


def detach_loop(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Write the buffered access lines and stop buffering for ``loop`` (any loop if None)."""
    if _handler is not None:
        _handler.sink.detach(loop)


def _direct_route(logger: logging.Logger) -> tuple[_Formatter, LineSink] | None:
    """The installed handler's formatter and sink, if that handler is the only one an INFO
    record of ``logger`` reaches and no filter could drop or divert it; else None (the
    record must take the logging path)."""
    handler = _handler
    if handler is None or handler.filters or handler.level > logging.INFO or logger.disabled:
        return None
    formatter = handler.formatter
    if not isinstance(formatter, _Formatter):
        return None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        if current.parent is None:  # the root
            handlers = current.handlers
            return (formatter, handler.sink) if len(handlers) == 1 and handlers[0] is handler else None
        if current.handlers or not current.propagate:
            return None
        current = current.parent
    return None


def log_access(fields: Mapping[str, Any], logger: logging.Logger | None = None) -> None:
    """The one access line of a request (``fields``: see ``RequestRecord.log_fields``)."""
    log = logger or _access_log
    if not log.isEnabledFor(logging.INFO):
        return
    message = f"{fields.get('method')} {fields.get('operation')} {fields.get('status')}"
    route = _direct_route(log)
    if route is None:
        log.info(message, extra={"fields": fields})
        return
    formatter, sink = route
    line = formatter.render(time.time(), "INFO", log.name, redact(message), _line_fields(fields))
    sink.write(line, batch=True)
