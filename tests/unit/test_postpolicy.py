"""Tests for gateway.s3.postpolicy: SigV4 form authentication (checked against botocore's
own presigned POST), policy parsing, condition matching and coverage, content-length-range
(tables and hypothesis; bad input is always an S3Error, never a crash)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.s3.errors import S3Error
from gateway.s3.postpolicy import (
    PostAuth,
    auth_fields,
    basename,
    decode_policy,
    expand_filename,
    policy_signature,
    verify_signature,
)
from gateway.s3.sigv4 import derive_signing_key

ACCESS, SECRET, REGION = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "us-east-1"
NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
FUTURE = "2026-11-24T13:00:00.000Z"


def b64(policy: Any) -> str:
    return base64.b64encode(json.dumps(policy).encode()).decode()


def policy(*conditions: Any, expiration: str = FUTURE) -> str:
    return b64({"expiration": expiration, "conditions": list(conditions)})


def code_of(fn: Any, *args: Any) -> str:
    with pytest.raises(S3Error) as err:
        fn(*args)
    return err.value.code


# --------------------------------------------------------------------------- authentication


def test_signature_matches_botocores_presigned_post() -> None:
    s3 = boto3.client(
        "s3",
        region_name="eu-west-3",
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        endpoint_url="http://127.0.0.1:1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    post = s3.generate_presigned_post(
        "bkt",
        "up/${filename}",
        Fields={"Content-Type": "image/png"},
        Conditions=[{"Content-Type": "image/png"}, ["content-length-range", 1, 100]],
    )
    fields = {k.lower(): v for k, v in post["fields"].items()}
    auth = auth_fields(fields)
    assert auth is not None
    assert (auth.access_key, auth.region) == (ACCESS, "eu-west-3")
    verify_signature(derive_signing_key(SECRET, auth.date, auth.region), auth)
    with pytest.raises(S3Error) as err:
        verify_signature(derive_signing_key("wrong", auth.date, auth.region), auth)
    assert err.value.code == "SignatureDoesNotMatch"

    parsed = decode_policy(auth.policy)
    parsed.check_expiry(datetime.now(UTC))
    assert parsed.length_range == (1, 100)
    expanded = expand_filename(fields, "C:\\photos\\cat.png")
    assert expanded["key"] == "up/cat.png"
    parsed.check_fields(expanded, "bkt")
    assert code_of(parsed.check_fields, expanded, "other-bucket") == "AccessDenied"
    assert code_of(parsed.check_fields, {**expanded, "content-type": "text/html"}, "bkt") == "AccessDenied"
    assert code_of(parsed.check_fields, {**expanded, "key": "elsewhere/cat.png"}, "bkt") == "AccessDenied"


def _auth(**overrides: str) -> dict[str, str]:
    fields = {
        "policy": policy(),
        "x-amz-algorithm": "AWS4-HMAC-SHA256",
        "x-amz-credential": f"{ACCESS}/20261124/{REGION}/s3/aws4_request",
        "x-amz-date": "20261124T120000Z",
        "x-amz-signature": "0" * 64,
    }
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v != "<drop>"}


def test_auth_fields_parse() -> None:
    auth = auth_fields(_auth())
    assert auth == PostAuth(ACCESS, "20261124", REGION, "20261124T120000Z", "0" * 64, policy())
    assert auth_fields({"key": "k"}) is None  # anonymous form


@pytest.mark.parametrize(
    ("overrides", "code", "argument"),
    [
        ({"policy": "<drop>"}, "InvalidArgument", "Policy"),
        ({"x-amz-signature": "<drop>"}, "InvalidArgument", "X-Amz-Signature"),
        ({"x-amz-credential": "<drop>"}, "InvalidArgument", "X-Amz-Credential"),
        ({"x-amz-date": "<drop>"}, "InvalidArgument", "X-Amz-Date"),
        ({"x-amz-algorithm": "<drop>"}, "InvalidArgument", "X-Amz-Algorithm"),
        ({"x-amz-algorithm": "AWS4-ECDSA-P256-SHA256"}, "InvalidArgument", "x-amz-algorithm"),
        ({"x-amz-credential": "AK/20261124/us-east-1/s3"}, "InvalidArgument", "x-amz-credential"),
        ({"x-amz-credential": "AK/2026112/us-east-1/s3/aws4_request"}, "InvalidArgument", "x-amz-credential"),
        (
            {"x-amz-credential": "AK/20261124/us-east-1/ec2/aws4_request"},
            "InvalidArgument",
            "x-amz-credential",
        ),
        ({"x-amz-credential": "AK/20261124//s3/aws4_request"}, "InvalidArgument", "x-amz-credential"),
        ({"x-amz-date": "20261125T120000Z"}, "InvalidArgument", "x-amz-date"),
        ({"x-amz-date": "2026-11-24"}, "InvalidArgument", "x-amz-date"),
    ],
)
def test_auth_fields_refused(overrides: dict[str, str], code: str, argument: str) -> None:
    with pytest.raises(S3Error) as err:
        auth_fields(_auth(**overrides))
    assert err.value.code == code
    assert err.value.extra["ArgumentName"] == argument


def test_sigv2_forms_are_refused() -> None:
    assert code_of(auth_fields, {"awsaccesskeyid": "AK", "signature": "x", "key": "k"}) == "InvalidRequest"


def test_signature_is_hex_hmac_of_the_base64_policy() -> None:
    key = derive_signing_key(SECRET, "20261124", REGION)
    text = policy({"bucket": "b"})
    auth = auth_fields(_auth(policy=text, **{"x-amz-signature": policy_signature(key, text)}))
    assert auth is not None
    verify_signature(key, auth)
    tampered = PostAuth(**{**auth.__dict__, "policy": policy({"bucket": "c"})})
    assert code_of(verify_signature, key, tampered) == "SignatureDoesNotMatch"
    odd = PostAuth(**{**auth.__dict__, "signature": "\udcff" + auth.signature[1:]})
    assert code_of(verify_signature, key, odd) == "SignatureDoesNotMatch"


# --------------------------------------------------------------------------- the policy


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("!!!", "Invalid Policy: Invalid JSON."),
        (base64.b64encode(b"not json").decode(), "Invalid Policy: Invalid JSON."),
        (base64.b64encode(b"\xff\xfe").decode(), "Invalid Policy: Invalid JSON."),
        (b64([1, 2]), "Invalid Policy: Invalid JSON."),
        (b64({"conditions": []}), "Invalid Policy: Policy missing expiration."),
        (b64({"expiration": FUTURE}), "Invalid Policy: Policy missing conditions."),
        (policy(expiration="tomorrow"), "Invalid Policy: Invalid 'expiration' value: 'tomorrow'"),
        (policy(expiration="2026-13-40T00:00:00Z"), None),
        (b64({"expiration": 5, "conditions": []}), None),
        (b64({"expiration": FUTURE, "conditions": {}}), None),
        (policy({"a": "1", "b": "2"}), None),
        (policy({}), None),
        (policy({"acl": ["x"]}), None),
        (policy({"acl": True}), None),
        (policy(["eq", "key", "x"]), None),
        (policy(["eq", "$key"]), None),
        (policy(["ends-with", "$key", "x"]), None),
        (policy(["eq", "$key", None]), None),
        (policy(["eq", 5, "x"]), None),
        (policy("acl"), None),
        (policy(["content-length-range", 10, 5]), None),
        (policy(["content-length-range", -1, 5]), None),
        (policy(["content-length-range", "a", 5]), None),
        (policy(["content-length-range", True, 5]), None),
        (policy(["content-length-range", 1.5, 5]), None),
        (policy(["content-length-range", "9" * 40, "9" * 40]), None),
        (base64.b64encode(b"[" * 100_000).decode(), "Invalid Policy: Invalid JSON."),
    ],
)
def test_bad_policies(text: str, message: str | None) -> None:
    with pytest.raises(S3Error) as err:
        decode_policy(text)
    assert err.value.code == "InvalidPolicyDocument"
    assert err.value.status == 400
    if message is not None:
        assert err.value.message == message


def test_expiration_formats_and_expiry() -> None:
    for stamp in ("2026-11-24T12:00:00Z", "2026-11-24T12:00:00.000Z", "2026-11-24T12:00:00.5Z"):
        parsed = decode_policy(policy(expiration=stamp))
        parsed.check_expiry(NOW - timedelta(seconds=1))
        with pytest.raises(S3Error) as err:
            parsed.check_expiry(NOW + timedelta(seconds=1))
        assert (err.value.code, err.value.message) == (
            "AccessDenied",
            "Invalid according to Policy: Policy expired.",
        )


FIELDS = {
    "key": "user/eric/photo.jpg",
    "acl": "public-read",
    "content-type": "image/jpeg",
    "x-amz-meta-uuid": "14365123651274",
    "success_action_status": "201",
    "x-amz-signature": "s",
    "policy": "p",
    "x-ignore-flash": "whatever",
}
CONDITIONS = [
    {"bucket": "photos"},
    ["starts-with", "$key", "user/eric/"],
    {"acl": "public-read"},
    ["starts-with", "$Content-Type", "image/"],
    ["eq", "$x-amz-meta-uuid", "14365123651274"],
    {"success_action_status": "201"},
]


def test_fields_satisfying_the_policy() -> None:
    decode_policy(policy(*CONDITIONS)).check_fields(FIELDS, "photos")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"key": "user/bob/photo.jpg"}, 'Policy Condition failed: ["starts-with", "$key", "user/eric/"]'),
        ({"acl": "private"}, 'Policy Condition failed: ["eq", "$acl", "public-read"]'),
        (
            {"content-type": "text/html"},
            'Policy Condition failed: ["starts-with", "$content-type", "image/"]',
        ),
        (
            {"success_action_status": "200"},
            'Policy Condition failed: ["eq", "$success_action_status", "201"]',
        ),
        ({"x-amz-meta-other": "1"}, "Extra input fields: x-amz-meta-other"),
        ({"x-amz-meta-a": "1", "tagging": "t"}, "Extra input fields: x-amz-meta-a, tagging"),
    ],
)
def test_fields_violating_the_policy(change: dict[str, str], message: str) -> None:
    with pytest.raises(S3Error) as err:
        decode_policy(policy(*CONDITIONS)).check_fields({**FIELDS, **change}, "photos")
    assert (err.value.code, err.value.message) == ("AccessDenied", f"Invalid according to Policy: {message}")
    assert err.value.status == 403


def test_condition_details() -> None:
    # the bucket condition is checked against the addressed bucket, not a form field
    assert (
        code_of(decode_policy(policy({"bucket": "a"})).check_fields, {"bucket": "a"}, "b") == "AccessDenied"
    )
    # a field missing from the form matches as ""
    decode_policy(policy(["starts-with", "$content-type", ""])).check_fields({}, "b")
    assert code_of(decode_policy(policy({"acl": "private"})).check_fields, {}, "b") == "AccessDenied"
    # names are case-insensitive; several conditions on one field must all hold
    both = decode_policy(policy(["starts-with", "$KEY", "a/"], ["eq", "$key", "a/b"]))
    both.check_fields({"key": "a/b"}, "b")
    assert code_of(both.check_fields, {"key": "a/c"}, "b") == "AccessDenied"
    # numbers in simple conditions are compared as text
    decode_policy(policy({"success_action_status": 201})).check_fields({"success_action_status": "201"}, "b")


@pytest.mark.parametrize(
    ("ranges", "size", "code"),
    [
        ([], 10**12, None),
        ([[0, 10]], 10, None),
        ([[0, 10]], 11, "EntityTooLarge"),
        ([[5, 10]], 4, "EntityTooSmall"),
        ([[5, 10]], 5, None),
        ([["5", "10"]], 7, None),
        ([[0, 100], [50, 200]], 49, "EntityTooSmall"),  # every range applies
        ([[0, 100], [50, 200]], 101, "EntityTooLarge"),
        ([[0, 100], [50, 200]], 75, None),
    ],
)
def test_content_length_range(ranges: list[list[Any]], size: int, code: str | None) -> None:
    parsed = decode_policy(policy(*[["content-length-range", *r] for r in ranges]))
    if code is None:
        parsed.check_length(size)
        return
    with pytest.raises(S3Error) as err:
        parsed.check_length(size)
    assert err.value.code == code
    assert err.value.extra["ProposedSize"] == str(size)


# --------------------------------------------------------------------------- the form


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (None, ""),
        ("", ""),
        ("cat.png", "cat.png"),
        ("C:\\Program Files\\directory1\\file.txt", "file.txt"),
        ("/home/me/a b.txt", "a b.txt"),
        ("dir/", ""),
    ],
)
def test_basename(name: str | None, expected: str) -> None:
    assert basename(name) == expected


def test_expand_filename_in_every_field() -> None:
    fields = {"key": "u/${filename}", "x-amz-meta-name": "${filename}!", "acl": "private"}
    assert expand_filename(fields, "/tmp/x.bin") == {
        "key": "u/x.bin",
        "x-amz-meta-name": "x.bin!",
        "acl": "private",
    }
    assert expand_filename(fields, None)["key"] == "u/"


# --------------------------------------------------------------------------- hypothesis

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_CONDITION = st.one_of(
    _JSON,
    st.dictionaries(st.sampled_from(["key", "acl", "bucket", "Content-Type"]), _JSON, min_size=1, max_size=2),
    st.tuples(
        st.sampled_from(["eq", "starts-with", "content-length-range", "EQ", "in"]),
        st.one_of(st.sampled_from(["$key", "$acl", "key", "$", "$x-amz-meta-a"]), _JSON),
        _JSON,
    ).map(list),
)


@settings(max_examples=400)
@given(st.text(max_size=200))
def test_arbitrary_policy_text_never_crashes(text: str) -> None:
    try:
        decode_policy(text)
    except S3Error as err:
        assert err.code == "InvalidPolicyDocument"


@settings(max_examples=400)
@given(
    st.one_of(st.just(FUTURE), _JSON),
    st.lists(_CONDITION, max_size=6),
    st.dictionaries(st.sampled_from(["key", "acl", "content-type", "x-amz-meta-a", "x-ignore-z"]), st.text()),
    st.integers(min_value=0, max_value=10**6),
)
def test_arbitrary_policies_never_crash(
    expiration: Any, conditions: list[Any], fields: dict[str, str], size: int
) -> None:
    try:
        parsed = decode_policy(b64({"expiration": expiration, "conditions": conditions}))
    except S3Error as err:
        assert err.code == "InvalidPolicyDocument"
        return
    for step in (
        lambda: parsed.check_expiry(NOW),
        lambda: parsed.check_fields(fields, "bkt"),
        lambda: parsed.check_length(size),
    ):
        try:
            step()
        except S3Error as err:
            assert err.code in ("AccessDenied", "EntityTooLarge", "EntityTooSmall")


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from([*_auth(), "signature", "awsaccesskeyid", "key"]), st.text()))
def test_arbitrary_auth_fields_never_crash(fields: dict[str, str]) -> None:
    try:
        auth = auth_fields(fields)
    except S3Error as err:
        assert err.code in ("InvalidArgument", "InvalidRequest")
        return
    if auth is not None:
        try:
            verify_signature(derive_signing_key(SECRET, auth.date, auth.region), auth)
        except S3Error as err:
            assert err.code == "SignatureDoesNotMatch"
