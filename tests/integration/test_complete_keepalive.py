"""CompleteMultipartUpload keeps the connection alive with whitespace after an early 200, as
S3 does; both the result and a late error arrive inside that 200 and clients parse them."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from botocore.exceptions import ClientError
from support import rawhttp
from support.s3 import make_client
from support.server import StrataServer


@pytest.fixture
def eager_keepalive(strata_factory: Callable[..., StrataServer]) -> StrataServer:
    # Interval 0: every completion takes the streamed 200 + whitespace path.
    return strata_factory(extra_env={"STRATA_SERVER_COMPLETE_KEEPALIVE_SECONDS": "0"})


def test_streamed_complete_result_and_error(eager_keepalive: StrataServer) -> None:
    s3 = make_client(eager_keepalive)
    s3.create_bucket(Bucket="ka-one")
    mp = s3.create_multipart_upload(Bucket="ka-one", Key="obj")
    part1 = os.urandom(5 * 1024 * 1024)
    e1 = s3.upload_part(Bucket="ka-one", Key="obj", UploadId=mp["UploadId"], PartNumber=1, Body=part1)["ETag"]
    e2 = s3.upload_part(Bucket="ka-one", Key="obj", UploadId=mp["UploadId"], PartNumber=2, Body=b"tail")[
        "ETag"
    ]
    # A wrong ETag fails after the 200 went out: botocore must still raise the S3 error.
    wrong = [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": '"' + "0" * 32 + '"'}]
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(
            Bucket="ka-one", Key="obj", UploadId=mp["UploadId"], MultipartUpload={"Parts": wrong}
        )
    assert err.value.response["Error"]["Code"] == "InvalidPart"
    done = s3.complete_multipart_upload(
        Bucket="ka-one", Key="obj", UploadId=mp["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]},
    )  # fmt: skip
    assert done["ETag"].endswith('-2"')
    assert s3.get_object(Bucket="ka-one", Key="obj")["Body"].read() == part1 + b"tail"


def test_raw_streamed_body_is_declaration_then_whitespace(eager_keepalive: StrataServer) -> None:
    s3 = make_client(eager_keepalive)
    s3.create_bucket(Bucket="ka-two")
    mp = s3.create_multipart_upload(Bucket="ka-two", Key="o")
    etag = s3.upload_part(Bucket="ka-two", Key="o", UploadId=mp["UploadId"], PartNumber=1, Body=b"x")["ETag"]
    body = (
        f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part>"
        "</CompleteMultipartUpload>"
    ).encode()
    url = s3.generate_presigned_url(
        "complete_multipart_upload", Params={"Bucket": "ka-two", "Key": "o", "UploadId": mp["UploadId"]}
    )
    path = url.split(f":{eager_keepalive.port}", 1)[1]
    resp = rawhttp.request(
        "127.0.0.1", eager_keepalive.port, "POST", path,
        {"Host": f"127.0.0.1:{eager_keepalive.port}", "Content-Length": str(len(body))}, body,
    )  # fmt: skip
    assert resp.status == 200
    declaration = b'<?xml version="1.0" encoding="UTF-8"?>\n'
    assert resp.body.startswith(declaration + b" ")  # declaration first, then keep-alive whitespace
    assert b"<CompleteMultipartUploadResult" in resp.body
