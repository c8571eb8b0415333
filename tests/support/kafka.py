"""Run a real Kafka-protocol broker (the ``noida-db`` binary from PyPI) for tests.

:class:`KafkaBroker` starts the Rust binary shipped inside the ``noida_db`` package (not its
console-script wrapper) with only the Kafka service, on a free port and with its own data
directory, and waits until the port accepts connections. :meth:`KafkaBroker.stop` and
:meth:`KafkaBroker.start` may be called again and again: the port and the data directory are
kept, so a restarted broker still holds every message written before it was stopped (what a
test of "the broker went away and came back" needs).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from support.process import stop_process
from support.server import free_port


def broker_binary() -> str:
    """The noida-db binary inside the installed package."""
    import noida_db

    path = os.path.join(os.path.dirname(noida_db.__file__), "noida-db")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"noida-db binary missing or not executable: {path}")
    return path


class KafkaBroker:
    """One noida-db Kafka broker process on 127.0.0.1 with a private data directory."""

    def __init__(self, data_dir: Path, *, log_path: Path | None = None, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path) if log_path else self.data_dir.with_name(self.data_dir.name + ".log")
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The bootstrap server string (``host:port``) for clients."""
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            broker_binary(),
            "start",
            "--data-dir",
            str(self.data_dir),
            "--host",
            "127.0.0.1",
            "--only",
            "kafka",
            "--kafka-port",
            str(self.port),
        ]

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode("utf-8", "replace")
        except FileNotFoundError:
            return "<no broker log>"

    def start(self, timeout: float = 15.0) -> KafkaBroker:
        """Start the broker (again, on the same port and data dir) and wait until it accepts."""
        if self.is_running():
            raise RuntimeError("broker already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"noida-db exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"noida-db not listening on {self.port} after {timeout}s:\n{self.log_text()}"
                )
            time.sleep(0.05)

    def stop(self, grace: float = 10.0) -> None:
        """Stop the broker (SIGINT, as Ctrl-C; SIGKILL after ``grace``); its data is kept."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        stop_process(proc, signal.SIGINT, grace)
        self._wait_port_free(grace)

    def _wait_port_free(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
            except OSError:
                return
            time.sleep(0.05)

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"KafkaBroker({self.bootstrap}, data_dir={self.data_dir})"
