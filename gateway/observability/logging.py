"""Process logging: JSON (or text) lines on stderr, the per-request access line, and the
redaction that keeps request signatures and session tokens out of every line.

Configured once from ``config.log`` (:func:`configure_logging`). Every record passes through
:func:`redact` in the formatter, whatever its source (our own lines, aiohttp's, a traceback):
``X-Amz-Signature`` / ``Signature`` / ``X-Amz-Security-Token`` values (query strings, form
fields, headers, JSON), the signature of an ``Authorization`` header (SigV4 ``Signature=``,
SigV2 ``AWS key:signature``) become ``REDACTED``. Secret keys are never handed to a logger
in the first place. Lines logged while a request is served carry its ``request_id``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from gateway.config import LogConfig

REDACTED = "REDACTED"
ACCESS_LOGGER = "strata.access"
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
    lowered = text.lower()  # fast path: most lines name no secret at all
    if "signature" in lowered or "security-token" in lowered:
        text = _NAMED_SECRET.sub(_NAMED_REPLACEMENT, text)
    if "AWS " in text:
        text = _SIGV2_AUTH.sub(_NAMED_REPLACEMENT, text)
    return text


def _clean(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class _Formatter(logging.Formatter):
    """Shared by both formats: the redacted message, the record's ``fields`` (passed as
    ``extra={"fields": {...}}``), the current request id and any traceback."""

    def parts(self, record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
        fields: dict[str, Any] = {}
        request_id = REQUEST_ID.get()
        if request_id is not None:
            fields["request_id"] = request_id
        extra = getattr(record, "fields", None)
        if isinstance(extra, Mapping):
            fields.update({str(k): _clean(v) for k, v in extra.items()})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exception"] = redact(record.exc_text)
        return redact(record.getMessage()), fields


def _timestamp(record: logging.LogRecord) -> str:
    stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class JsonFormatter(_Formatter):
    """One JSON object per line: time, level, logger, message, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        message, fields = self.parts(record)
        doc: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        doc.update(fields)
        return json.dumps(doc, default=str, separators=(",", ":"))


class TextFormatter(_Formatter):
    """``time LEVEL logger message key=value ...`` (values JSON-quoted when they need it)."""

    def format(self, record: logging.LogRecord) -> str:
        message, fields = self.parts(record)
        tail = "".join(f" {k}={_text_value(v)}" for k, v in fields.items() if k != "exception")
        line = f"{_timestamp(record)} {record.levelname} {record.name} {message}{tail}"
        if "exception" in fields:
            line += "\n" + fields["exception"]
        return line


def _text_value(value: Any) -> str:
    if isinstance(value, str) and _BARE.fullmatch(value):
        return value
    return json.dumps(value, default=str)


FORMATTERS: dict[str, type[_Formatter]] = {"json": JsonFormatter, "text": TextFormatter}


def configure_logging(config: LogConfig, stream: TextIO | None = None) -> None:
    """Replace the root handlers with one stream handler in ``config.format`` at
    ``config.level``; raises ValueError for an unknown format or level."""
    formatter = FORMATTERS.get(config.format)
    if formatter is None:
        raise ValueError(f"log.format must be one of {', '.join(FORMATTERS)}, not {config.format!r}")
    level = logging.getLevelName(config.level.upper())
    if not isinstance(level, int):
        raise ValueError(f"log.level: unknown level {config.level!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def log_access(fields: Mapping[str, Any], logger: logging.Logger | None = None) -> None:
    """The one access line of a request (``fields``: see ``RequestRecord.log_fields``)."""
    log = logger or logging.getLogger(ACCESS_LOGGER)
    if log.isEnabledFor(logging.INFO):
        message = f"{fields.get('method')} {fields.get('operation')} {fields.get('status')}"
        log.info(message, extra={"fields": fields})
