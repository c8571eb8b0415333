"""awscli 1.x (``.venv/bin/aws``) against a real Strata server, as a subprocess.

awscli sends multipart uploads with ``x-amz-checksum-algorithm: CRC32`` and a CRC32 per
part, ``Expect: 100-continue`` on PUTs, and downloads with 8 MiB ranged GETs carrying
``If-Match``. The CLI runs with a clean environment (empty config and credentials files)
so nothing from the machine leaks in.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.s3 import MiB, multipart_etag_of_file, random_bytes, sha256_file, write_random_file
from support.server import StrataServer

AWS = Path(sys.executable).with_name("aws")


@pytest.fixture
def aws_env(tmp_path: Path, strata: StrataServer) -> dict[str, str]:
    cfg = tmp_path / "aws-config"
    creds = tmp_path / "aws-credentials"
    cfg.write_text("")
    creds.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": strata.access_key,
            "AWS_SECRET_ACCESS_KEY": strata.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(cfg),
            "AWS_SHARED_CREDENTIALS_FILE": str(creds),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_PAGER": "",
        }
    )
    return env


def aws(env: dict[str, str], strata: StrataServer, *args: str, timeout: float = 600) -> str:
    cmd = [str(AWS), "--endpoint-url", strata.endpoint, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n"
            f"--- stderr ---\n{proc.stderr[-8000:]}"
        )
    return proc.stdout


def test_aws_version_runs() -> None:
    assert AWS.exists(), f"{AWS} missing"


@pytest.mark.slow
def test_cp_100mib_up_and_down(
    tmp_path: Path, aws_env: dict[str, str], strata: StrataServer, bucket: str
) -> None:
    src = tmp_path / "big.bin"
    digest = write_random_file(src, 100 * MiB, seed=100)
    aws(aws_env, strata, "s3", "cp", str(src), f"s3://{bucket}/big.bin")

    head: dict[str, Any] = json.loads(
        aws(aws_env, strata, "s3api", "head-object", "--bucket", bucket, "--key", "big.bin")
    )
    assert head["ContentLength"] == 100 * MiB
    # awscli's default multipart_chunksize is 8 MiB -> 13 parts
    assert head["ETag"] == multipart_etag_of_file(src, 8 * MiB)

    dst = tmp_path / "big.out"
    aws(aws_env, strata, "s3", "cp", f"s3://{bucket}/big.bin", str(dst))
    assert dst.stat().st_size == 100 * MiB
    assert sha256_file(dst) == digest


def _make_tree(root: Path) -> list[str]:
    files = {
        "a.txt": b"hello\n",
        "empty": b"",
        "dir/b.bin": random_bytes(300_000, 1),
        "dir/sub/c with space.txt": b"spaces in names\n" * 100,
        "dir/sub/ünïcødé.txt": b"unicode name\n",
        "big/multi.bin": random_bytes(9 * MiB + 3, 2),  # above awscli's 8 MiB multipart threshold
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return sorted(files)


def _compare_trees(a: Path, b: Path) -> None:
    def listing(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    assert listing(a) == listing(b)
    for rel in listing(a):
        assert filecmp.cmp(a / rel, b / rel, shallow=False), rel


def test_sync_tree_roundtrip(
    tmp_path: Path, aws_env: dict[str, str], strata: StrataServer, bucket: str
) -> None:
    src = tmp_path / "src"
    rels = _make_tree(src)
    aws(aws_env, strata, "s3", "sync", str(src), f"s3://{bucket}/tree/")
    dst = tmp_path / "dst"
    dst.mkdir()
    aws(aws_env, strata, "s3", "sync", f"s3://{bucket}/tree/", str(dst))
    _compare_trees(src, dst)

    # a second sync uploads nothing (sizes and mtimes match what the listing says)
    out = aws(aws_env, strata, "s3", "sync", str(src), f"s3://{bucket}/tree/")
    assert "upload:" not in out, out

    listing = aws(aws_env, strata, "s3", "ls", "--recursive", f"s3://{bucket}/tree/")
    for rel in rels:
        assert f"tree/{rel}" in listing, (rel, listing)
    top = aws(aws_env, strata, "s3", "ls", f"s3://{bucket}/tree/")
    assert "PRE dir/" in top and "PRE big/" in top and "a.txt" in top, top
    buckets = aws(aws_env, strata, "s3", "ls")
    assert bucket in buckets


def test_s3api_head_object_and_checksum(
    tmp_path: Path, aws_env: dict[str, str], strata: StrataServer, bucket: str
) -> None:
    src = tmp_path / "small.bin"
    src.write_bytes(random_bytes(123_456, 3))
    aws(
        aws_env,
        strata,
        "s3api",
        "put-object",
        "--bucket",
        bucket,
        "--key",
        "small.bin",
        "--body",
        str(src),
        "--content-type",
        "application/x-small",
        "--metadata",
        "team=storage",
    )
    head = json.loads(aws(aws_env, strata, "s3api", "head-object", "--bucket", bucket, "--key", "small.bin"))
    assert head["ContentLength"] == 123_456
    assert head["ContentType"] == "application/x-small"
    assert head["Metadata"] == {"team": "storage"}
    out = tmp_path / "small.out"
    aws(
        aws_env,
        strata,
        "s3api",
        "get-object",
        "--bucket",
        bucket,
        "--key",
        "small.bin",
        "--checksum-mode",
        "ENABLED",
        str(out),
    )
    assert out.read_bytes() == src.read_bytes()
    rc = subprocess.run(
        [
            str(AWS),
            "--endpoint-url",
            strata.endpoint,
            "s3api",
            "head-object",
            "--bucket",
            bucket,
            "--key",
            "nope",
        ],
        env=aws_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rc.returncode != 0
    assert "404" in rc.stderr or "Not Found" in rc.stderr


def test_rm_and_rb(aws_env: dict[str, str], strata: StrataServer, s3: Any) -> None:
    from support.s3 import unique_bucket

    name = unique_bucket("cli")
    aws(aws_env, strata, "s3", "mb", f"s3://{name}")
    s3.put_object(Bucket=name, Key="x/y", Body=b"1")
    s3.put_object(Bucket=name, Key="x/z", Body=b"2")
    aws(aws_env, strata, "s3", "rm", "--recursive", f"s3://{name}/x/")
    assert s3.list_objects_v2(Bucket=name).get("KeyCount", 0) == 0
    aws(aws_env, strata, "s3", "rb", f"s3://{name}")
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
