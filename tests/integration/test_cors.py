"""Bucket CORS against a real server: Put/Get/DeleteBucketCors through boto3, raw OPTIONS
preflights (no authentication), and CORS headers on actual requests that carry Origin."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError
from support.awschunked import sign_request
from support.rawhttp import s3_error
from support.s3 import error_code
from support.server import StrataServer

RULES: dict[str, Any] = {
    "CORSRules": [
        {
            "ID": "app",
            "AllowedOrigins": ["https://*.example.com", "http://localhost:3000"],
            "AllowedMethods": ["GET", "PUT", "POST"],
            "AllowedHeaders": ["x-amz-*", "Content-Type"],
            "ExposeHeaders": ["ETag", "x-amz-request-id"],
            "MaxAgeSeconds": 3000,
        },
        {"AllowedOrigins": ["*"], "AllowedMethods": ["GET", "HEAD"]},
    ]
}
APP = "https://app.example.com"
VARY = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"


def preflight(
    server: StrataServer, path: str, origin: str | None, method: str | None, headers: str | None = None
) -> requests.Response:
    sent = {}
    if origin is not None:
        sent["Origin"] = origin
    if method is not None:
        sent["Access-Control-Request-Method"] = method
    if headers is not None:
        sent["Access-Control-Request-Headers"] = headers
    return requests.options(f"{server.endpoint}{path}", headers=sent, timeout=30)


def error(resp: requests.Response) -> tuple[str | None, str | None]:
    return s3_error(resp.content)


# --------------------------------------------------------------------------- configuration


def test_put_get_delete_bucket_cors(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as err:
        s3.get_bucket_cors(Bucket=bucket)
    assert error_code(err.value) == "NoSuchCORSConfiguration"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404

    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"] == RULES["CORSRules"]

    replaced = {"CORSRules": [{"AllowedOrigins": ["http://a.test"], "AllowedMethods": ["DELETE"]}]}
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=replaced)
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"] == replaced["CORSRules"]

    assert s3.delete_bucket_cors(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.delete_bucket_cors(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as err:
        s3.get_bucket_cors(Bucket=bucket)
    assert error_code(err.value) == "NoSuchCORSConfiguration"


@pytest.mark.parametrize(
    ("rule", "code"),
    [
        ({"AllowedOrigins": ["*"], "AllowedMethods": ["PATCH"]}, "InvalidRequest"),
        ({"AllowedOrigins": ["http://*.*.com"], "AllowedMethods": ["GET"]}, "InvalidRequest"),
        ({"AllowedOrigins": ["*"], "AllowedMethods": ["GET"], "AllowedHeaders": ["a*b*"]}, "InvalidRequest"),
        ({"AllowedOrigins": ["*"], "AllowedMethods": []}, "MalformedXML"),
    ],
)
def test_put_bucket_cors_validates(s3: Any, bucket: str, rule: dict[str, Any], code: str) -> None:
    with pytest.raises(ClientError) as err:
        s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [rule]})
    assert error_code(err.value) == code
    with pytest.raises(ClientError):
        s3.get_bucket_cors(Bucket=bucket)  # nothing was stored


def test_put_bucket_cors_too_many_rules(s3: Any, bucket: str) -> None:
    rule = {"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]}
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [rule] * 100})
    with pytest.raises(ClientError) as err:
        s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [rule] * 101})
    assert error_code(err.value) == "MalformedXML"
    assert len(s3.get_bucket_cors(Bucket=bucket)["CORSRules"]) == 100


def _raw_put_cors(server: StrataServer, bucket: str, body: bytes, extra: dict[str, str]) -> requests.Response:
    url = f"{server.endpoint}/{bucket}?cors"
    req = sign_request(
        "PUT",
        url,
        access_key=server.access_key,
        secret_key=server.secret_key,
        headers={"Content-Length": str(len(body)), **extra},
        payload_hash=hashlib.sha256(body).hexdigest(),
    )
    return requests.put(url, data=body, headers=req.headers, timeout=30)


def test_put_bucket_cors_requires_a_digest(strata: StrataServer, bucket: str) -> None:
    import base64

    body = (
        b"<CORSConfiguration><CORSRule><AllowedOrigin>*</AllowedOrigin>"
        b"<AllowedMethod>GET</AllowedMethod></CORSRule></CORSConfiguration>"
    )
    resp = _raw_put_cors(strata, bucket, body, {})
    assert resp.status_code == 400
    assert error(resp) == ("InvalidRequest", "Missing required header for this request: Content-MD5")
    bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    assert error(_raw_put_cors(strata, bucket, body, {"Content-MD5": bad}))[0] == "BadDigest"
    good = base64.b64encode(hashlib.md5(body).digest()).decode()
    assert _raw_put_cors(strata, bucket, body, {"Content-MD5": good}).status_code == 200


def test_cors_operations_need_the_owner(strata: StrataServer, bucket: str) -> None:
    resp = requests.get(f"{strata.endpoint}/{bucket}?cors", timeout=30)  # anonymous
    assert resp.status_code == 403
    assert error(resp)[0] == "AccessDenied"


# --------------------------------------------------------------------------- preflight


def test_preflight_allowed(strata: StrataServer, s3: Any, bucket: str) -> None:
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)
    resp = preflight(
        strata, f"/{bucket}/photos/cat.jpg", APP, "PUT", "Content-Type, X-Amz-Date, x-amz-meta-a"
    )
    assert resp.status_code == 200, resp.text
    assert resp.content == b""
    h = resp.headers
    assert h["Access-Control-Allow-Origin"] == APP
    assert h["Access-Control-Allow-Credentials"] == "true"
    assert h["Access-Control-Allow-Methods"] == "GET, PUT, POST"
    assert h["Access-Control-Allow-Headers"] == "content-type, x-amz-date, x-amz-meta-a"
    assert h["Access-Control-Expose-Headers"] == "ETag, x-amz-request-id"
    assert h["Access-Control-Max-Age"] == "3000"
    assert h["Vary"] == VARY
    assert h["x-amz-request-id"]

    # exact origin, bucket-level resource, no requested headers
    resp = preflight(strata, f"/{bucket}", "http://localhost:3000", "POST")
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert "Access-Control-Allow-Headers" not in resp.headers


def test_preflight_wildcard_origin_rule(strata: StrataServer, s3: Any, bucket: str) -> None:
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)
    resp = preflight(strata, f"/{bucket}/k", "http://anyone.test", "HEAD")
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in resp.headers
    assert resp.headers["Access-Control-Allow-Methods"] == "GET, HEAD"
    assert "Access-Control-Max-Age" not in resp.headers
    # the first matching rule wins: for GET from an app origin that is rule 1
    resp = preflight(strata, f"/{bucket}/k", APP, "GET")
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert resp.headers["Access-Control-Max-Age"] == "3000"


@pytest.mark.parametrize(
    ("origin", "method", "headers"),
    [
        ("http://evil.test", "PUT", None),  # origin only allowed by the GET/HEAD rule
        (APP, "DELETE", None),
        (APP, "PUT", "Authorization"),  # header not allowed
        (APP, "PUT", "x-amz-date, Range"),  # one of them not allowed
        ("http://anyone.test", "GET", "x-amz-date"),  # the * rule allows no headers
        ("HTTPS://APP.EXAMPLE.COM", "PUT", None),  # origins are case-sensitive
    ],
)
def test_preflight_denied(
    strata: StrataServer, s3: Any, bucket: str, origin: str, method: str, headers: str | None
) -> None:
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)
    resp = preflight(strata, f"/{bucket}/k", origin, method, headers)
    assert resp.status_code == 403
    code, message = error(resp)
    assert code == "AccessForbidden"
    assert message is not None and message.startswith("CORSResponse: This CORS request is not allowed.")
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_preflight_without_configuration_or_bucket(strata: StrataServer, bucket: str) -> None:
    resp = preflight(strata, f"/{bucket}/k", APP, "GET")
    assert resp.status_code == 403
    assert error(resp) == ("AccessForbidden", "CORSResponse: CORS is not enabled for this bucket.")
    resp = preflight(strata, f"/no-such-{uuid.uuid4().hex[:12]}/k", APP, "GET")
    assert resp.status_code == 403
    assert error(resp) == ("AccessForbidden", "CORSResponse: Bucket not found")


@pytest.mark.parametrize(
    ("origin", "method", "message"),
    [
        (None, "GET", "Insufficient information. Origin request header needed."),
        (APP, None, "Invalid Access-Control-Request-Method: null"),
        (APP, "PATCH", "Invalid Access-Control-Request-Method: PATCH"),
        (None, None, "Insufficient information. Origin request header needed."),
    ],
)
def test_preflight_bad_request(
    strata: StrataServer, s3: Any, bucket: str, origin: str | None, method: str | None, message: str
) -> None:
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)
    resp = preflight(strata, f"/{bucket}/k", origin, method)
    assert resp.status_code == 400
    assert error(resp) == ("BadRequest", message)


def test_preflight_virtual_host(strata: StrataServer, s3: Any, bucket: str) -> None:
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)
    resp = requests.options(
        f"{strata.endpoint}/k",
        headers={
            "Host": f"{bucket}.localhost:{strata.port}",
            "Origin": APP,
            "Access-Control-Request-Method": "GET",
        },
        timeout=30,
    )
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] == APP


# --------------------------------------------------------------------------- actual requests


def test_get_with_origin_gets_cors_headers(strata: StrataServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"hello")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"})
    # no configuration yet: no CORS headers
    resp = requests.get(url, headers={"Origin": APP}, timeout=30)
    assert resp.status_code == 200
    assert "Access-Control-Allow-Origin" not in resp.headers

    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)  # invalidates the cached "none"
    resp = requests.get(url, headers={"Origin": APP}, timeout=30)
    assert resp.content == b"hello"
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert resp.headers["Access-Control-Expose-Headers"] == "ETag, x-amz-request-id"
    assert "Access-Control-Allow-Headers" not in resp.headers

    resp = requests.get(url, headers={"Origin": "http://other.test"}, timeout=30)
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    resp = requests.get(url, timeout=30)  # no Origin: not a CORS request
    assert "Access-Control-Allow-Origin" not in resp.headers

    # errors carry them too (a browser can read why it failed)
    missing = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "absent"})
    resp = requests.get(missing, headers={"Origin": APP}, timeout=30)
    assert resp.status_code == 404
    assert resp.headers["Access-Control-Allow-Origin"] == APP

    # a method no rule allows for this origin: no CORS headers, the request itself still runs
    put = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "p"})
    resp = requests.put(put, data=b"x", headers={"Origin": "http://other.test"}, timeout=30)
    assert resp.status_code == 200
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert resp.headers["Vary"] == "Origin"

    s3.delete_bucket_cors(Bucket=bucket)  # invalidates the cached rules
    resp = requests.get(url, headers={"Origin": APP}, timeout=30)
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_deleted_bucket_does_not_keep_its_cors(strata: StrataServer, s3: Any) -> None:
    name = f"cors-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_cors(Bucket=name, CORSConfiguration=RULES)
    assert preflight(strata, f"/{name}/k", APP, "GET").status_code == 200
    s3.put_object(Bucket=name, Key="k", Body=b"1")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": name, "Key": "k"})
    assert (
        requests.get(url, headers={"Origin": APP}, timeout=30).headers["Access-Control-Allow-Origin"] == APP
    )
    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)
    s3.create_bucket(Bucket=name)
    try:
        s3.put_object(Bucket=name, Key="k", Body=b"2")
        resp = requests.get(url, headers={"Origin": APP}, timeout=30)
        assert resp.content == b"2"
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert preflight(strata, f"/{name}/k", APP, "GET").status_code == 403
    finally:
        s3.delete_object(Bucket=name, Key="k")
        s3.delete_bucket(Bucket=name)
