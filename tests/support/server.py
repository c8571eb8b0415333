"""Run a real Strata server process for integration tests.

:class:`StrataServer` starts ``python -m gateway serve`` on a free port with a fresh data
directory, waits until the TCP port accepts, and stops it with SIGTERM (SIGKILL after a
grace period). The server's stderr goes to a log file next to (never inside) the data
directory, so tests that scan the data directory do not see it, and so a failed start can
show what the server said.

:func:`make_self_signed_cert` writes a throwaway certificate for ``127.0.0.1`` and
``localhost`` so that botocore can be pointed at ``https://`` (which makes it send
``aws-chunked`` bodies with trailing checksums).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from support.process import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
DEFAULT_ACCESS_KEY = "STRATATESTROOTKEY001"
DEFAULT_SECRET_KEY = "strata/test+root/secret/key/0123456789abcd"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dir_bytes(root: Path) -> int:
    """Total size of the regular files under ``root`` (0 if it does not exist)."""
    total = 0
    if not root.exists():
        return 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:  # removed while we walked (GC, pack rename)
                continue
            total += st.st_size
    return total


class ServerStartError(RuntimeError):
    """The server process did not come up; the message carries its stderr."""


class StrataServer:
    """One ``gateway serve`` process with its own data directory.

    Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        log_path: Path | None = None,
        tls: tuple[Path, Path] | None = None,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path) if log_path else self.data_dir.with_name(self.data_dir.name + ".log")
        self.tls = tls
        self.access_key = access_key
        self.secret_key = secret_key
        self.host = host
        self.port = port or free_port()
        self.extra_args = list(extra_args or [])
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    # -- properties --------------------------------------------------------------------
    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        """Base URL for path-style requests, e.g. ``http://127.0.0.1:8123``."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    @property
    def region(self) -> str:
        return REGION

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    def backend_bytes(self) -> int:
        """Total bytes of every file under ``<data_dir>/blobs`` (all pack files)."""
        return dir_bytes(self.blobs_dir)

    def stderr_text(self, limit: int = 20_000) -> str:
        """The tail of what the server wrote to stderr so far."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return "<no server log>"
        return data[-limit:].decode("utf-8", "replace")

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle ---------------------------------------------------------------------
    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        if self.tls:
            cmd += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        return cmd + self.extra_args

    def start(self, timeout: float = 20.0) -> StrataServer:
        if self.proc is not None:
            raise RuntimeError("server already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            {
                "STRATA_ROOT_ACCESS_KEY": self.access_key,
                "STRATA_ROOT_SECRET_KEY": self.secret_key,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file = log
        self.proc = subprocess.Popen(
            self.command(),
            cwd=str(REPO_ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self._close_log()
                raise ServerStartError(
                    f"strata exited with {rc} before accepting connections.\n"
                    f"command: {' '.join(self.command())}\n--- stderr ---\n{self.stderr_text()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"strata did not accept connections on {self.host}:{self.port} within {timeout}s.\n"
                    f"command: {' '.join(self.command())}\n--- stderr ---\n{self.stderr_text()}"
                )
            time.sleep(0.05)
        return self

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        stop_process(proc, grace=grace)
        self._close_log()
        return proc.returncode

    def _close_log(self) -> None:
        log = self._log_file
        self._log_file = None
        if log is not None:
            log.close()  # type: ignore[attr-defined]

    def __enter__(self) -> StrataServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"StrataServer({self.endpoint}, data_dir={self.data_dir})"


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` (SAN: 127.0.0.1, localhost, *.localhost)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strata-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost"),
                    x509.DNSName("*.localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path
