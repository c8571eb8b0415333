"""gateway.meta.rows: versions and uploads survive the trip to table rows and back, and the
JSON text columns keep the exact encoding older rows have (``json.dumps``)."""

from __future__ import annotations

import json

import pytest

from dedup.manifest import Manifest
from gateway.meta.models import MultipartUpload, ObjectVersion
from gateway.meta.rows import upload_from_row, upload_values, version_from_row, version_values

DICTS = [
    {},
    {"cache-control": "no-cache"},
    {"a": "1", "b": 'ü ☃ "quoted"'},
    {"": ""},
]


@pytest.mark.parametrize("d", DICTS)
def test_version_round_trip_and_json_columns(d: dict[str, str]) -> None:
    v = ObjectVersion(
        bucket="b", key="k", version_id="null", size=3, etag="e" * 32, last_modified=1.5,
        manifest=Manifest((b"\x01" * 32,), (3,)), content_type="text/plain",
        headers=dict(d), user_meta=dict(d), checksum=dict(d), tags=dict(d),
    )  # fmt: skip
    values = version_values(v)
    for text in (values[8], values[9], values[10], values[14]):
        assert text == json.dumps(d)  # the stored text is what json.dumps always wrote
    back = version_from_row((*values, 1))
    assert back == v
    assert back.headers is not v.headers  # a fresh dict, never shared with the writer


@pytest.mark.parametrize("d", DICTS)
def test_upload_round_trip_and_json_columns(d: dict[str, str]) -> None:
    u = MultipartUpload("u1", "b", "k", 2.5, "alice", "text/plain", dict(d), dict(d), None, None, dict(d))
    values = upload_values(u)
    assert (values[6], values[7], values[10]) == (json.dumps(d),) * 3
    assert upload_from_row(values) == u


def test_a_non_empty_json_column_is_parsed() -> None:
    """Only the exact text "{}" takes the shortcut; anything else is parsed as JSON."""
    row = list(version_values(ObjectVersion(
        bucket="b", key="k", version_id="v", size=0, etag="e", last_modified=0.0,
        manifest=Manifest((), ()), content_type="x",
    )))  # fmt: skip
    row[8], row[9] = '{"x-a": "1"}', "{ }"
    back = version_from_row((*row, 0))
    assert (back.headers, back.user_meta) == ({"x-a": "1"}, {})
