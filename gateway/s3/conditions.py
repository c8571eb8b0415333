"""Conditional request evaluation (If-Match, If-None-Match, If-Modified-Since,
If-Unmodified-Since) with S3's precedence rules, for GET/HEAD and copy sources."""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from gateway.s3.errors import S3Error


def _etags(value: str) -> list[str]:
    return [v.strip().removeprefix("W/").strip('"') for v in value.split(",") if v.strip()]


def _date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None  # an unparseable date is ignored, as S3 does


def etag_matches(header: str, etag: str) -> bool:
    tags = _etags(header)
    return "*" in tags or etag in tags


def check_preconditions(
    headers: Mapping[str, str], etag: str, last_modified: float, prefix: str = ""
) -> None:
    """Raise ``PreconditionFailed`` (412) or ``NotModified`` (304) as S3 would.

    ``prefix`` selects the header family, e.g. ``"x-amz-copy-source-"`` for copy sources.
    Dates compare at one-second resolution, as HTTP dates carry.
    """
    if_match = headers.get(prefix + "if-match")
    if_none_match = headers.get(prefix + "if-none-match")
    since = _date(headers.get(prefix + "if-modified-since"))
    unmodified = _date(headers.get(prefix + "if-unmodified-since"))
    modified = int(last_modified)
    if if_match is not None:
        if not etag_matches(if_match, etag):
            raise S3Error("PreconditionFailed", Condition="If-Match")
    elif unmodified is not None and modified > unmodified:
        raise S3Error("PreconditionFailed", Condition="If-Unmodified-Since")
    if if_none_match is not None:
        if etag_matches(if_none_match, etag):
            raise S3Error("NotModified")
    elif since is not None and modified <= since:
        raise S3Error("NotModified")
