"""A real ``strata serve`` whose master key is a KMS key (moto's KMS over HTTP): objects round
trip, every pack's DEK is wrapped by that key, no local keyring appears, a restart reads
everything back through KMS, and a key that does not exist stops the start with a clear
error."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer
from support.s3 import make_client
from support.server import ServerStartError, StrataServer

from dedup.pack import HEADER_MAX, parse_header

MiB = 1024 * 1024
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def kms_env(moto_url: str) -> dict[str, str]:
    kms = boto3.client(
        "kms", region_name="us-east-1", endpoint_url=moto_url,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    arn = kms.create_key(Description="strata integration")["KeyMetadata"]["Arn"]
    return {"STRATA_KMS": arn, "STRATA_KMS_ENDPOINT": moto_url, **DUMMY_AWS}


def _pack_headers(data_dir: Path) -> list[str]:
    kek_ids = []
    for pack in (data_dir / "blobs").rglob("*.pack"):
        with open(pack, "rb") as fh:
            kek_ids.append(parse_header(fh.read(HEADER_MAX)).wrapped_dek.kek_id)
    return kek_ids


def test_gateway_on_kms_round_trips_and_restarts(kms_env: dict[str, str], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with StrataServer(data_dir, log_path=tmp_path / "first.log", extra_env=kms_env) as server:
        data = _upload_and_check(server, kms_env)
    # A new process: root credentials and pack DEKs come back only through KMS.
    with StrataServer(data_dir, log_path=tmp_path / "again.log", extra_env=kms_env) as again:
        s3 = make_client(again)
        body = s3.get_object(Bucket="sealed", Key="blob")["Body"].read()
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
        assert s3.get_object(Bucket="sealed", Key="small")["Body"].read() == b"hello kms"


def _upload_and_check(server: StrataServer, kms_env: dict[str, str]) -> bytes:
    s3 = make_client(server)
    s3.create_bucket(Bucket="sealed")
    data = os.urandom(3 * MiB)
    s3.put_object(Bucket="sealed", Key="blob", Body=data)
    s3.put_object(Bucket="sealed", Key="small", Body=b"hello kms")
    assert s3.get_object(Bucket="sealed", Key="blob")["Body"].read() == data
    assert s3.get_object(Bucket="sealed", Key="small")["Body"].read() == b"hello kms"

    assert not (server.data_dir / "keyring.json").exists()
    kek_ids = _pack_headers(server.data_dir)
    assert kek_ids and set(kek_ids) == {kms_env["STRATA_KMS"]}
    return data


def test_missing_kms_key_stops_the_start(tmp_path: Path, moto_url: str) -> None:
    env = {"STRATA_KMS": "alias/strata-missing", "STRATA_KMS_ENDPOINT": moto_url, **DUMMY_AWS}
    server = StrataServer(tmp_path / "data", log_path=tmp_path / "server.log", extra_env=env)
    with pytest.raises(ServerStartError) as failed:
        server.start()
    assert "alias/strata-missing" in str(failed.value) and "not found" in str(failed.value)
    assert "testing" not in server.stderr_text()  # no credential in the log
