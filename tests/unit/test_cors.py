"""Tests for gateway.s3.cors: the PutBucketCors document and S3's rule matching (tables and
hypothesis; bad input is always an S3Error, never a crash)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.s3.cors import (
    MAX_RULES,
    NOT_ALLOWED,
    NOT_ENABLED,
    CorsRule,
    actual_headers,
    find_rule,
    parse_config,
    preflight_headers,
    render_config,
    split_header_list,
    wildcard_match,
)
from gateway.s3.errors import S3Error

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


def doc(*rules: str, ns: bool = True) -> bytes:
    return f"<CORSConfiguration {NS if ns else ''}>{''.join(rules)}</CORSConfiguration>".encode()


def rule(*elements: str) -> str:
    return "<CORSRule>" + "".join(elements) + "</CORSRule>"


def el(tag: str, text: str) -> str:
    return f"<{tag}>{text}</{tag}>"


GOOD = doc(
    rule(
        el("ID", "web"),
        el("AllowedOrigin", "https://*.example.com"),
        el("AllowedOrigin", "http://localhost:3000"),
        el("AllowedMethod", "GET"),
        el("AllowedMethod", "PUT"),
        el("AllowedHeader", "x-amz-*"),
        el("AllowedHeader", "Content-Type"),
        el("ExposeHeader", "ETag"),
        el("ExposeHeader", "x-amz-request-id"),
        el("MaxAgeSeconds", "3000"),
    ),
    rule(el("AllowedOrigin", "*"), el("AllowedMethod", "GET"), el("AllowedMethod", "HEAD")),
)


# --------------------------------------------------------------------------- wildcards


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("*", "", True),
        ("*", "http://a.com", True),
        ("http://a.com", "http://a.com", True),
        ("http://a.com", "http://a.com:80", False),
        ("http://*.a.com", "http://x.a.com", True),
        ("http://*.a.com", "http://x.y.a.com", True),
        ("http://*.a.com", "http://a.com", False),
        ("http://*.a.com", "https://x.a.com", False),
        ("http://*", "http://", True),
        ("*.a.com", "x.a.com", True),
        ("ab*ba", "aba", False),  # prefix and suffix may not overlap
        ("ab*ba", "abba", True),
        ("x-amz-*", "x-amz-date", True),
        ("x-amz-*", "x-am", False),
    ],
)
def test_wildcard_match(pattern: str, value: str, expected: bool) -> None:
    assert wildcard_match(pattern, value) is expected


@given(st.text(max_size=20), st.text(max_size=20), st.text(max_size=20))
def test_wildcard_matches_exactly_prefix_anything_suffix(prefix: str, middle: str, suffix: str) -> None:
    prefix, suffix = prefix.replace("*", ""), suffix.replace("*", "")
    assert wildcard_match(f"{prefix}*{suffix}", prefix + middle + suffix)
    assert wildcard_match(prefix + suffix, prefix + suffix)
    if middle:
        assert not wildcard_match(prefix + suffix, prefix + middle + suffix)


# --------------------------------------------------------------------------- the document


def test_parse_good_document() -> None:
    rules = parse_config(GOOD)
    assert len(rules) == 2
    first = rules[0]
    assert first.id == "web"
    assert first.allowed_origins == ("https://*.example.com", "http://localhost:3000")
    assert first.allowed_methods == ("GET", "PUT")
    assert first.allowed_headers == ("x-amz-*", "Content-Type")
    assert first.expose_headers == ("ETag", "x-amz-request-id")
    assert first.max_age == 3000
    assert rules[1] == CorsRule(("GET", "HEAD"), ("*",))


def test_render_round_trips_and_is_normalised() -> None:
    rules = parse_config(GOOD)
    rendered = render_config(rules)
    assert rendered.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<CORSConfiguration xmlns=')
    assert parse_config(rendered) == rules
    assert render_config(parse_config(rendered)) == rendered
    # without namespace, with whitespace around values: the same rules
    loose = doc(rule(el("AllowedOrigin", " * "), el("AllowedMethod", "GET")), ns=False)
    assert parse_config(loose) == (CorsRule(("GET",), ("*",)),)


ORIGIN, METHOD = el("AllowedOrigin", "*"), el("AllowedMethod", "GET")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "MalformedXML"),
        (b"<CORSConfiguration>", "MalformedXML"),
        (b"not xml", "MalformedXML"),
        (b"<Other/>", "MalformedXML"),
        (doc(), "MalformedXML"),  # no rules
        (doc(rule(ORIGIN)), "MalformedXML"),  # no AllowedMethod
        (doc(rule(METHOD)), "MalformedXML"),  # no AllowedOrigin
        (doc(rule(ORIGIN, METHOD, el("Bogus", "x"))), "MalformedXML"),
        (doc(rule(ORIGIN, METHOD), "<Other/>"), "MalformedXML"),
        (doc(rule(ORIGIN, el("AllowedMethod", "PATCH"))), "InvalidRequest"),
        (doc(rule(ORIGIN, el("AllowedMethod", "get"))), "InvalidRequest"),
        (doc(rule(el("AllowedOrigin", "http://*.*.com"), METHOD)), "InvalidRequest"),
        (doc(rule(ORIGIN, METHOD, el("AllowedHeader", "*-*"))), "InvalidRequest"),
        (doc(rule(ORIGIN, METHOD, el("MaxAgeSeconds", "ten"))), "MalformedXML"),
        (doc(rule(ORIGIN, METHOD, el("MaxAgeSeconds", "-1"))), "MalformedXML"),
        (doc(rule(ORIGIN, METHOD, el("MaxAgeSeconds", "1"), el("MaxAgeSeconds", "2"))), "MalformedXML"),
        (doc(rule(ORIGIN, METHOD, el("ID", "x" * 256))), "InvalidArgument"),
        (doc(rule(el("AllowedOrigin", ""), METHOD)), "MalformedXML"),
        (doc(rule(ORIGIN, "<AllowedMethod><GET/></AllowedMethod>")), "MalformedXML"),
        (doc(*[rule(ORIGIN, METHOD)] * (MAX_RULES + 1)), "MalformedXML"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><CORSConfiguration/>', "MalformedXML"),
        (doc(rule(ORIGIN, METHOD, el("ExposeHeader", "x" * 70_000))), "MalformedXML"),  # > 64 KB
    ],
)
def test_bad_documents(body: bytes, code: str) -> None:
    with pytest.raises(S3Error) as err:
        parse_config(body)
    assert err.value.code == code


def test_hundred_rules_are_allowed() -> None:
    assert len(parse_config(doc(*[rule(ORIGIN, METHOD)] * MAX_RULES))) == MAX_RULES


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(body: bytes) -> None:
    try:
        parse_config(body)
    except S3Error as err:
        assert err.code in ("MalformedXML", "InvalidRequest", "InvalidArgument")


_TAGS = st.sampled_from(
    ["ID", "AllowedMethod", "AllowedOrigin", "AllowedHeader", "ExposeHeader", "MaxAgeSeconds", "Other"]
)
_VALUES = st.one_of(
    st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "*", "**", "http://*.a.com", "12", ""]),
    st.text(alphabet="ab*-:/.09 ", max_size=12),
)


@settings(max_examples=300)
@given(st.lists(st.lists(st.tuples(_TAGS, _VALUES), max_size=8), max_size=4))
def test_structured_documents_parse_or_fail_cleanly(rules: list[list[tuple[str, str]]]) -> None:
    body = doc(*[rule(*[el(tag, value) for tag, value in r]) for r in rules])
    try:
        parsed = parse_config(body)
    except S3Error as err:
        assert err.code in ("MalformedXML", "InvalidRequest", "InvalidArgument")
        return
    assert parse_config(render_config(parsed)) == parsed
    for r in parsed:
        assert r.allowed_methods and r.allowed_origins
        assert all(o.count("*") <= 1 for o in r.allowed_origins)


# --------------------------------------------------------------------------- matching

RULES = parse_config(GOOD)


@pytest.mark.parametrize(
    ("origin", "method", "headers", "expected"),
    [
        ("https://app.example.com", "PUT", [], 0),
        ("https://app.example.com", "PUT", ["x-amz-date", "content-type"], 0),
        ("https://app.example.com", "PUT", ["authorization"], None),  # not allowed, rule 2 is GET/HEAD
        ("https://app.example.com", "GET", ["authorization"], None),  # rule 2 allows no headers
        ("https://app.example.com", "GET", [], 0),  # first match wins
        ("http://evil.com", "GET", [], 1),
        ("http://evil.com", "HEAD", [], 1),
        ("http://evil.com", "PUT", [], None),
        ("http://localhost:3000", "PUT", [], 0),
        ("HTTP://LOCALHOST:3000", "PUT", [], None),  # origins are case-sensitive
        ("https://example.com", "DELETE", [], None),
    ],
)
def test_find_rule(origin: str, method: str, headers: list[str], expected: int | None) -> None:
    found = find_rule(RULES, origin, method, headers)
    assert found is (None if expected is None else RULES[expected])


def test_split_header_list() -> None:
    assert split_header_list(None) == []
    assert split_header_list("") == []
    assert split_header_list(" X-Amz-Date ,Content-Type,, ") == ["x-amz-date", "content-type"]


def test_preflight_allowed() -> None:
    headers = preflight_headers(RULES, "https://app.example.com", "PUT", "X-Amz-Meta-Color, Content-Type")
    assert headers == {
        "Access-Control-Allow-Origin": "https://app.example.com",
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Methods": "GET, PUT",
        "Access-Control-Expose-Headers": "ETag, x-amz-request-id",
        "Access-Control-Max-Age": "3000",
        "Vary": "Origin, Access-Control-Request-Headers, Access-Control-Request-Method",
        "Access-Control-Allow-Headers": "x-amz-meta-color, content-type",
    }


def test_preflight_any_origin_answers_star_without_credentials() -> None:
    headers = preflight_headers(RULES, "http://anyone.net", "HEAD", None)
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in headers
    assert "Access-Control-Allow-Headers" not in headers
    assert "Access-Control-Max-Age" not in headers
    assert headers["Access-Control-Allow-Methods"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("rules", "origin", "method", "code", "message"),
    [
        (RULES, None, "GET", "BadRequest", "Insufficient information. Origin request header needed."),
        (RULES, "", "GET", "BadRequest", "Insufficient information. Origin request header needed."),
        (RULES, "http://a.com", None, "BadRequest", "Invalid Access-Control-Request-Method: null"),
        (RULES, "http://a.com", "PATCH", "BadRequest", "Invalid Access-Control-Request-Method: PATCH"),
        (RULES, "http://a.com", "get", "BadRequest", "Invalid Access-Control-Request-Method: get"),
        (None, "http://a.com", "GET", "AccessForbidden", NOT_ENABLED),
        (None, None, "GET", "BadRequest", "Insufficient information. Origin request header needed."),
        (RULES, "http://a.com", "PUT", "AccessForbidden", NOT_ALLOWED),
    ],
)
def test_preflight_refused(
    rules: tuple[CorsRule, ...] | None, origin: str | None, method: str | None, code: str, message: str
) -> None:
    with pytest.raises(S3Error) as err:
        preflight_headers(rules, origin, method, None)
    assert (err.value.code, err.value.message) == (code, message)
    assert err.value.status == (400 if code == "BadRequest" else 403)
    if code == "AccessForbidden":
        assert err.value.extra["Method"] == method


def test_actual_headers_have_no_allow_headers() -> None:
    headers = actual_headers(RULES[0], "https://x.example.com")
    assert headers["Access-Control-Allow-Origin"] == "https://x.example.com"
    assert "Access-Control-Allow-Headers" not in headers


@settings(max_examples=300)
@given(
    st.one_of(st.none(), st.text(max_size=30)),
    st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD"])),
    st.one_of(st.none(), st.text(max_size=60)),
)
def test_preflight_never_crashes(origin: str | None, method: str | None, requested: str | None) -> None:
    try:
        headers = preflight_headers(RULES, origin, method, requested)
    except S3Error as err:
        assert err.code in ("BadRequest", "AccessForbidden")
        return
    assert origin and method
    matched = find_rule(RULES, origin, method, split_header_list(requested))
    assert matched is not None
    assert headers["Access-Control-Allow-Origin"] in ("*", origin)
    assert method in headers["Access-Control-Allow-Methods"].split(", ")
