"""Several users: `strata admin` creates users and keys against a running server's stores;
buckets belong to their creator; dedup never crosses users; secrets are stored encrypted."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from botocore.exceptions import ClientError
from support.s3 import make_client
from support.server import REPO_ROOT, StrataServer, dir_bytes

MiB = 1024 * 1024


def _admin(server: StrataServer, *args: str) -> tuple[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "admin", *args, "--data-dir", str(server.data_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    fields = dict(line.split(":", 1) for line in out.strip().splitlines())
    return fields["access key"].strip(), fields["secret key"].strip()


def test_users_are_isolated(strata_factory: Callable[..., StrataServer]) -> None:
    server = strata_factory()
    root = make_client(server)
    ak, sk = _admin(server, "user", "add", "alice")
    alice = make_client(server, access_key=ak, secret_key=sk)
    alice.create_bucket(Bucket="alice-data")
    root.create_bucket(Bucket="root-data")
    assert [b["Name"] for b in alice.list_buckets()["Buckets"]] == ["alice-data"]
    assert [b["Name"] for b in root.list_buckets()["Buckets"]] == ["root-data"]
    alice.put_object(Bucket="alice-data", Key="secret.txt", Body=b"mine")
    for call in (
        lambda: root.get_object(Bucket="alice-data", Key="secret.txt"),
        lambda: root.put_object(Bucket="alice-data", Key="x", Body=b"x"),
        lambda: root.list_objects_v2(Bucket="alice-data"),
        lambda: root.delete_bucket(Bucket="alice-data"),
        lambda: alice.put_object(Bucket="root-data", Key="x", Body=b"x"),
        lambda: alice.copy_object(
            Bucket="alice-data", Key="c", CopySource={"Bucket": "root-data", "Key": "k"}
        ),
    ):
        with pytest.raises(ClientError) as err:
            call()
        assert err.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError) as err:
        root.create_bucket(Bucket="alice-data")
    assert err.value.response["Error"]["Code"] == "BucketAlreadyExists"
    # A second key for alice works; the secret is not stored in the clear.
    ak2, sk2 = _admin(server, "key", "create", "alice")
    assert ak2 != ak
    second = make_client(server, access_key=ak2, secret_key=sk2)
    assert second.get_object(Bucket="alice-data", Key="secret.txt")["Body"].read() == b"mine"
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert sk.encode() not in data and sk2.encode() not in data, path


def test_admin_errors(strata_factory: Callable[..., StrataServer]) -> None:
    server = strata_factory()
    _admin(server, "user", "add", "bob")
    for args in (("user", "add", "bob"), ("key", "create", "nobody"), ("user", "add", "bad name!")):
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "admin", *args, "--data-dir", str(server.data_dir)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr


def test_dedup_never_crosses_users(strata_factory: Callable[..., StrataServer]) -> None:
    server = strata_factory()
    root = make_client(server)
    ak, sk = _admin(server, "user", "add", "carol")
    carol = make_client(server, access_key=ak, secret_key=sk)
    root.create_bucket(Bucket="root-b")
    carol.create_bucket(Bucket="carol-b")
    data = os.urandom(8 * MiB)
    root.put_object(Bucket="root-b", Key="one", Body=data)
    blobs = server.data_dir / "blobs"
    after_first = dir_bytes(blobs)
    root.put_object(Bucket="root-b", Key="two", Body=data)
    assert dir_bytes(blobs) - after_first < 0.02 * len(data)  # same user: deduplicated
    carol.put_object(Bucket="carol-b", Key="one", Body=data)
    assert dir_bytes(blobs) - after_first >= len(data)  # another user: stored again
    assert carol.get_object(Bucket="carol-b", Key="one")["Body"].read() == data
