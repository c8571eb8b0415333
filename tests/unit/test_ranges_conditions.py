"""Range and conditional-request rules: table tests plus properties for arbitrary headers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.s3.conditions import check_preconditions
from gateway.s3.errors import S3Error
from gateway.s3.ranges import parse_range
from gateway.s3.xml import http_date

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-0", (0, 1)),
        ("bytes=0-99", (0, 100)),
        ("bytes=10-", (10, SIZE)),
        ("bytes=-10", (990, SIZE)),
        ("bytes=-5000", (0, SIZE)),
        ("bytes=990-5000", (990, SIZE)),
        ("bytes=999-999", (999, SIZE)),
        ("bytes=100-50", None),  # last < first: invalid syntax, ignored (RFC 9110), whole object
        ("bytes=0-1,5-6", None),  # several ranges: S3 serves the whole object
        ("items=0-1", None),
        ("bytes=abc", None),
        ("bytes=-", None),
        ("", None),
    ],
)
def test_parse_range_table(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=1000-", 1000), ("bytes=5000-6000", 1000), ("bytes=-0", 1000), ("bytes=0-", 0), ("bytes=-1", 0)],
)
def test_unsatisfiable_ranges_are_invalid_range(header: str, size: int) -> None:
    with pytest.raises(S3Error) as err:
        parse_range(header, size)
    assert err.value.code == "InvalidRange" and err.value.status == 416


@given(st.text(max_size=40), st.integers(min_value=0, max_value=10**12))
def test_parse_range_never_crashes_and_stays_in_bounds(header: str, size: int) -> None:
    try:
        span = parse_range(header, size)
    except S3Error as err:
        assert err.code == "InvalidRange"
        return
    if span is not None:
        start, end = span
        assert 0 <= start < end <= size


@given(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=1, max_value=10**6),
)
def test_valid_ranges_cover_exactly_what_was_asked(first: int, length: int, size: int) -> None:
    header = f"bytes={first}-{first + length}"
    try:
        span = parse_range(header, size)
    except S3Error:
        assert first >= size
        return
    assert span == (first, min(first + length, size - 1) + 1)


T = 1_700_000_000.0
ETAG = "abc"


def _check(**headers: str) -> str:
    try:
        check_preconditions({k.replace("_", "-"): v for k, v in headers.items()}, ETAG, T)
    except S3Error as err:
        return err.code
    return "OK"


@pytest.mark.parametrize(
    ("headers", "outcome"),
    [
        ({}, "OK"),
        ({"if_match": '"abc"'}, "OK"),
        ({"if_match": "*"}, "OK"),
        ({"if_match": '"x", "abc"'}, "OK"),
        ({"if_match": '"nope"'}, "PreconditionFailed"),
        ({"if_none_match": '"abc"'}, "NotModified"),
        ({"if_none_match": "*"}, "NotModified"),
        ({"if_none_match": '"nope"'}, "OK"),
        ({"if_modified_since": http_date(T)}, "NotModified"),
        ({"if_modified_since": http_date(T - 10)}, "OK"),
        ({"if_unmodified_since": http_date(T - 10)}, "PreconditionFailed"),
        ({"if_unmodified_since": http_date(T)}, "OK"),
        # S3 precedence: If-Match true overrides If-Unmodified-Since false.
        ({"if_match": '"abc"', "if_unmodified_since": http_date(T - 10)}, "OK"),
        # If-None-Match false (no match) overrides If-Modified-Since true.
        ({"if_none_match": '"nope"', "if_modified_since": http_date(T)}, "OK"),
        ({"if_modified_since": "not a date"}, "OK"),
    ],
)
def test_preconditions_table(headers: dict[str, str], outcome: str) -> None:
    assert _check(**headers) == outcome
