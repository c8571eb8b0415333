"""Child processes the benchmark starts itself: an embedded Strata server, a no-op server.

This module owns their lifecycle: pick a free port, start ``python -m gateway serve`` (with
fresh root credentials in the environment and a data directory of its own) or
``python -m bench noop``, wait until the port accepts connections, and stop with SIGTERM
(SIGKILL after a grace period). Server output goes to a log file beside the data
directory, so measuring the data directory never counts it.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[1]
# Settings a started server takes from the benchmark's own environment are reported with
# the results; values are shown unless the name suggests a secret or a connection string.
_SECRET_WORDS = ("SECRET", "KEY", "KMS", "PASSWORD", "TOKEN", "DSN", "URL", "BOOTSTRAP", "ENDPOINT")
_OWN = ("STRATA_ROOT_ACCESS_KEY", "STRATA_ROOT_SECRET_KEY")  # set by StrataServer itself


def inherited_settings(environ: Mapping[str, str]) -> list[str]:
    """The ``STRATA_*`` settings a :class:`StrataServer` inherits from ``environ``, sorted,
    as ``NAME=value`` (``NAME=(set)`` where the value may be a secret)."""
    out = []
    for name in sorted(environ):
        if not name.startswith("STRATA_") or name in _OWN:
            continue
        hidden = any(word in name for word in _SECRET_WORDS)
        out.append(f"{name}={'(set)' if hidden else environ[name]}")
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerStartError(RuntimeError):
    """The child did not come up; the message carries the end of its log."""


class ChildServer:
    """A server child process on 127.0.0.1:``port``; use as a context manager."""

    def __init__(
        self, argv: list[str], log_path: Path, env: dict[str, str] | None = None, port: int = 0
    ) -> None:
        self.port = port or free_port()
        self.argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.log_path = log_path
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode("utf-8", "replace")
        except FileNotFoundError:
            return "<no log>"

    def start(self, timeout: float = 30.0) -> ChildServer:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerStartError(f"{self.argv} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"{self.argv} did not listen within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, grace: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> ChildServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class StrataServer(ChildServer):
    """``python -m gateway serve`` on the embedded default, in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int = 0, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.access_key = "BENCH" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        env = {"STRATA_ROOT_ACCESS_KEY": self.access_key, "STRATA_ROOT_SECRET_KEY": self.secret_key}
        env.update(extra_env or {})
        argv = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            "WARNING",
        ]
        super().__init__(argv, self.data_dir.with_name(self.data_dir.name + ".log"), env, port)


class NoopServer(ChildServer):
    """``python -m bench noop`` (see :mod:`bench.noop`)."""

    def __init__(self, log_path: Path, port: int = 0, size: int = 4096) -> None:
        argv = [
            sys.executable,
            "-m",
            "bench",
            "noop",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--size",
            str(size),
        ]
        super().__init__(argv, log_path, None, port)
