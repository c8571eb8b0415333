"""Tag sets: parsing and validating S3 tagging documents and the ``x-amz-tagging`` header."""

from __future__ import annotations

from urllib.parse import parse_qsl

from gateway.s3.errors import S3Error
from gateway.s3.xml import Node, child_text, parse

MAX_OBJECT_TAGS = 10
MAX_BUCKET_TAGS = 50
MAX_KEY, MAX_VALUE = 128, 256


def validate(tags: list[tuple[str, str]], limit: int) -> dict[str, str]:
    if len(tags) > limit:
        raise S3Error("InvalidTag", f"Object tags cannot be greater than {limit}")
    out: dict[str, str] = {}
    for key, value in tags:
        if not key or len(key) > MAX_KEY or len(value) > MAX_VALUE:
            raise S3Error("InvalidTag", "The TagKey or TagValue you have provided is invalid")
        if key.startswith("aws:"):
            raise S3Error("InvalidTag", "Your TagKey cannot be prefixed with aws:")
        if key in out:
            raise S3Error("InvalidTag", "Cannot provide multiple Tags with the same key")
        out[key] = value
    return out


def parse_document(body: bytes, limit: int) -> dict[str, str]:
    root = parse(body)
    if root.tag != "Tagging":
        raise S3Error("MalformedXML")
    tagset = root.find("TagSet")
    if tagset is None:
        raise S3Error("MalformedXML")
    pairs = []
    for tag in tagset.findall("Tag"):
        key, value = child_text(tag, "Key"), child_text(tag, "Value")
        if key is None or value is None:
            raise S3Error("MalformedXML")
        pairs.append((key, value))
    return validate(pairs, limit)


def parse_header(value: str | None) -> dict[str, str]:
    """``x-amz-tagging: k1=v1&k2=v2`` (URL-encoded) on PutObject / CreateMultipartUpload."""
    if value is None:
        return {}
    return validate(parse_qsl(value, keep_blank_values=True), MAX_OBJECT_TAGS)


def tagset_nodes(tags: dict[str, str]) -> list[Node]:
    return [("TagSet", [("Tag", [("Key", k), ("Value", v)]) for k, v in tags.items()])]
