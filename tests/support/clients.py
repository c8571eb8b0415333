"""Finding and running third-party S3 clients (aws-cli, rclone, s3cmd, minio-py).

A client that is not installed makes its tests *skip*, unless the environment variable
``STRATA_REQUIRE_CLIENTS`` is set (CI sets it): then they *fail*, so a CI machine that lost
a client cannot pass by skipping the client matrix.

:func:`run` runs a command with a clean environment (:func:`clean_env`: no ``AWS_*``,
``RCLONE_*`` or ``S3CMD_*`` variables from the machine, UTF-8 locale) and, when it exits
non-zero, raises :class:`CommandFailed` (an AssertionError) carrying the command and the
tail of its output.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

REQUIRE_ENV = "STRATA_REQUIRE_CLIENTS"
_DROP_PREFIXES = ("AWS_", "RCLONE_", "S3CMD_")


def clients_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def _missing(what: str, how: str) -> None:
    if clients_required():
        pytest.fail(f"{what} is missing and {REQUIRE_ENV} is set: {how}", pytrace=False)
    pytest.skip(f"{what} is not installed ({how}; set {REQUIRE_ENV}=1 to fail instead)")


def require_binary(name_or_path: str, how: str) -> str:
    """The absolute path of an executable, or skip/fail (see module doc). ``how`` says how
    to install it."""
    if os.sep in name_or_path:
        path: str | None = name_or_path if os.access(name_or_path, os.X_OK) else None
    else:
        path = shutil.which(name_or_path)
    if path is None:
        _missing(name_or_path, how)
        raise AssertionError("unreachable")  # pytest.skip/fail raise
    return path


def require_module(name: str, how: str) -> ModuleType:
    """Import a Python client library, or skip/fail (see module doc)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(f"Python module {name!r}", how)
        raise AssertionError("unreachable") from None


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without client configuration variables, UTF-8 locale.

    Dropping ``AWS_*`` also drops ``AWS_CA_BUNDLE``, which this machine sets and which breaks
    rclone 1.60 (the same as ``env -u AWS_CA_BUNDLE rclone ...``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_PREFIXES)}
    env.update({"LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"})
    env.update(extra)
    return env


def aws_cli_env(config_dir: Path, access_key: str, secret_key: str, region: str) -> dict[str, str]:
    """Environment for aws-cli 1 or 2: static keys, empty config files, no pager, no IMDS."""
    config_dir.mkdir(parents=True, exist_ok=True)
    cfg = config_dir / "config"
    creds = config_dir / "credentials"
    cfg.write_text("")
    creds.write_text("")
    return clean_env(
        AWS_ACCESS_KEY_ID=access_key,
        AWS_SECRET_ACCESS_KEY=secret_key,
        AWS_DEFAULT_REGION=region,
        AWS_CONFIG_FILE=str(cfg),
        AWS_SHARED_CREDENTIALS_FILE=str(creds),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_PAGER="",
    )


class CommandFailed(AssertionError):
    """A client command exited non-zero; ``output`` is its stdout and stderr."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


def run(
    cmd: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path | None = None,
    timeout: float = 300,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; with ``check``, raise :class:`CommandFailed` (with its output) on failure."""
    proc = subprocess.run(
        list(cmd),
        env=env,
        cwd=str(cwd) if cwd else None,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise CommandFailed(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n"
            f"--- stderr ---\n{proc.stderr[-8000:]}",
            proc.stdout + proc.stderr,
        )
    return proc
