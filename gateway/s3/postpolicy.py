"""Browser-based uploads (POST Object, AWS Signature Version 4): the form's authentication
fields, its POST policy and the policy's conditions.

Pure: no I/O. The handler (``gateway.s3.handlers.post_object``) reads the form fields that
precede the file, then calls, in order, :func:`auth_fields`, :func:`verify_signature` (with
the signing key derived from the credential's secret), :func:`decode_policy`,
:meth:`Policy.check_expiry`, :func:`expand_filename` and :meth:`Policy.check_fields`, and
enforces :attr:`Policy.length_range` while it streams the file.

Rules (S3 API reference, "Browser-Based Uploads Using POST (AWS Signature Version 4)" and
"POST Policy"):

* the signature is ``hex(HMAC-SHA256(signing_key, <the base64 policy field as sent>))``,
  the signing key derived from the ``x-amz-credential`` scope as for any SigV4 request;
* the policy is base64 of a UTF-8 JSON object with ``expiration`` (ISO 8601 UTC) and
  ``conditions``; each condition is ``{"field": "value"}`` (exact), ``["eq", "$field",
  "value"]``, ``["starts-with", "$field", "prefix"]`` (``""`` allows anything) or
  ``["content-length-range", min, max]``; field names are case-insensitive; ``bucket`` is the
  addressed bucket; a field absent from the form matches as the empty string;
* every form field except ``x-amz-signature``, ``file``, ``policy`` and ``x-ignore-*`` must
  be named by at least one condition;
* ``${filename}`` in any field is replaced by the uploaded file's name (the part after the
  last ``/`` or ``\\``) before the conditions are checked.

Failures: a policy that is not base64 JSON of that shape is ``InvalidPolicyDocument``;
an expired policy, a failed condition, or an unnamed field is ``AccessDenied`` "Invalid
according to Policy: ..."; a wrong signature is ``SignatureDoesNotMatch``; a file outside
``content-length-range`` is ``EntityTooLarge`` / ``EntityTooSmall``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.s3.errors import S3Error

ALGORITHM = "AWS4-HMAC-SHA256"
EXEMPT_FIELDS = frozenset({"x-amz-signature", "file", "policy"})
IGNORED_PREFIX = "x-ignore-"
MAX_FORM_BYTES = 20 * 1024  # "The form data and boundaries (excluding the file) cannot exceed 20 KB."
FILENAME_VARIABLE = "${filename}"

_EXPIRATION = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?Z", re.ASCII)
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z", re.ASCII)
_SCOPE_DATE = re.compile(r"\d{8}", re.ASCII)
_MAX_LENGTH_DIGITS = 19


def _invalid(detail: str) -> S3Error:
    return S3Error("InvalidPolicyDocument", f"Invalid Policy: {detail}")


def _denied(detail: str) -> S3Error:
    return S3Error("AccessDenied", f"Invalid according to Policy: {detail}")


def missing_field(name: str) -> S3Error:
    return S3Error(
        "InvalidArgument",
        f"Bucket POST must contain a field named '{name}'.  If it is specified, please check the "
        "order of the fields.",
        ArgumentName=name,
        ArgumentValue="",
    )


# --------------------------------------------------------------------------- authentication


@dataclass(frozen=True)
class PostAuth:
    """The SigV4 fields of a form."""

    access_key: str
    date: str  # YYYYMMDD of the credential scope
    region: str
    amz_date: str
    signature: str
    policy: str  # the base64 policy exactly as sent (the string that is signed)


def auth_fields(fields: Mapping[str, str]) -> PostAuth | None:
    """The form's SigV4 authentication; ``None`` for an anonymous form (no policy, no signature)."""
    sigv4 = ("x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature", "policy")
    if not any(name in fields for name in sigv4):
        if "awsaccesskeyid" in fields or "signature" in fields:
            raise S3Error(
                "InvalidRequest",
                "The authorization mechanism you have provided is not supported. "
                "Please use AWS4-HMAC-SHA256.",
            )
        return None
    for name, label in (
        ("policy", "Policy"),
        ("x-amz-algorithm", "X-Amz-Algorithm"),
        ("x-amz-credential", "X-Amz-Credential"),
        ("x-amz-date", "X-Amz-Date"),
        ("x-amz-signature", "X-Amz-Signature"),
    ):
        if not fields.get(name):
            raise missing_field(label)
    if fields["x-amz-algorithm"] != ALGORITHM:
        raise S3Error(
            "InvalidArgument",
            'X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"',
            ArgumentName="x-amz-algorithm",
            ArgumentValue=fields["x-amz-algorithm"],
        )
    credential = fields["x-amz-credential"]
    parts = credential.rsplit("/", 4)
    if (
        len(parts) != 5
        or not all(parts)
        or not _SCOPE_DATE.fullmatch(parts[1])
        or parts[3] != "s3"
        or parts[4] != "aws4_request"
    ):
        raise S3Error(
            "InvalidArgument",
            "Error parsing the X-Amz-Credential parameter; the Credential is mal-formed; expecting "
            '"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".',
            ArgumentName="x-amz-credential",
            ArgumentValue=credential,
        )
    amz_date = fields["x-amz-date"]
    if not _AMZ_DATE.fullmatch(amz_date) or amz_date[:8] != parts[1]:
        raise S3Error(
            "InvalidArgument",
            "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\" and on the "
            "credential's date.",
            ArgumentName="x-amz-date",
            ArgumentValue=amz_date,
        )
    return PostAuth(
        access_key=parts[0],
        date=parts[1],
        region=parts[2],
        amz_date=amz_date,
        signature=fields["x-amz-signature"],
        policy=fields["policy"],
    )


