"""Bucket versioning: version ids, delete markers, GET/HEAD/DELETE by versionId,
ListObjectVersions paging, and suspended buckets."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest
from botocore.exceptions import ClientError


def _code(err: pytest.ExceptionInfo[ClientError]) -> str:
    return err.value.response["Error"]["Code"]


def _all_versions(s3: Any, bucket: str, **kw: Any) -> list[tuple[str, str, bool, bool]]:
    """(key, version id, is latest, is delete marker) in the server's own element order (read
    from the raw XML: botocore splits Versions and DeleteMarkers apart), over every page."""
    bodies: list[bytes] = []

    def capture(http_response: Any, **_: Any) -> None:
        bodies.append(http_response.content)

    s3.meta.events.register("after-call.s3.ListObjectVersions", capture)
    out: list[tuple[str, str, bool, bool]] = []
    extra: dict[str, str] = {}
    try:
        while True:
            page = s3.list_object_versions(Bucket=bucket, **kw, **extra)
            for el in ET.fromstring(bodies[-1]):
                tag = el.tag.split("}", 1)[1]
                if tag in ("Version", "DeleteMarker"):
                    fields = {c.tag.split("}", 1)[1]: c.text for c in el}
                    out.append(
                        (
                            fields["Key"],
                            fields["VersionId"],
                            fields["IsLatest"] == "true",
                            tag == "DeleteMarker",
                        )
                    )
            if not page["IsTruncated"]:
                return out
            extra = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}
    finally:
        s3.meta.events.unregister("after-call.s3.ListObjectVersions", capture)


def test_versioning_lifecycle(s3: Any, bucket: str) -> None:
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"v0-null")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"v1")["VersionId"]
    v2 = s3.put_object(Bucket=bucket, Key="k", Body=b"v2")["VersionId"]
    assert v1 != v2 and "null" not in (v1, v2)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v2"
    assert s3.get_object(Bucket=bucket, Key="k", VersionId=v1)["Body"].read() == b"v1"
    assert s3.get_object(Bucket=bucket, Key="k", VersionId="null")["Body"].read() == b"v0-null"
    assert s3.head_object(Bucket=bucket, Key="k", VersionId=v1)["VersionId"] == v1

    deleted = s3.delete_object(Bucket=bucket, Key="k")
    assert deleted["DeleteMarker"] is True
    marker = deleted["VersionId"]
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="k")
    assert _code(err) == "NoSuchKey"
    assert err.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-delete-marker"] == "true"
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="k", VersionId=marker)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 405
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    assert s3.get_object(Bucket=bucket, Key="k", VersionId=v2)["Body"].read() == b"v2"

    listed = _all_versions(s3, bucket)
    assert [(vid, latest, dm) for _, vid, latest, dm in listed] == [
        (marker, True, True), (v2, False, False), (v1, False, False), ("null", False, False),
    ]  # fmt: skip
    # Deleting the delete marker brings the object back.
    s3.delete_object(Bucket=bucket, Key="k", VersionId=marker)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v2"
    # Deleting the latest version promotes the previous one.
    s3.delete_object(Bucket=bucket, Key="k", VersionId=v2)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v1"
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="k", VersionId=v2)
    assert _code(err) == "NoSuchVersion"
    # A bucket holding versions is not empty.
    for _, vid, _, _ in _all_versions(s3, bucket):
        s3.delete_object(Bucket=bucket, Key="k", VersionId=vid)
    assert _all_versions(s3, bucket) == []


def test_list_object_versions_paging(s3: Any, bucket: str) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for key in ("a/1", "a/2", "b", "c"):
        for i in range(3):
            s3.put_object(Bucket=bucket, Key=key, Body=f"{key}-{i}".encode())
    s3.delete_object(Bucket=bucket, Key="b")
    everything = _all_versions(s3, bucket)
    assert len(everything) == 13
    assert [k for k, *_ in everything] == ["a/1"] * 3 + ["a/2"] * 3 + ["b"] * 4 + ["c"] * 3
    for size in (1, 2, 5):
        assert _all_versions(s3, bucket, MaxKeys=size) == everything
    page = s3.list_object_versions(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["a/"]
    assert {v["Key"] for v in page.get("Versions", [])} == {"b", "c"}


def test_suspended_bucket_writes_null_versions(s3: Any, bucket: str) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    kept = s3.put_object(Bucket=bucket, Key="k", Body=b"kept")["VersionId"]
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    s3.put_object(Bucket=bucket, Key="k", Body=b"null-1")
    s3.put_object(Bucket=bucket, Key="k", Body=b"null-2")
    ids = [vid for _, vid, _, _ in _all_versions(s3, bucket)]
    assert ids == ["null", kept]  # the null version was replaced, not stacked
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"null-2"
    s3.delete_object(Bucket=bucket, Key="k")  # a null delete marker replaces the null version
    entries = _all_versions(s3, bucket)
    assert [(vid, dm) for _, vid, _, dm in entries] == [("null", True), (kept, False)]


def test_delete_objects_with_version_ids(s3: Any, bucket: str) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket=bucket, Key="x", Body=b"1")["VersionId"]
    s3.put_object(Bucket=bucket, Key="x", Body=b"2")
    result = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "x", "VersionId": v1}, {"Key": "x"}]}
    )
    by_version = {d.get("VersionId"): d for d in result["Deleted"]}
    assert v1 in by_version
    assert by_version[None]["DeleteMarker"] is True
    remaining = [(vid, dm) for _, vid, _, dm in _all_versions(s3, bucket)]
    assert len(remaining) == 2 and remaining[0][1] is True and v1 not in [v for v, _ in remaining]
