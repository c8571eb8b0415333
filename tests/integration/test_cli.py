"""The ``strata`` command line: help text, first-start credentials, the data-dir layout."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config
from support.server import REPO_ROOT, free_port


def _strata(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_documents_every_command_and_flag() -> None:
    top = _strata("--help")
    assert top.returncode == 0 and "serve" in top.stdout
    serve = _strata("serve", "--help")
    for flag in ("--host", "--port", "--data-dir", "--config", "--tls-cert", "--tls-key"):
        assert flag in serve.stdout
    assert "STRATA_ROOT_ACCESS_KEY" in serve.stdout


def _spawn(data_dir: Path, port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_until_ready(data_dir: Path, port: int, env: dict[str, str]) -> tuple[str, str]:
    """Start serve, wait for the port, stop it; return (stdout, stderr)."""
    proc = _spawn(data_dir, port, env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    return out, err


def test_first_start_generates_root_credentials_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    data = tmp_path / "data"
    out, err = _run_until_ready(data, free_port(), env)
    assert "access key:" in out, err
    ak = out.split("access key:")[1].split()[0]
    sk = out.split("secret key:")[1].split()[0]
    assert len(ak) >= 16 and len(sk) >= 32
    # The keyring is private, and the secret is not stored in the clear anywhere.
    assert stat.S_IMODE((data / "keyring.json").stat().st_mode) == 0o600
    for path in data.rglob("*"):
        if path.is_file():
            assert sk.encode() not in path.read_bytes(), path
    # Second start: nothing printed; the stored credentials still work.
    port = free_port()
    proc = _spawn(data, port, env)
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id=ak,
            aws_secret_access_key=sk,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 10, "mode": "standard"}),
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                s3.create_bucket(Bucket="cli-check")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["cli-check"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out2, _ = proc.communicate(timeout=20)
    assert "access key:" not in out2


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("[server]\nprot = 1\n")
    result = _strata("serve", "--config", str(conf), "--data-dir", str(tmp_path / "d"))
    assert result.returncode != 0
    assert "prot" in result.stderr
    assert "Traceback" not in result.stderr