def policy_signature(signing_key: bytes, policy_b64: str) -> str:
    """hex(HMAC-SHA256(signing key, the base64 policy))."""
    return hmac.new(signing_key, policy_b64.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def verify_signature(signing_key: bytes, auth: PostAuth) -> None:
    """Constant-time check of the form's signature; ``SignatureDoesNotMatch`` if wrong."""
    expected = policy_signature(signing_key, auth.policy)
    if not hmac.compare_digest(expected.encode("ascii"), auth.signature.encode("utf-8", "surrogatepass")):
        raise S3Error(
            "SignatureDoesNotMatch",
            AWSAccessKeyId=auth.access_key,
            StringToSign=auth.policy,
            SignatureProvided=auth.signature,
        )


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class Condition:
    op: str  # "eq" or "starts-with"
    field: str  # lower-case form field name, without the "$"
    value: str

    def text(self) -> str:
        return json.dumps([self.op, f"${self.field}", self.value])

    def holds(self, actual: str) -> bool:
        if self.op == "eq":
            return actual == self.value
        return actual.startswith(self.value)


@dataclass(frozen=True)
class Policy:
    expiration: datetime
    conditions: tuple[Condition, ...]
    length_range: tuple[int, int] | None  # (min, max) bytes, every content-length-range at once

    @property
    def covered(self) -> frozenset[str]:
        """Form field names (lower-case) that some condition names."""
        return frozenset(c.field for c in self.conditions)

    def check_expiry(self, now: datetime) -> None:
        if now >= self.expiration:
            raise _denied("Policy expired.")

    def check_fields(self, fields: Mapping[str, str], bucket: str) -> None:
        """Every condition holds for the (expanded, lower-case named) fields, and every field
        is named by a condition."""
        for cond in self.conditions:
            actual = bucket if cond.field == "bucket" else fields.get(cond.field, "")
            if not cond.holds(actual):
                raise _denied(f"Policy Condition failed: {cond.text()}")
        extra = [
            name
            for name in fields
            if name not in EXEMPT_FIELDS and not name.startswith(IGNORED_PREFIX) and name not in self.covered
        ]
        if extra:
            raise _denied(f"Extra input fields: {', '.join(extra)}")

    def check_length(self, size: int) -> None:
        """``EntityTooSmall`` / ``EntityTooLarge`` for a file of ``size`` bytes."""
        if self.length_range is None:
            return
        low, high = self.length_range
        if size < low:
            raise S3Error(
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed size",
                ProposedSize=str(size),
                MinSizeAllowed=str(low),
            )
        if size > high:
            raise S3Error(
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed size",
                ProposedSize=str(size),
                MaxSizeAllowed=str(high),
            )


def _parse_expiration(value: Any) -> datetime:
    m = _EXPIRATION.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise _invalid(f"Invalid 'expiration' value: '{value}'")
    try:
        whole = datetime(*(int(g) for g in m.groups()[:6]), tzinfo=UTC)
    except ValueError as exc:
        raise _invalid(f"Invalid 'expiration' value: '{value}'") from exc
    fraction = m.group(7)
    if fraction:
        whole = whole.replace(microsecond=int((fraction[1:] + "000000")[:6]))
    return whole


def _condition_value(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _invalid(f"Invalid {where}: the value must be a string.")


def _length(value: Any) -> int:
    if isinstance(value, bool):
        raise _invalid("Invalid content-length-range: the bounds must be integers.")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= _MAX_LENGTH_DIGITS:
        number = int(value)
    else:
        raise _invalid("Invalid content-length-range: the bounds must be integers.")
    if number < 0:
        raise _invalid("Invalid content-length-range: the bounds must not be negative.")
    return number


def _parse_conditions(raw: Any) -> tuple[tuple[Condition, ...], tuple[int, int] | None]:
    if not isinstance(raw, list):
        raise _invalid("Invalid 'conditions' value: it must be a list.")
    conditions: list[Condition] = []
    low, high, ranged = 0, 0, False
    for item in raw:
        if isinstance(item, dict):
            if len(item) != 1:
                raise _invalid(
                    "Invalid Simple-Condition: Simple-Conditions must have exactly one property specified."
                )
            ((name, value),) = item.items()
            conditions.append(Condition("eq", name.lower(), _condition_value(value, "Simple-Condition")))
            continue
        if not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str):
            raise _invalid(f"Invalid Condition: {json.dumps(item)[:200]}")
        op = item[0].lower()
        if op == "content-length-range":
            first, second = _length(item[1]), _length(item[2])
            if first > second:
                raise _invalid("Invalid content-length-range: the minimum exceeds the maximum.")
            low, high = (max(low, first), min(high, second)) if ranged else (first, second)
            ranged = True
            continue
        if op not in ("eq", "starts-with"):
            raise _invalid(f"Invalid Condition: unknown operation '{item[0]}'.")
        name = item[1]
        if not isinstance(name, str) or not name.startswith("$") or len(name) < 2:
            raise _invalid(f"Invalid Condition: the field name must start with '$': {json.dumps(item)[:200]}")
        conditions.append(Condition(op, name[1:].lower(), _condition_value(item[2], "Condition")))
    return tuple(conditions), ((low, high) if ranged else None)


def decode_policy(policy_b64: str) -> Policy:
    """Parse the base64 policy field; ``InvalidPolicyDocument`` when it is not a policy."""
    try:
        raw = base64.b64decode("".join(policy_b64.split()), validate=True)
        doc = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeError, RecursionError) as exc:
        raise _invalid("Invalid JSON.") from exc
    if not isinstance(doc, dict):
        raise _invalid("Invalid JSON.")
    if "expiration" not in doc:
        raise _invalid("Policy missing expiration.")
    if "conditions" not in doc:
        raise _invalid("Policy missing conditions.")
    conditions, length_range = _parse_conditions(doc["conditions"])
    return Policy(_parse_expiration(doc["expiration"]), conditions, length_range)


# --------------------------------------------------------------------------- the form


def basename(filename: str | None) -> str:
    """The client's file name without any directory part (``C:\\a\\b.txt`` -> ``b.txt``)."""
    if not filename:
        return ""
    return re.split(r"[/\\]", filename)[-1]


def expand_filename(fields: Mapping[str, str], filename: str | None) -> dict[str, str]:
    """Every field with ``${filename}`` replaced by the uploaded file's base name."""
    name = basename(filename)
    return {k: v.replace(FILENAME_VARIABLE, name) for k, v in fields.items()}
