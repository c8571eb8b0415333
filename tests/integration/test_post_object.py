"""POST Object (browser form uploads) against a real server: forms built by boto3's
``generate_presigned_post`` (SigV4 policies) and sent by ``requests`` as multipart/form-data."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from botocore.exceptions import ClientError
from support.rawhttp import find_text, s3_error
from support.s3 import MiB, make_client, random_bytes
from support.server import StrataServer


def presign(s3: Any, bucket: str, key: str, fields: dict[str, str] | None = None, **kwargs: Any) -> Any:
    return s3.generate_presigned_post(bucket, key, Fields=fields, **kwargs)


def upload(
    post: dict[str, Any],
    data: bytes,
    filename: str = "file.bin",
    extra: dict[str, str] | None = None,
    url: str | None = None,
    **kwargs: Any,
) -> requests.Response:
    """requests sends the data fields first and the file last, as a browser form does."""
    return requests.post(
        url or post["url"],
        data={**post["fields"], **(extra or {})},
        files={"file": (filename, data)},
        timeout=120,
        **kwargs,
    )


def error(resp: requests.Response) -> tuple[str | None, str | None]:
    return s3_error(resp.content)


def keys(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def form_body(parts: list[tuple[str, bytes, str | None]], boundary: str = "strataBoundary") -> bytes:
    """A multipart/form-data body in exactly the given order: (name, value, filename)."""
    out = bytearray()
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


FORM = "multipart/form-data; boundary=strataBoundary"


# --------------------------------------------------------------------------- success


def test_round_trip(s3: Any, bucket: str) -> None:
    data = b"hello, form upload\n" * 100
    resp = upload(presign(s3, bucket, "docs/a.txt"), data)
    assert resp.status_code == 204, resp.text
    etag = f'"{hashlib.md5(data).hexdigest()}"'
    assert resp.headers["ETag"] == etag
    assert resp.headers["Location"].endswith(f"/{bucket}/docs/a.txt")
    got = s3.get_object(Bucket=bucket, Key="docs/a.txt")
    assert got["Body"].read() == data
    assert got["ETag"] == etag
    assert got["ContentType"] == "binary/octet-stream"  # the file part's own type is ignored


def test_round_trip_multi_mib(s3: Any, bucket: str) -> None:
    data = random_bytes(6 * MiB + 12345, seed=7)
    post = presign(s3, bucket, "big.bin", Conditions=[["content-length-range", 1, 10 * MiB]])
    resp = upload(post, data)
    assert resp.status_code == 204, resp.text
    assert resp.headers["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key="big.bin")
    assert got["ContentLength"] == len(data)
    assert got["Body"].read() == data


@pytest.mark.parametrize(
    ("filename", "stored"),
    [
        ("photo.jpg", "uploads/photo.jpg"),
        ("C:\\Users\\me\\cat.png", "uploads/cat.png"),
        ("a/b/c.gif", "uploads/c.gif"),
    ],
)
def test_filename_substitution(s3: Any, bucket: str, filename: str, stored: str) -> None:
    resp = upload(presign(s3, bucket, "uploads/${filename}"), b"img", filename=filename)
    assert resp.status_code == 204, resp.text
    assert keys(s3, bucket) == [stored]
    assert s3.get_object(Bucket=bucket, Key=stored)["Body"].read() == b"img"


def test_headers_metadata_acl_and_tagging(s3: Any, bucket: str) -> None:
    tagging = "<Tagging><TagSet><Tag><Key>team</Key><Value>web</Value></Tag></TagSet></Tagging>"
    fields = {
        "Content-Type": "image/png",
        "Cache-Control": "max-age=60",
        "Content-Disposition": "inline",
        "x-amz-meta-color": "blue",
        "acl": "public-read",
        "tagging": tagging,
    }
    conditions = [
        ["starts-with", "$Content-Type", "image/"],
        {"Cache-Control": "max-age=60"},
        ["starts-with", "$Content-Disposition", ""],
        {"x-amz-meta-color": "blue"},
        {"acl": "public-read"},
        {"tagging": tagging},
    ]
    resp = upload(presign(s3, bucket, "p.png", fields, Conditions=conditions), b"\x89PNG")
    assert resp.status_code == 204, resp.text
    head = s3.head_object(Bucket=bucket, Key="p.png")
    assert head["ContentType"] == "image/png"
    assert head["CacheControl"] == "max-age=60"
    assert head["ContentDisposition"] == "inline"
    assert head["Metadata"] == {"color": "blue"}
    assert s3.get_object_tagging(Bucket=bucket, Key="p.png")["TagSet"] == [{"Key": "team", "Value": "web"}]


def test_success_action_status_201(s3: Any, bucket: str) -> None:
    post = presign(
        s3, bucket, "k 1+", {"success_action_status": "201"}, Conditions=[{"success_action_status": "201"}]
    )
    resp = upload(post, b"data")
    assert resp.status_code == 201, resp.text
    root = ET.fromstring(resp.content)
    assert root.tag.endswith("PostResponse")
    etag = f'"{hashlib.md5(b"data").hexdigest()}"'
    assert find_text(root, "Bucket") == bucket
    assert find_text(root, "Key") == "k 1+"
    assert find_text(root, "ETag") == etag
    assert find_text(root, "Location") == resp.headers["Location"]
    assert resp.headers["Location"].endswith(f"/{bucket}/k%201%2B")
    assert resp.headers["ETag"] == etag


@pytest.mark.parametrize(("value", "status"), [("200", 200), ("204", 204), ("404", 204), ("", 204)])
def test_success_action_status_others(s3: Any, bucket: str, value: str, status: int) -> None:
    post = presign(
        s3,
        bucket,
        "k",
        {"success_action_status": value},
        Conditions=[["starts-with", "$success_action_status", ""]],
    )
    resp = upload(post, b"data")
    assert resp.status_code == status, resp.text
    assert resp.content == b""


def test_success_action_redirect(s3: Any, bucket: str) -> None:
    target = "https://app.example.com/done?from=form"
    post = presign(
        s3,
        bucket,
        "r.txt",
        {"success_action_redirect": target},
        Conditions=[{"success_action_redirect": target}],
    )
    resp = upload(post, b"x", allow_redirects=False)
    assert resp.status_code == 303, resp.text
    location = urlsplit(resp.headers["Location"])
    assert location.netloc == "app.example.com" and location.path == "/done"
    query = parse_qs(location.query)
    assert query == {
        "from": ["form"],
        "bucket": [bucket],
        "key": ["r.txt"],
        "etag": [f'"{hashlib.md5(b"x").hexdigest()}"'],
    }
    assert s3.get_object(Bucket=bucket, Key="r.txt")["Body"].read() == b"x"


def test_fields_after_file_are_ignored(strata: StrataServer, s3: Any, bucket: str) -> None:
    post = presign(s3, bucket, "late")
    parts = [(k, v.encode(), None) for k, v in post["fields"].items()]
    parts.append(("file", b"content", "f.txt"))
    parts.append(("x-amz-meta-late", b"unsigned and ignored", None))
    resp = requests.post(post["url"], data=form_body(parts), headers={"Content-Type": FORM}, timeout=60)
    assert resp.status_code == 204, resp.text
    head = s3.head_object(Bucket=bucket, Key="late")
    assert head["Metadata"] == {}
    assert head["ContentLength"] == len(b"content")


def test_virtual_host_post(strata: StrataServer, s3: Any, bucket: str) -> None:
    post = presign(s3, bucket, "vh.txt")
    resp = upload(
        post, b"virtual", url=f"{strata.endpoint}/", headers={"Host": f"{bucket}.localhost:{strata.port}"}
    )
    assert resp.status_code == 204, resp.text
    assert resp.headers["Location"] == f"{strata.scheme}://{bucket}.localhost:{strata.port}/vh.txt"
    assert s3.get_object(Bucket=bucket, Key="vh.txt")["Body"].read() == b"virtual"


def test_event_is_object_created_post(strata: StrataServer, s3: Any, bucket: str) -> None:
    key = f"event-{uuid.uuid4().hex}"
    assert upload(presign(s3, bucket, key), b"e").status_code == 204
    with sqlite3.connect(f"file:{strata.data_dir / 'meta.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT event FROM outbox WHERE event LIKE ?", (f"%{key}%",)).fetchall()
    events = [json.loads(r[0]) for r in rows]
    assert [e["eventName"] for e in events] == ["ObjectCreated:Post"]
    assert events[0]["bucket"] == bucket


# --------------------------------------------------------------------------- refused


def test_content_length_range_too_large(s3: Any, bucket: str) -> None:
    post = presign(s3, bucket, "big", Conditions=[["content-length-range", 0, 1024]])
    assert upload(post, b"x" * 1024).status_code == 204
    s3.delete_object(Bucket=bucket, Key="big")
    resp = upload(post, b"x" * 1025)
    assert resp.status_code == 400
    assert error(resp)[0] == "EntityTooLarge"
    assert keys(s3, bucket) == []


def test_content_length_range_too_small(s3: Any, bucket: str) -> None:
    post = presign(s3, bucket, "small", Conditions=[["content-length-range", 100, 1000]])
    resp = upload(post, b"x" * 99)
    assert resp.status_code == 400
    assert error(resp)[0] == "EntityTooSmall"
    assert keys(s3, bucket) == []


@pytest.mark.parametrize(("size", "code"), [(3 * MiB, "EntityTooLarge"), (2 * MiB, "EntityTooSmall")])
def test_refused_upload_leaves_no_data(
    strata_factory: Callable[..., StrataServer], size: int, code: str
) -> None:
    server = strata_factory()
    s3 = make_client(server)
    s3.create_bucket(Bucket="fresh")
    before = server.backend_bytes()
    post = presign(s3, "fresh", "k", Conditions=[["content-length-range", 2 * MiB + 1, 2 * MiB + 2]])
    resp = upload(post, random_bytes(size, seed=size))
    assert resp.status_code == 400
    assert error(resp)[0] == code
    assert keys(s3, "fresh") == []
    assert server.backend_bytes() == before


def test_tampered_policy(s3: Any, bucket: str) -> None:
    post = presign(s3, bucket, "k")
    policy = json.loads(__import__("base64").b64decode(post["fields"]["policy"]))
    policy["conditions"] = [c for c in policy["conditions"] if c != {"key": "k"}] + [
        ["starts-with", "$key", ""]
    ]
    forged = __import__("base64").b64encode(json.dumps(policy).encode()).decode()
    resp = upload(post, b"x", extra={"policy": forged, "key": "anything"})
    assert resp.status_code == 403
    assert error(resp)[0] == "SignatureDoesNotMatch"
    assert keys(s3, bucket) == []


def test_field_not_matching_the_policy(s3: Any, bucket: str) -> None:
    resp = upload(presign(s3, bucket, "allowed"), b"x", extra={"key": "other"})
    assert resp.status_code == 403
    assert error(resp) == (
        "AccessDenied",
        'Invalid according to Policy: Policy Condition failed: ["eq", "$key", "allowed"]',
    )
    assert keys(s3, bucket) == []


def test_expired_policy(s3: Any, bucket: str) -> None:
    resp = upload(presign(s3, bucket, "k", ExpiresIn=-60), b"x")
    assert resp.status_code == 403
    assert error(resp) == ("AccessDenied", "Invalid according to Policy: Policy expired.")
    assert keys(s3, bucket) == []


def test_extra_unsigned_field(s3: Any, bucket: str) -> None:
    resp = upload(presign(s3, bucket, "k"), b"x", extra={"x-amz-meta-sneaky": "1", "x-ignore-this": "fine"})
    assert resp.status_code == 403
    assert error(resp) == (
        "AccessDenied",
        "Invalid according to Policy: Extra input fields: x-amz-meta-sneaky",
    )
    assert keys(s3, bucket) == []


def test_wrong_secret_and_unknown_key(strata: StrataServer, s3: Any, bucket: str) -> None:
    wrong = make_client(strata, secret_key="not-the-secret")
    resp = upload(presign(wrong, bucket, "k"), b"x")
    assert resp.status_code == 403
    assert error(resp)[0] == "SignatureDoesNotMatch"
    stranger = make_client(strata, access_key="AKIANOBODY0000000000", secret_key="x")
    resp = upload(presign(stranger, bucket, "k"), b"x")
    assert resp.status_code == 403
    assert error(resp)[0] == "InvalidAccessKeyId"
    assert keys(s3, bucket) == []


def test_anonymous_form(strata: StrataServer, bucket: str) -> None:
    resp = requests.post(
        f"{strata.endpoint}/{bucket}", data={"key": "k"}, files={"file": ("f", b"x")}, timeout=30
    )
    assert resp.status_code == 403
    assert error(resp)[0] == "AccessDenied"


def test_no_such_bucket(s3: Any) -> None:
    resp = upload(presign(s3, f"absent-{uuid.uuid4().hex[:12]}", "k"), b"x")
    assert resp.status_code == 404
    assert error(resp)[0] == "NoSuchBucket"


def test_missing_file_or_key(s3: Any, bucket: str) -> None:
    post = presign(s3, bucket, "k")
    resp = requests.post(post["url"], files={k: (None, v) for k, v in post["fields"].items()}, timeout=30)
    assert resp.status_code == 400
    assert error(resp) == ("InvalidArgument", "POST requires exactly one file upload per request.")
    post = presign(s3, bucket, "${filename}")
    resp = upload(post, b"x", filename="")
    assert resp.status_code == 400
    assert error(resp)[0] == "InvalidArgument"
    assert keys(s3, bucket) == []


def test_invalid_canned_acl(s3: Any, bucket: str) -> None:
    resp = upload(presign(s3, bucket, "k", {"acl": "everyone"}, Conditions=[{"acl": "everyone"}]), b"x")
    assert resp.status_code == 400
    assert error(resp)[0] == "InvalidArgument"


def test_malformed_forms(strata: StrataServer, s3: Any, bucket: str) -> None:
    url = f"{strata.endpoint}/{bucket}"
    resp = requests.post(url, data=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}, timeout=30)
    assert resp.status_code == 400
    assert error(resp)[0] == "MalformedPOSTRequest"
    post = presign(s3, bucket, "cut")
    parts = [(k, v.encode(), None) for k, v in post["fields"].items()] + [("file", b"d" * 100_000, "f")]
    truncated = form_body(parts)[:-30]  # the file part never ends
    resp = requests.post(url, data=truncated, headers={"Content-Type": FORM}, timeout=30)
    assert resp.status_code == 400
    assert error(resp)[0] == "MalformedPOSTRequest"
    cut_field = form_body([("key", b"k" * 100, None), ("file", b"data", "f")])[:60]  # ends inside "key"
    resp = requests.post(url, data=cut_field, headers={"Content-Type": FORM}, timeout=30)
    assert resp.status_code == 400
    assert error(resp)[0] == "MalformedPOSTRequest"
    big = [(f"x-ignore-{i}", b"v" * 1000, None) for i in range(25)] + [("file", b"data", "f")]
    resp = requests.post(url, data=form_body(big), headers={"Content-Type": FORM}, timeout=30)
    assert resp.status_code == 400
    assert error(resp)[0] == "MaxPostPreDataLengthExceededError"
    assert keys(s3, bucket) == []


def test_post_with_cors(strata: StrataServer, s3: Any, bucket: str) -> None:
    s3.put_bucket_cors(
        Bucket=bucket,
        CORSConfiguration={
            "CORSRules": [{"AllowedOrigins": ["https://app.test"], "AllowedMethods": ["POST"]}]
        },
    )
    resp = upload(presign(s3, bucket, "c"), b"x", headers={"Origin": "https://app.test"})
    assert resp.status_code == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.test"


def test_plain_post_to_a_bucket_is_not_a_form(strata: StrataServer, s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as err:
        s3.delete_objects(Bucket=bucket, Delete={"Objects": []})  # still routed to DeleteObjects
    assert err.value.response["Error"]["Code"] == "MalformedXML"
