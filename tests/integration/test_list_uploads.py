"""ListMultipartUploads: pagination by key/upload-id markers, prefix and delimiter."""

from __future__ import annotations

from typing import Any


def _all_pages(s3: Any, bucket: str, **kw: Any) -> tuple[list[tuple[str, str]], list[str]]:
    uploads: list[tuple[str, str]] = []
    prefixes: list[str] = []
    extra: dict[str, str] = {}
    while True:
        page = s3.list_multipart_uploads(Bucket=bucket, **kw, **extra)
        uploads += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", [])]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        if not page["IsTruncated"]:
            return uploads, prefixes
        extra = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page.get("NextUploadIdMarker", "")}


def test_list_uploads_paging_prefix_delimiter(s3: Any, bucket: str) -> None:
    keys = ["a/1", "a/1", "a/2", "b/x/1", "b/y", "c", "c"]
    created = [(k, s3.create_multipart_upload(Bucket=bucket, Key=k)["UploadId"]) for k in keys]
    everything, _ = _all_pages(s3, bucket)
    assert sorted(everything) == sorted(created)
    assert [k for k, _ in everything] == sorted(keys)
    for size in (1, 2, 3):
        paged, _ = _all_pages(s3, bucket, MaxUploads=size)
        assert paged == everything
    only_b, _ = _all_pages(s3, bucket, Prefix="b/")
    assert [k for k, _ in only_b] == ["b/x/1", "b/y"]
    for size in (1, 2, 10):
        top, prefixes = _all_pages(s3, bucket, Delimiter="/", MaxUploads=size)
        assert [k for k, _ in top] == ["c", "c"]
        assert prefixes == ["a/", "b/"]
    nested, prefixes = _all_pages(s3, bucket, Prefix="b/", Delimiter="/")
    assert [k for k, _ in nested] == ["b/y"] and prefixes == ["b/x/"]
    # Aborted uploads disappear from the listing.
    for key, upload_id in created:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    assert _all_pages(s3, bucket) == ([], [])
