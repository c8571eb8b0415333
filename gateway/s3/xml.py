"""S3 XML: rendering responses in S3's namespace and parsing request documents safely.

Responses are built from nested ``(tag, children)`` tuples so that every text value is
escaped in one place. Request bodies are parsed with a size cap and without DTDs or entity
expansion; any parse failure is ``MalformedXML``.
"""

from __future__ import annotations

import functools
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from email.utils import formatdate
from xml.sax.saxutils import escape

from gateway.s3.errors import S3Error

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_XML_BODY = 2 * 1024 * 1024
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

Node = tuple[str, "Content"] | None
Content = str | int | bool | Iterable[Node] | None


def iso8601(ts: float) -> str:
    """S3's listing timestamp format, e.g. 2026-11-24T01:02:03.000Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def http_date(ts: float) -> str:
    """RFC 1123 date for Last-Modified (whole seconds)."""
    return _http_date(int(ts))


@functools.lru_cache(maxsize=4096)  # objects' Last-Modified repeat: format each second once
def _http_date(second: int) -> str:
    return formatdate(second, usegmt=True)


def _render(node: Node, out: list[str]) -> None:
    """Render one node; a tag may carry attributes ("Grantee xsi:type=...")."""
    if node is None:
        return
    tag, content = node
    name = tag.split(" ", 1)[0]
    if content is None:
        out.append(f"<{tag}/>")
    elif isinstance(content, bool):
        out.append(f"<{tag}>{'true' if content else 'false'}</{name}>")
    elif isinstance(content, str | int):
        out.append(f"<{tag}>{escape(str(content))}</{name}>")
    else:
        out.append(f"<{tag}>")
        for child in content:
            _render(child, out)
        out.append(f"</{name}>")


def document(root: str, children: Iterable[Node]) -> bytes:
    """A complete XML response document with the S3 namespace on the root element."""
    out = [XML_DECLARATION.decode(), f'<{root} xmlns="{S3_NS}">']
    for child in children:
        _render(child, out)
    out.append(f"</{root}>")
    return "".join(out).encode()


def text_document(root: str, text: str) -> bytes:
    """A response document whose root element holds only text."""
    return XML_DECLARATION + f'<{root} xmlns="{S3_NS}">{escape(text)}</{root}>'.encode()


def parse(body: bytes) -> ET.Element:
    """Parse a request document; namespaces are stripped from tags."""
    if len(body) > MAX_XML_BODY:
        raise S3Error("MalformedXML", "The XML you provided was too large.")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise S3Error("MalformedXML")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise S3Error("MalformedXML") from exc
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]
    return root


def child_text(el: ET.Element, tag: str) -> str | None:
    found = el.find(tag)
    return None if found is None else (found.text or "")
