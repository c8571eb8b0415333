"""Bucket CORS: the ``?cors`` configuration document and S3's rule matching.

Pure: no I/O. :func:`parse_config` validates a PutBucketCors body and returns the rules,
:func:`render_config` gives the normalised document that is stored and served by
GetBucketCors, :func:`find_rule` picks the first matching rule, and
:func:`preflight_headers` / :func:`actual_headers` build the response headers.

How S3 evaluates a configuration (S3 User Guide, "How does Amazon S3 evaluate the CORS
configuration on a bucket?"): the *first* ``CORSRule`` wins for which

* the request's ``Origin`` matches one ``AllowedOrigin`` (case-sensitive; each may hold one
  ``*`` wildcard, which matches any run of characters),
* the method (``Access-Control-Request-Method`` for a preflight) is one of the
  ``AllowedMethod`` values (``GET``, ``PUT``, ``POST``, ``DELETE``, ``HEAD``),
* on a preflight, every name in ``Access-Control-Request-Headers`` matches an
  ``AllowedHeader`` (case-insensitive, one ``*`` wildcard each).

Answers (as S3 gives them):

===============================================  ===========================================
situation                                        answer
===============================================  ===========================================
preflight without ``Origin``                     400 BadRequest "Insufficient information.
                                                 Origin request header needed."
preflight with a missing/unknown method          400 BadRequest "Invalid
                                                 Access-Control-Request-Method: <m>"
preflight, bucket missing / no configuration     403 AccessForbidden "CORSResponse: ..."
preflight, no rule matches                       403 AccessForbidden "CORSResponse: This CORS
                                                 request is not allowed. ..."
preflight, a rule matches                        200, ``Access-Control-Allow-Origin`` (the
                                                 origin, or ``*`` for a ``*`` rule; then no
                                                 ``-Allow-Credentials``), ``-Allow-Methods``
                                                 (the rule's), ``-Allow-Headers`` (the
                                                 requested ones, lower-cased),
                                                 ``-Expose-Headers``, ``-Max-Age``, ``Vary``
actual request with ``Origin``, a rule matches   the same headers but ``-Allow-Headers``
===============================================  ===========================================
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.s3.errors import S3Error
from gateway.s3.xml import Node, document, parse

METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD")
MAX_RULES = 100
MAX_DOCUMENT = 64 * 1024  # "The document is limited to 64 KB in size."
MAX_ID = 255
MAX_AGE_LIMIT = 2**31 - 1
VARY = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"

NOT_ALLOWED = (
    "CORSResponse: This CORS request is not allowed. This is usually because the evalution of "
    "Origin, request method / Access-Control-Request-Method or Access-Control-Request-Headers "
    "are not whitelisted by the resource's CORS spec."
)
NOT_ENABLED = "CORSResponse: CORS is not enabled for this bucket."
NO_BUCKET = "CORSResponse: Bucket not found"

_RULE_CHILDREN = frozenset(
    {"ID", "AllowedMethod", "AllowedOrigin", "AllowedHeader", "ExposeHeader", "MaxAgeSeconds"}
)


def wildcard_match(pattern: str, value: str) -> bool:
    """``pattern`` with at most one ``*`` (any run of characters, also empty) against ``value``."""
    if "*" not in pattern:
        return pattern == value
    prefix, suffix = pattern.split("*", 1)
    return len(value) >= len(prefix) + len(suffix) and value.startswith(prefix) and value.endswith(suffix)


@dataclass(frozen=True)
class CorsRule:
    allowed_methods: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    allowed_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int | None = None
    id: str | None = None

    def matches_origin(self, origin: str) -> bool:
        return any(wildcard_match(o, origin) for o in self.allowed_origins)

    def allows_headers(self, requested: Iterable[str]) -> bool:
        """Every requested header (lower-case) matches an AllowedHeader (case-insensitive)."""
        patterns = [h.lower() for h in self.allowed_headers]
        return all(any(wildcard_match(p, name) for p in patterns) for name in requested)

    @property
    def any_origin(self) -> bool:
        return "*" in self.allowed_origins

    def to_node(self) -> Node:
        children: list[Node] = []
        if self.id is not None:
            children.append(("ID", self.id))
        children.extend(("AllowedHeader", h) for h in self.allowed_headers)
        children.extend(("AllowedMethod", m) for m in self.allowed_methods)
        children.extend(("AllowedOrigin", o) for o in self.allowed_origins)
        children.extend(("ExposeHeader", h) for h in self.expose_headers)
        if self.max_age is not None:
            children.append(("MaxAgeSeconds", self.max_age))
        return ("CORSRule", children)


# --------------------------------------------------------------------------- the document


def _text(el: ET.Element) -> str:
    if len(el):  # an element where text was expected
        raise S3Error("MalformedXML")
    return (el.text or "").strip()


def _parse_rule(el: ET.Element) -> CorsRule:
    values: dict[str, list[str]] = {name: [] for name in _RULE_CHILDREN}
    for child in el:
        if not isinstance(child.tag, str) or child.tag not in _RULE_CHILDREN:
            raise S3Error("MalformedXML")
        values[child.tag].append(_text(child))
    methods, origins = values["AllowedMethod"], values["AllowedOrigin"]
    if not methods or not origins or len(values["ID"]) > 1 or len(values["MaxAgeSeconds"]) > 1:
        raise S3Error("MalformedXML")
    for method in methods:
        if method not in METHODS:
            raise S3Error(
                "InvalidRequest",
                f"Found unsupported HTTP method in CORS config. Unsupported method is {method}",
            )
    for origin in origins:
        if not origin:
            raise S3Error("MalformedXML")
        if origin.count("*") > 1:
            raise S3Error("InvalidRequest", f'AllowedOrigin "{origin}" can not have more than one wildcard.')
    for header in values["AllowedHeader"]:
        if header.count("*") > 1:
            raise S3Error("InvalidRequest", f'AllowedHeader "{header}" can not have more than one wildcard.')
    rule_id = values["ID"][0] if values["ID"] else None
    if rule_id is not None and len(rule_id) > MAX_ID:
        raise S3Error("InvalidArgument", "The ID of a CORS rule must be no more than 255 characters.")
    max_age: int | None = None
    if values["MaxAgeSeconds"]:
        raw = values["MaxAgeSeconds"][0]
        if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_AGE_LIMIT:
            raise S3Error("MalformedXML")
        max_age = int(raw)
    return CorsRule(
        allowed_methods=tuple(dict.fromkeys(methods)),
        allowed_origins=tuple(origins),
        allowed_headers=tuple(h for h in values["AllowedHeader"] if h),
        expose_headers=tuple(h for h in values["ExposeHeader"] if h),
        max_age=max_age,
        id=rule_id,
    )


def parse_config(body: bytes) -> tuple[CorsRule, ...]:
    """Validate a ``CORSConfiguration`` document; ``MalformedXML`` / ``InvalidRequest`` as S3."""
    if len(body) > MAX_DOCUMENT:
        raise S3Error("MalformedXML", "The XML you provided was too large.")
    root = parse(body)
    if root.tag != "CORSConfiguration" or (root.text or "").strip():
        raise S3Error("MalformedXML")
    rules: list[CorsRule] = []
    for child in root:
        if child.tag != "CORSRule":
            raise S3Error("MalformedXML")
        rules.append(_parse_rule(child))
    if not rules or len(rules) > MAX_RULES:
        raise S3Error("MalformedXML")
    return tuple(rules)


def render_config(rules: Sequence[CorsRule]) -> bytes:
    """The normalised document (what is stored, and what GetBucketCors answers)."""
    return document("CORSConfiguration", [r.to_node() for r in rules])


# --------------------------------------------------------------------------- matching


def split_header_list(value: str | None) -> list[str]:
    """``Access-Control-Request-Headers``: comma-separated names, lower-cased, empties dropped."""
    if not value:
        return []
    return [name.strip().lower() for name in value.split(",") if name.strip()]


def find_rule(
    rules: Sequence[CorsRule], origin: str, method: str, request_headers: Sequence[str] = ()
) -> CorsRule | None:
    """The first rule allowing ``origin``, ``method`` and every one of ``request_headers``."""
    for rule in rules:
        if (
            method in rule.allowed_methods
            and rule.matches_origin(origin)
            and rule.allows_headers(request_headers)
        ):
            return rule
    return None


def actual_headers(rule: CorsRule, origin: str) -> dict[str, str]:
    """CORS response headers for a request the rule matched (no -Allow-Headers)."""
    headers = {"Access-Control-Allow-Origin": "*" if rule.any_origin else origin}
    if not rule.any_origin:
        headers["Access-Control-Allow-Credentials"] = "true"
    headers["Access-Control-Allow-Methods"] = ", ".join(rule.allowed_methods)
    if rule.expose_headers:
        headers["Access-Control-Expose-Headers"] = ", ".join(rule.expose_headers)
    if rule.max_age is not None:
        headers["Access-Control-Max-Age"] = str(rule.max_age)
    headers["Vary"] = VARY
    return headers


def check_preflight(origin: str | None, method: str | None) -> tuple[str, str]:
    """The (origin, method) of a preflight, or ``BadRequest`` as S3 answers."""
    if not origin:
        raise S3Error("BadRequest", "Insufficient information. Origin request header needed.")
    if method not in METHODS:
        raise S3Error("BadRequest", f"Invalid Access-Control-Request-Method: {method or 'null'}")
    return origin, method


def preflight_headers(
    rules: Sequence[CorsRule] | None,
    origin: str | None,
    method: str | None,
    request_headers: str | None,
    resource_type: str = "OBJECT",
) -> dict[str, str]:
    """Answer a preflight against a bucket's rules (``None``: no configuration).

    Raises ``BadRequest`` for a malformed preflight and ``AccessForbidden`` when it is denied.
    """
    origin, method = check_preflight(origin, method)
    if rules is None:
        raise S3Error("AccessForbidden", NOT_ENABLED, Method=method, ResourceType="BUCKET")
    requested = split_header_list(request_headers)
    rule = find_rule(rules, origin, method, requested)
    if rule is None:
        raise S3Error("AccessForbidden", NOT_ALLOWED, Method=method, ResourceType=resource_type)
    headers = actual_headers(rule, origin)
    if requested:
        headers["Access-Control-Allow-Headers"] = ", ".join(requested)
    return headers
