"""The hand-written SigV4 signer must produce botocore's exact Authorization header."""

from __future__ import annotations

import calendar
import datetime
from unittest import mock

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from bench.signer import UNSIGNED_PAYLOAD, SigV4Signer, encode_path, encode_query

AK = "AKIDEXAMPLEBENCH0001"
SK = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
HOST = "127.0.0.1:9000"
WHEN = datetime.datetime(2026, 11, 24, 1, 2, 3)

CASES = [
    ("PUT", "/bucket/obj-000000001", [], {}),
    ("PUT", "/bucket/dir/a key+with=odd&chars~ü.txt", [], {"content-type": "application/octet-stream"}),
    ("GET", "/bucket/big", [], {"range": "bytes=0-99"}),
    ("GET", "/bucket", [("list-type", "2"), ("prefix", "run 1/é"), ("max-keys", "1000")], {}),
    ("HEAD", "/bucket/k", [], {"x-amz-meta-note": "  spaced   value ", "X-Amz-Meta-Other": "B"}),
    ("DELETE", "/bucket/k", [("versionId", "abc/def=+")], {}),
    ("PUT", "/bucket", [], {}),
]


def botocore_authorization(
    method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str], region: str = "us-east-1"
) -> str:
    url = f"http://{HOST}{encode_path(path)}"
    request = AWSRequest(method=method, url=url, headers=dict(headers), params=query or None)
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    auth = S3SigV4Auth(Credentials(AK, SK), "s3", region)
    with mock.patch("botocore.auth.get_current_datetime", return_value=WHEN):
        auth.add_auth(request)
    assert request.headers["X-Amz-Content-SHA256"] == UNSIGNED_PAYLOAD
    return str(request.headers["Authorization"])


@pytest.mark.parametrize(("method", "path", "query", "headers"), CASES)
def test_matches_botocore(
    method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str]
) -> None:
    signer = SigV4Signer(AK, SK, "us-east-1")
    now = calendar.timegm(WHEN.timetuple())
    ours = signer.sign(method, HOST, path, query, headers, now=now)
    assert ours["authorization"] == botocore_authorization(method, path, query, headers)
    assert ours["x-amz-date"] == "20261124T010203Z"
    assert ours["x-amz-content-sha256"] == UNSIGNED_PAYLOAD
    assert ours["host"] == HOST


def test_other_region_and_day_change() -> None:
    signer = SigV4Signer(AK, SK, "eu-west-3")
    now = calendar.timegm(WHEN.timetuple())
    first = signer.sign("GET", HOST, "/b/k", now=now)
    assert first["authorization"] == botocore_authorization("GET", "/b/k", [], {}, region="eu-west-3")
    key_day1 = signer.signing_key("20261124")
    later = signer.sign("GET", HOST, "/b/k", now=now + 86400)
    assert later["x-amz-date"].startswith("20261125")
    assert signer.signing_key("20261125") != key_day1
    assert "/20261125/eu-west-3/s3/aws4_request" in later["authorization"]


def test_encoding_helpers() -> None:
    assert encode_path("b/a b+c~d") == "/b/a%20b%2Bc~d"
    assert encode_query([("prefix", "a/b c"), ("list-type", "2")]) == "list-type=2&prefix=a%2Fb%20c"
